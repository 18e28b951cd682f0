//! Swarm mode's API on a follower manager, driven by the real docker CLI against 3 managers
//! and 2 agents: `docker info`'s swarm section, `docker service create|ls|ps|inspect|scale|
//! update|rollback|rm`, `docker node ls|inspect|update|ps|rm`, services visible through both
//! APIs and the shoal CLI, and bad specs answered 400 with a message.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::{sleep, Instant};

use crate::cluster::{serial, WAIT};
use crate::docker_api::{docker, ok, raw};
use crate::fleet::{Fleet, WHOAMI};

/// A second tag of the test image: a new spec for a rolling update.
const WHOAMI_V2: &str = "shoal/whoami:swarm-v2";

/// Polls `docker ARGS` on `host` until its trimmed stdout satisfies `want`, for at most WAIT.
async fn until(host: &str, args: &[&str], want: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = docker(host, args, None);
        let text = out.stdout.trim().to_string();
        if out.code == 0 && want(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "docker {args:?}: still {text:?} {}",
            out.stderr
        );
        sleep(Duration::from_millis(300)).await;
    }
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_service_and_node_commands_drive_the_cluster_through_a_follower() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 2).await;
    let leader = fleet.cluster.leader().await;
    let h = fleet.cluster.managers[(leader + 1) % 3].docker_api.clone();
    let h = h.as_str();
    crate::fleet::docker_tag(WHOAMI, WHOAMI_V2);

    // `docker info`: a swarm with this manager in control, and classic Swarm's status too.
    let swarm = ok(
        docker(
            h,
            &[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{.Swarm.Managers}} {{.Swarm.Nodes}} {{len .Swarm.Cluster.ID}}",
            ],
            None,
        ),
        "info swarm",
    );
    assert!(swarm.starts_with("active true 3 2 "), "{swarm}");
    let status = ok(
        docker(h, &["info", "--format", "{{json .SystemStatus}}"], None),
        "info status",
    );
    assert!(status.contains("\"Nodes\",\"2\""), "{status}");
    let text = ok(docker(h, &["info"], None), "info");
    assert!(
        text.contains("Swarm: active") && text.contains("Is Manager: true"),
        "{text}"
    );

    // create: the CLI waits until both tasks run; the constraint puts them on node-1, which the
    // operator labels (`node.labels` are the operator's: node-1's agent reports storage=ssd too,
    // but what an agent says of itself is `engine.labels`).
    ok(
        docker(
            h,
            &["node", "update", "--label-add", "storage=ssd", "node-1"],
            None,
        ),
        "node update --label-add",
    );
    ok(
        docker(
            h,
            &[
                "service",
                "create",
                "--name",
                "web",
                "--replicas",
                "2",
                "-p",
                "80",
                "--constraint",
                "node.labels.storage==ssd",
                "--update-parallelism",
                "1",
                WHOAMI,
            ],
            None,
        ),
        "service create",
    );
    let ls = ok(
        docker(
            h,
            &[
                "service",
                "ls",
                "--format",
                "{{.Name}} {{.Mode}} {{.Replicas}}",
            ],
            None,
        ),
        "service ls",
    );
    assert_eq!(ls, "web replicated 2/2");
    let ps = ok(
        docker(
            h,
            &[
                "service",
                "ps",
                "web",
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Name}} {{.Node}} {{.CurrentState}}",
            ],
            None,
        ),
        "service ps",
    );
    let ps = lines(&ps);
    assert_eq!(ps.len(), 2, "{ps:?}");
    assert!(ps.iter().all(|l| l.contains(" node-1 Running")), "{ps:?}");
    let inspect = ok(
        docker(
            h,
            &[
                "service",
                "inspect",
                "web",
                "--format",
                "{{.Spec.Mode.Replicated.Replicas}} {{.Spec.TaskTemplate.ContainerSpec.Image}} {{index .Spec.TaskTemplate.Placement.Constraints 0}} {{.Spec.UpdateConfig.Parallelism}} {{(index .Spec.EndpointSpec.Ports 0).TargetPort}}",
            ],
            None,
        ),
        "service inspect",
    );
    assert_eq!(
        inspect,
        "2 shoal/whoami:latest node.labels.storage==ssd 1 80"
    );
    // The same service through the shoal CLI, its containers through `docker ps`.
    let shoal_ls = fleet.json(&["service", "ls", "--json"]).await;
    let web = shoal_ls
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .cloned()
        .unwrap_or_else(|| panic!("web not in shoal service ls: {shoal_ls}"));
    assert_eq!(
        (web["replicas"].as_u64(), web["running"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(web.get("container").is_none(), "{web}");
    let containers = ok(
        docker(
            h,
            &["ps", "--filter", "name=web.", "--format", "{{.Names}}"],
            None,
        ),
        "ps",
    );
    assert_eq!(lines(&containers).len(), 2, "{containers}");

    // scale, then a rolling update of the image, then a rollback.
    ok(
        docker(h, &["service", "scale", "web=3"], None),
        "service scale",
    );
    until(h, &["service", "ls", "--format", "{{.Replicas}}"], |r| {
        r == "3/3"
    })
    .await;
    ok(
        docker(h, &["service", "update", "--image", WHOAMI_V2, "web"], None),
        "service update",
    );
    let fmt = "{{.UpdateStatus.State}} {{.Spec.TaskTemplate.ContainerSpec.Image}} {{.PreviousSpec.TaskTemplate.ContainerSpec.Image}}";
    until(h, &["service", "inspect", "web", "--format", fmt], |s| {
        s == format!("completed {WHOAMI_V2} {WHOAMI}")
    })
    .await;
    let images = until(
        h,
        &[
            "service",
            "ps",
            "web",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.Image}} {{.CurrentState}}",
        ],
        |s| lines(s).len() == 3 && lines(s).iter().all(|l| l.contains("Running")),
    )
    .await;
    assert!(
        lines(&images).iter().all(|l| l.starts_with(WHOAMI_V2)),
        "{images}"
    );
    ok(
        docker(h, &["service", "rollback", "web"], None),
        "service rollback",
    );
    until(h, &["service", "inspect", "web", "--format", fmt], |s| {
        s == format!("rollback_completed {WHOAMI} {WHOAMI_V2}")
    })
    .await;

    // A stale version is a conflict; nothing is written.
    let (code, _, body) = raw(
        h,
        "POST",
        "/v1.44/services/web/update?version=1",
        &json!({"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": WHOAMI}}, "Mode": {"Replicated": {"Replicas": 1}}}).to_string(),
    )
    .await;
    assert!(
        code == 409 && body.contains("update out of sequence"),
        "{code} {body}"
    );

    // Nodes: list, drain and back, operator labels, tasks of a node.
    let nodes = ok(
        docker(
            h,
            &[
                "node",
                "ls",
                "--format",
                "{{.Hostname}} {{.Status}} {{.Availability}}",
            ],
            None,
        ),
        "node ls",
    );
    assert_eq!(nodes, "node-1 Ready Active\nnode-2 Ready Active");
    ok(
        docker(
            h,
            &["node", "update", "--availability", "drain", "node-2"],
            None,
        ),
        "node drain",
    );
    let shoal_nodes = fleet.nodes().await;
    let node2 = shoal_nodes.iter().find(|n| n["name"] == "node-2").unwrap();
    assert_eq!(node2["availability"], "drain", "{node2}");
    ok(
        docker(
            h,
            &[
                "node",
                "update",
                "--availability",
                "active",
                "--label-add",
                "zone=a",
                "node-2",
            ],
            None,
        ),
        "node update",
    );
    let node2 = ok(
        docker(
            h,
            &[
                "node",
                "inspect",
                "node-2",
                "--format",
                "{{.Spec.Availability}} {{index .Spec.Labels \"zone\"}} {{.Description.Hostname}}",
            ],
            None,
        ),
        "node inspect",
    );
    assert_eq!(node2, "active a node-2");
    ok(
        docker(h, &["node", "update", "--label-rm", "zone", "node-2"], None),
        "node label-rm",
    );
    let shoal_nodes = fleet.nodes().await;
    let node2 = shoal_nodes.iter().find(|n| n["name"] == "node-2").unwrap();
    assert_eq!(node2["operator_labels"], json!({}), "{node2}");
    let on_node1 = ok(
        docker(
            h,
            &[
                "node",
                "ps",
                "node-1",
                "--filter",
                "desired-state=running",
                "--format",
                "{{.Name}}",
            ],
            None,
        ),
        "node ps",
    );
    assert_eq!(lines(&on_node1).len(), 3, "{on_node1}");
    let refused = docker(h, &["node", "rm", "node-2"], None);
    assert!(
        refused.code != 0 && refused.stderr.contains("is READY"),
        "{}",
        refused.stderr
    );

    // A service made with the shoal CLI is a swarm-mode service too.
    fleet.create_whoami("made-by-shoal", 1, &[]).await;
    let ls = ok(
        docker(h, &["service", "ls", "--format", "{{.Name}}"], None),
        "service ls",
    );
    assert_eq!(ls, "made-by-shoal\nweb");

    // Bad specs: a 400 with a message, never a 500.
    let bad = docker(
        h,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "bad",
            "--constraint",
            "node.platform.os==linux",
            WHOAMI,
        ],
        None,
    );
    assert!(
        bad.code != 0 && bad.stderr.contains("invalid constraint"),
        "{}",
        bad.stderr
    );
    for (spec, want) in [
        (
            json!({"Name": "bad", "TaskTemplate": {"ContainerSpec": {}}}),
            "ContainerSpec.Image is required",
        ),
        (
            json!({"Name": "bad", "TaskTemplate": {"ContainerSpec": {"Image": WHOAMI}, "Placement": {"Constraints": ["node.labels.storage=ssd"]}}}),
            "invalid constraint",
        ),
        (
            json!({"Name": "bad", "TaskTemplate": {"ContainerSpec": {"Image": "shoal/nowhere:1"}}}),
            "no node has it",
        ),
        (
            json!({"Name": "bad", "Mode": {"Global": {}}, "TaskTemplate": {"ContainerSpec": {"Image": WHOAMI}}}),
            "Mode.Global is not supported",
        ),
    ] {
        let (code, ctype, body) = raw(h, "POST", "/v1.44/services/create", &spec.to_string()).await;
        let message: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            code == 400
                && ctype == "application/json"
                && message["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(want)),
            "{spec}: {code} {body}"
        );
    }
    // The policy holds for services as for containers.
    let (code, _, body) = raw(
        h,
        "POST",
        "/v1.44/services/create",
        &json!({"Name": "bad", "TaskTemplate": {"ContainerSpec": {"Image": WHOAMI, "Mounts": [{"Type": "bind", "Source": "/etc", "Target": "/x"}]}}}).to_string(),
    )
    .await;
    assert!(code == 403 && body.contains("bind mounts"), "{code} {body}");
    let (code, _, body) = raw(h, "GET", "/v1.44/services/nothing", "").await;
    assert!(code == 404 && body.contains("not found"), "{code} {body}");

    // rm: gone from both APIs, its containers stopped.
    ok(
        docker(h, &["service", "rm", "web", "made-by-shoal"], None),
        "service rm",
    );
    let ls = ok(docker(h, &["service", "ls", "-q"], None), "service ls");
    assert_eq!(ls, "");
    let shoal_ls = fleet.json(&["service", "ls", "--json"]).await;
    assert_eq!(shoal_ls, json!([]));
    until(
        h,
        &["ps", "--filter", "name=web.", "--format", "{{.Names}}"],
        str::is_empty,
    )
    .await;

    // A node removed by force leaves the list.
    ok(
        docker(h, &["node", "rm", "--force", "node-2"], None),
        "node rm",
    );
    let nodes = ok(
        docker(h, &["node", "ls", "--format", "{{.Hostname}}"], None),
        "node ls",
    );
    assert_eq!(nodes, "node-1");
    let _ = Command::new("docker").args(["rmi", WHOAMI_V2]).status();
}
