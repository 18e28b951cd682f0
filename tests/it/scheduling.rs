//! Nodes, services and the leader's control loops end to end: real managers, real agents, the real
//! Docker engine and the `shoal/whoami` image. The seed's scenario, node failure and return,
//! leader failover during a scale, agent restarts, and what happens to tasks that cannot run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use tokio::time::{sleep, Instant};

use crate::cluster::serial;
use crate::fleet::{
    docker_inspect, docker_ps, http_get_within, is_live, node_names, Fleet, WHOAMI,
};

fn published(task: &Value) -> String {
    let port = &task["ports"][0];
    format!(
        "{}:{}",
        port["host_ip"].as_str().unwrap_or("?"),
        port["host_port"]
    )
}

fn service_id(tasks: &[Value]) -> String {
    tasks[0]["service_id"].as_str().unwrap().to_string()
}

/// Running containers of a service: task id → container ids.
fn running_by_task(service_id: &str) -> BTreeMap<String, Vec<String>> {
    let mut by_task: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for id in docker_ps(&format!("label=shoal.service={service_id}"), true) {
        let task = docker_inspect(&id, "{{index .Config.Labels \"shoal.task\"}}");
        by_task.entry(task).or_default().push(id);
    }
    by_task
}

#[tokio::test(flavor = "multi_thread")]
async fn seed_scenario_spreads_replicas_and_honours_constraints() {
    let _serial = serial().await;
    let fleet = Fleet::start(3, 2).await;
    let interlock = [
        "--label",
        "interlock.hostname=test",
        "--label",
        "interlock.domain=local",
    ];
    fleet.create_whoami("web", 4, &interlock).await;
    let web = fleet.wait_running("web", 4).await;
    assert_eq!(
        node_names(&web),
        ["node-1", "node-1", "node-2", "node-2"],
        "spread: 2 and 2"
    );
    // Each task answers on the address `service ps` shows for it.
    for task in &web {
        let addr = published(task);
        let body = http_get_within(&addr, Duration::from_secs(10))
            .await
            .unwrap_or_else(|| panic!("no answer from {addr}"));
        let id = task["id"].as_str().unwrap();
        assert!(body.contains(id), "{addr} answered {body:?}, not task {id}");
    }

    fleet
        .ok(&[
            "service",
            "create",
            "--name",
            "db",
            "--replicas",
            "2",
            "--constraint",
            "storage==ssd",
            WHOAMI,
        ])
        .await;
    let db = fleet.wait_running("db", 2).await;
    assert_eq!(node_names(&db), ["node-1", "node-1"]);

    // Draining node-2 moves its tasks to node-1; nothing runs twice.
    fleet
        .ok(&["node", "update", "--availability", "drain", "node-2"])
        .await;
    fleet
        .wait_for("web to leave the drained node", || async {
            let tasks = fleet.wait_running("web", 4).await;
            (node_names(&tasks) == ["node-1"; 4]).then_some(())
        })
        .await;
    let sid = service_id(&web);
    fleet
        .wait_for("4 web containers running", || async {
            (running_by_task(&sid).values().map(Vec::len).sum::<usize>() == 4).then_some(())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_node_has_its_tasks_replaced_on_a_healthy_node() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 2).await;
    fleet.create_whoami("web", 4, &[]).await;
    let before = fleet.wait_running("web", 4).await;
    assert_eq!(
        node_names(&before),
        ["node-1", "node-1", "node-2", "node-2"]
    );

    // node-2 dies with its containers.
    fleet.agents[1].kill();
    fleet.agents[1].remove_containers();
    let after = fleet
        .wait_for("web running on node-1 only", || async {
            let tasks = fleet.tasks("web").await;
            let live: Vec<Value> = tasks.into_iter().filter(is_live).collect();
            let moved = live.len() == 4
                && live.iter().all(|t| t["state"] == "running")
                && node_names(&live) == ["node-1"; 4];
            moved.then_some(live)
        })
        .await;
    let nodes = fleet.nodes().await;
    let node2 = nodes.iter().find(|n| n["name"] == "node-2").unwrap();
    assert_eq!(node2["status"], "down", "{node2}");
    // The replaced tasks are ORPHANED, in the same slots.
    let tasks = fleet.tasks("web").await;
    let orphaned: BTreeSet<u64> = tasks
        .iter()
        .filter(|t| t["state"] == "orphaned")
        .map(|t| t["slot"].as_u64().unwrap())
        .collect();
    let moved_slots: BTreeSet<u64> = before
        .iter()
        .filter(|t| t["node_name"] == "node-2")
        .map(|t| t["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(orphaned, moved_slots);
    assert_eq!(running_by_task(&service_id(&after)).len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_returning_after_its_tasks_were_replaced_leaves_no_duplicates() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 2).await;
    fleet.create_whoami("web", 4, &[]).await;
    let before = fleet.wait_running("web", 4).await;
    let sid = service_id(&before);

    // Only the agent dies: node-2's containers keep running, cut off from the cluster.
    fleet.agents[1].kill();
    fleet
        .wait_for("web replaced on node-1", || async {
            let live: Vec<Value> = fleet
                .tasks("web")
                .await
                .into_iter()
                .filter(is_live)
                .collect();
            let moved = live.len() == 4
                && live.iter().all(|t| t["state"] == "running")
                && node_names(&live) == ["node-1"; 4];
            moved.then_some(())
        })
        .await;
    assert_eq!(
        fleet.agents[1].containers(true).len(),
        2,
        "the cut-off node still runs its old copies"
    );

    fleet.restart_agent(1);
    fleet.wait_nodes_ready(2).await;
    fleet
        .wait_for(
            "the returning node to stop its superseded copies",
            || async { fleet.agents[1].containers(true).is_empty().then_some(()) },
        )
        .await;
    let running = running_by_task(&sid);
    assert_eq!(running.len(), 4, "{running:?}");
    assert!(running.values().all(|c| c.len() == 1), "{running:?}");
    let live = fleet.wait_running("web", 4).await;
    assert_eq!(node_names(&live), ["node-1"; 4]);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_during_a_scale_up_ends_with_exactly_the_replicas_asked_for() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(3, 2).await;
    fleet.create_whoami("web", 2, &[]).await;
    let sid = service_id(&fleet.wait_running("web", 2).await);

    fleet.ok(&["service", "scale", "web=10"]).await;
    let leader = fleet.cluster.wait_leader().await;
    fleet.cluster.managers[leader].kill();

    // Until the service settles, no task may ever run in two containers.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let running = running_by_task(&sid);
        let doubled: Vec<_> = running.iter().filter(|(_, c)| c.len() > 1).collect();
        assert!(doubled.is_empty(), "tasks running twice: {doubled:?}");
        let total: usize = running.values().map(Vec::len).sum();
        if total == 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{total} of 10 containers running\n{}",
            fleet.logs()
        );
        sleep(Duration::from_millis(200)).await;
    }
    let tasks = fleet.wait_running("web", 10).await;
    let slots: BTreeSet<u64> = tasks.iter().map(|t| t["slot"].as_u64().unwrap()).collect();
    assert_eq!(slots, (1..=10).collect());
    // The leader change alone declared no node DOWN: nothing was orphaned, both nodes ready.
    let all = fleet.tasks("web").await;
    let orphaned: Vec<&Value> = all.iter().filter(|t| t["state"] == "orphaned").collect();
    assert!(orphaned.is_empty(), "{orphaned:?}");
    let nodes = fleet.nodes().await;
    assert!(nodes.iter().all(|n| n["status"] == "ready"), "{nodes:?}");
    // And it stays so: no late duplicate appears.
    sleep(Duration::from_secs(2)).await;
    let running = running_by_task(&sid);
    assert_eq!(running.len(), 10, "{running:?}");
    assert!(running.values().all(|c| c.len() == 1), "{running:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_agent_adopts_its_containers_without_restarting_them() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(1, 1).await;
    fleet.create_whoami("web", 2, &[]).await;
    let before = fleet.wait_running("web", 2).await;
    let started = |id: &str| docker_inspect(id, "{{.State.StartedAt}} {{.RestartCount}}");
    let containers: Vec<(String, String)> = before
        .iter()
        .map(|t| {
            let id = t["container_id"].as_str().unwrap().to_string();
            let s = started(&id);
            (id, s)
        })
        .collect();

    fleet.agents[0].kill();
    fleet.restart_agent(0);
    fleet.wait_nodes_ready(1).await;
    // Longer than the down threshold: the node never went DOWN and nothing was replaced.
    sleep(Duration::from_secs(3)).await;
    let after = fleet.wait_running("web", 2).await;
    let ids = |tasks: &[Value]| -> BTreeSet<String> {
        tasks
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&after), ids(&before), "no task was replaced");
    for (id, s) in containers {
        assert_eq!(started(&id), s, "container {id} was restarted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tasks_that_cannot_run_stay_pending_with_the_reason() {
    let _serial = serial().await;
    let mut fleet = Fleet::start(1, 2).await;

    fleet
        .ok(&["service", "create", "--name", "ghost", "shoal/missing:1"])
        .await;
    fleet
        .ok(&[
            "service",
            "create",
            "--name",
            "nvme",
            "--constraint",
            "storage==nvme",
            WHOAMI,
        ])
        .await;
    let port = crate::cluster::free_port().to_string();
    let publish = format!("{port}:80");
    fleet
        .ok(&[
            "service",
            "create",
            "--name",
            "fixed",
            "--replicas",
            "3",
            "-p",
            &publish,
            WHOAMI,
        ])
        .await;

    let reason = |service: &'static str| {
        let fleet = &fleet;
        async move {
            let tasks = fleet.tasks(service).await;
            let pending: Vec<String> = tasks
                .iter()
                .filter(|t| t["state"] == "pending")
                .map(|t| t["message"].as_str().unwrap_or("").to_string())
                .filter(|m| !m.is_empty())
                .collect();
            pending.first().cloned()
        }
    };
    let ghost = fleet.wait_for("ghost's reason", || reason("ghost")).await;
    assert!(
        ghost.contains("image shoal/missing:1 present: 0 of 2 nodes match"),
        "{ghost}"
    );
    let nvme = fleet.wait_for("nvme's reason", || reason("nvme")).await;
    assert!(
        nvme.contains("constraint storage==nvme: 0 of 2 nodes match"),
        "{nvme}"
    );
    let fixed = fleet.wait_for("fixed's reason", || reason("fixed")).await;
    assert!(fixed.contains(&format!("port {port}")), "{fixed}");
    let fixed_tasks = fleet.tasks("fixed").await;
    let running = fixed_tasks
        .iter()
        .filter(|t| t["state"] == "running")
        .count();
    assert!(running <= 2);

    // No runaway creation: one task per slot, however long they wait.
    sleep(Duration::from_secs(2)).await;
    assert_eq!(fleet.tasks("ghost").await.len(), 1);
    assert_eq!(fleet.tasks("nvme").await.len(), 1);

    // A task that fits nowhere is placed as soon as a node fits.
    fleet
        .ok(&["node", "update", "--label-add", "storage=nvme", "node-2"])
        .await;
    let nvme = fleet.wait_running("nvme", 1).await;
    assert_eq!(node_names(&nvme), ["node-2"]);
    // Scaling the port-bound service to what fits leaves no task pending.
    fleet.ok(&["service", "scale", "fixed=2"]).await;
    let fixed = fleet.wait_running("fixed", 2).await;
    assert_eq!(node_names(&fixed), ["node-1", "node-2"]);

    // An agent with a wrong token stops with a clear error instead of retrying forever.
    let i = fleet.add_agent("node-3", vec![]);
    let hosts = fleet.cluster.hosts();
    fleet.agents[i].kill();
    // This cluster's token with another secret; and no certificate kept from the first start.
    let real = fleet.cluster.worker_token.clone();
    let bad = format!("{}{}", &real[..real.len() - 32], "0".repeat(32));
    let _ = std::fs::remove_dir_all(fleet.agents[i].data_dir.join("tls"));
    fleet.agents[i].spawn(&hosts, &bad, &[]);
    let status = fleet.agents[i].wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.is_some_and(|s| !s.success()),
        "a wrong token must stop the agent: {status:?}"
    );
    let log = fleet.agents[i].log_text();
    assert!(log.contains("token"), "{log}");

    // An agent whose Docker engine cannot be reached keeps trying, without crashing.
    let j = fleet.add_agent("node-4", vec![]);
    fleet.agents[j].kill();
    fleet.agents[j].spawn(
        &hosts,
        &fleet.cluster.token.clone(),
        &["--docker", "unix:///nonexistent/docker.sock"],
    );
    sleep(Duration::from_secs(3)).await;
    assert!(
        fleet.agents[j].is_running(),
        "{}",
        fleet.agents[j].log_text()
    );
    assert!(
        fleet.agents[j]
            .log_text()
            .contains("nonexistent/docker.sock"),
        "{}",
        fleet.agents[j].log_text()
    );
}
