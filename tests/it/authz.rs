//! Least privilege against a running cluster: the certificate of every role (manager, worker,
//! proxy, operator, a revoked node, another cluster) against every gRPC method and the KV's
//! prefixes, each allowed or refused as `shoal::security::policy` says; a worker refused
//! another node's dispatcher session and the CA refusing an existing node's name; the leader's
//! fence key refused on every API (gRPC, CLI, Consul HTTP), and a leader change after.

use std::path::{Path, PathBuf};
use std::time::Duration;

use shoal::security::join;
use shoal_proto::raft::raft_service_client::RaftServiceClient;
use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_client::CaClient;
use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::dispatcher_client::DispatcherClient;
use shoal_proto::v1::kv_client::KvClient;
use shoal_tls::Role;
use tokio::time::{sleep, Instant};
use tonic::transport::Channel;
use tonic::Code;

use crate::cluster::{bounded, channel, free_port, run_cli, serial, Cluster, WAIT};

const PROXY: &str = "authz-proxy";
const WORKER: &str = "authzworker1";
const OTHER: &str = "authzworker2";
const REVOKED: &str = "authzrevoked";

/// What a call should meet.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    /// Past the authorization: any answer but PERMISSION_DENIED or UNAUTHENTICATED.
    Yes,
    /// PERMISSION_DENIED or UNAUTHENTICATED.
    No,
    /// Exactly this code (a proxy's keep-alive of a lease that is not its own: NOT_FOUND).
    Code(Code),
    /// Not called for this role (it would disturb the cluster: a root rotation, a Raft vote).
    Skip,
}

use Want::{No, Skip, Yes};

/// Columns: manager, worker, proxy, operator, a removed (revoked) worker: refused everything,
/// at the handshake or at the call.
type Row = (&'static str, [Want; 5]);

fn matrix() -> Vec<Row> {
    let nf = Want::Code(Code::NotFound);
    vec![
        ("Kv.Range app/", [Yes, No, No, Yes, No]),
        ("Kv.Range /shoal/proxy/config", [Yes, No, Yes, Yes, No]),
        ("Kv.Range /shoal/ prefix", [Yes, No, No, Yes, No]),
        ("Kv.Watch /shoal/proxy/config", [Yes, No, Yes, Yes, No]),
        ("Kv.Watch everything", [Yes, No, No, Yes, No]),
        ("Kv.Put app/", [Yes, No, No, Yes, No]),
        ("Kv.Put /shoal/leader/term", [No, No, No, No, No]),
        ("Kv.Put /shoal/services/x", [No, No, No, No, No]),
        ("Kv.Put /shoal/proxy/status/<proxy>", [No, No, Yes, No, No]),
        ("Kv.Put /shoal/proxy/status/<other>", [No, No, No, No, No]),
        ("Kv.Delete app/", [Yes, No, No, Yes, No]),
        ("Kv.Delete /shoal/revoked/ prefix", [No, No, No, No, No]),
        ("Kv.Delete everything", [No, No, No, No, No]),
        ("Kv.Txn app/", [Yes, No, No, Yes, No]),
        ("Kv.Txn put /shoal/ca", [No, No, No, No, No]),
        ("Kv.LeaseGrant", [Yes, No, Yes, Yes, No]),
        ("Kv.LeaseKeepAlive another's lease", [Yes, No, nf, Yes, No]),
        ("Kv.LeaseRevoke another's lease", [Yes, No, nf, Yes, No]),
        ("Cluster.Status", [Yes, No, No, Yes, No]),
        ("Cluster.RemoveManager 0", [Yes, No, No, Yes, No]),
        ("Cluster.RemoveNode missing", [Yes, No, No, Yes, No]),
        ("Cluster.CommitObjects nothing", [Yes, No, No, Yes, No]),
        (
            "Cluster.CommitObjects /shoal/leader/term",
            [No, No, No, No, No],
        ),
        ("Cluster.CommitObjects /shoal/tasks/x", [No, No, No, No, No]),
        ("Dispatcher.Heartbeat own", [No, Yes, No, No, No]),
        ("Dispatcher.Assignments own", [No, Yes, No, No, No]),
        ("Dispatcher.UpdateTaskStatus own", [No, Yes, No, No, No]),
        ("Dispatcher.Register other", [No, No, No, No, No]),
        ("Dispatcher.Heartbeat other", [No, No, No, No, No]),
        ("Dispatcher.Assignments other", [No, No, No, No, No]),
        ("Dispatcher.UpdateTaskStatus other", [No, No, No, No, No]),
        ("Ca.Info", [Yes, Yes, Yes, Yes, No]),
        ("Ca.Renew", [Yes, Yes, Yes, Yes, No]),
        ("Ca.Token", [Yes, No, No, Yes, No]),
        ("Ca.IssueClient", [Yes, No, No, Yes, No]),
        ("Ca.Clients", [Yes, No, No, Yes, No]),
        (
            "Ca.RevokeClient a name never issued",
            [Yes, No, No, Yes, No],
        ),
        ("Ca.Rotate", [Skip, No, No, Skip, No]),
        ("RaftService.Vote", [Skip, No, No, No, No]),
    ]
}

/// Who calls: its credentials directory and the node it speaks for (a worker's own).
struct Caller {
    label: &'static str,
    dir: PathBuf,
    own_node: String,
}

/// What the calls refer to, made beforehand by the operator.
struct Fixture {
    /// A lease the operator granted (not the proxy's).
    lease: u64,
}

fn put_op(key: &str, value: &[u8]) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::Put(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })),
    }
}

fn range(key: &str, prefix: bool) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.as_bytes().to_vec(),
        prefix,
        ..Default::default()
    }
}

fn watch(key: &str, prefix: bool) -> pb::WatchRequest {
    pb::WatchRequest {
        key: key.as_bytes().to_vec(),
        prefix,
        ..Default::default()
    }
}

fn register(node: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        node_id: node.to_string(),
        name: node.to_string(),
        addr: "127.0.0.1".into(),
        cpus: 1,
        memory_bytes: 1 << 30,
        engine_version: "simulated".into(),
        heartbeat_ms: 500,
        ..Default::default()
    }
}

fn csr() -> String {
    shoal_tls::pki::signing_request().expect("a key pair").1
}

/// Makes call `what` as the holder of `ch`; Ok(()) or the status it met.
async fn call(what: &str, ch: Channel, me: &Caller, f: &Fixture) -> Result<(), tonic::Status> {
    let mut kv = KvClient::new(ch.clone());
    let mut cluster = ClusterClient::new(ch.clone());
    let mut dispatcher = DispatcherClient::new(ch.clone());
    let mut ca = CaClient::new(ch.clone());
    let other = if me.own_node == OTHER { WORKER } else { OTHER };
    let status_of = |name: &str| format!("/shoal/proxy/status/{name}");
    let del = |key: &str, prefix| pb::DeleteRequest {
        key: key.as_bytes().to_vec(),
        prefix,
        ..Default::default()
    };
    let txn = |ops| pb::TxnRequest {
        success: ops,
        ..Default::default()
    };
    match what {
        "Kv.Range app/" => bounded(kv.range(range("authz/k", false))).await.map(drop),
        "Kv.Range /shoal/proxy/config" => bounded(kv.range(range("/shoal/proxy/config", false)))
            .await
            .map(drop),
        "Kv.Range /shoal/ prefix" => bounded(kv.range(range("/shoal/", true))).await.map(drop),
        "Kv.Watch /shoal/proxy/config" => bounded(kv.watch(watch("/shoal/proxy/config", false)))
            .await
            .map(drop),
        "Kv.Watch everything" => bounded(kv.watch(watch("", true))).await.map(drop),
        "Kv.Put app/" => crate::cluster::put(&mut kv, "authz/k", "v").await.map(drop),
        "Kv.Put /shoal/leader/term" => {
            crate::cluster::put(&mut kv, "/shoal/leader/term", "99999999999999999999")
                .await
                .map(drop)
        }
        "Kv.Put /shoal/services/x" => crate::cluster::put(&mut kv, "/shoal/services/x", "{}")
            .await
            .map(drop),
        "Kv.Put /shoal/proxy/status/<proxy>" => {
            crate::cluster::put(&mut kv, &status_of(PROXY), "{}")
                .await
                .map(drop)
        }
        "Kv.Put /shoal/proxy/status/<other>" => {
            crate::cluster::put(&mut kv, &status_of("someone-else"), "{}")
                .await
                .map(drop)
        }
        "Kv.Delete app/" => bounded(kv.delete(del("authz/gone", false))).await.map(drop),
        "Kv.Delete /shoal/revoked/ prefix" => bounded(kv.delete(del("/shoal/revoked/", true)))
            .await
            .map(drop),
        "Kv.Delete everything" => bounded(kv.delete(del("", true))).await.map(drop),
        "Kv.Txn app/" => bounded(kv.txn(txn(vec![put_op("authz/t", b"v")])))
            .await
            .map(drop),
        "Kv.Txn put /shoal/ca" => bounded(kv.txn(txn(vec![put_op("/shoal/ca", b"{}")])))
            .await
            .map(drop),
        "Kv.LeaseGrant" => bounded(kv.lease_grant(pb::LeaseGrantRequest { ttl_ms: 5_000 }))
            .await
            .map(drop),
        "Kv.LeaseKeepAlive another's lease" => {
            bounded(kv.lease_keep_alive(pb::LeaseKeepAliveRequest { id: f.lease }))
                .await
                .map(drop)
        }
        // Never applied: a lease id no one holds, so the row can run for every role.
        "Kv.LeaseRevoke another's lease" => {
            match bounded(kv.lease_revoke(pb::LeaseRevokeRequest { id: u64::MAX })).await {
                // Past the check, the store has no such lease: as allowed as it gets.
                Err(s) if s.code() == Code::NotFound && me.label != "proxy" => Ok(()),
                other => other.map(drop),
            }
        }
        "Cluster.Status" => bounded(cluster.status(pb::StatusRequest {}))
            .await
            .map(drop),
        "Cluster.RemoveManager 0" => {
            match bounded(cluster.remove_manager(pb::RemoveManagerRequest { id: 0 })).await {
                Err(s) if s.code() == Code::InvalidArgument => Ok(()),
                other => other.map(drop),
            }
        }
        "Cluster.RemoveNode missing" => {
            let req = pb::RemoveNodeRequest {
                id: "no-such-node".into(),
                force: true,
            };
            match bounded(cluster.remove_node(req)).await {
                Err(s) if s.code() == Code::NotFound => Ok(()),
                other => other.map(drop),
            }
        }
        "Cluster.CommitObjects nothing" => {
            bounded(cluster.commit_objects(txn(vec![]))).await.map(drop)
        }
        "Cluster.CommitObjects /shoal/leader/term" => {
            bounded(cluster.commit_objects(txn(vec![put_op("/shoal/leader/term", b"9")])))
                .await
                .map(drop)
        }
        "Cluster.CommitObjects /shoal/tasks/x" => {
            bounded(cluster.commit_objects(txn(vec![put_op("/shoal/tasks/x", b"{}")])))
                .await
                .map(drop)
        }
        "Dispatcher.Heartbeat own" | "Dispatcher.Heartbeat other" => {
            let node = if what.ends_with("own") {
                me.own_node.as_str()
            } else {
                other
            };
            let req = pb::HeartbeatRequest {
                node_id: node.to_string(),
                ..Default::default()
            };
            bounded(dispatcher.heartbeat(req)).await.map(drop)
        }
        "Dispatcher.Assignments own" | "Dispatcher.Assignments other" => {
            let node = if what.ends_with("own") {
                me.own_node.as_str()
            } else {
                other
            };
            let req = pb::AssignmentsRequest {
                node_id: node.to_string(),
                incremental: true,
            };
            bounded(dispatcher.assignments(req)).await.map(drop)
        }
        "Dispatcher.UpdateTaskStatus own" | "Dispatcher.UpdateTaskStatus other" => {
            let node = if what.ends_with("own") {
                me.own_node.as_str()
            } else {
                other
            };
            let req = pb::UpdateTaskStatusRequest {
                node_id: node.to_string(),
                updates: vec![],
            };
            bounded(dispatcher.update_task_status(req)).await.map(drop)
        }
        "Dispatcher.Register other" => bounded(dispatcher.register(register(other)))
            .await
            .map(drop),
        "Ca.Info" => bounded(ca.info(pb::CaInfoRequest {})).await.map(drop),
        // Renewed into a throwaway key: the caller's files are left as they are.
        "Ca.Renew" => bounded(ca.renew(pb::CaRenewRequest {
            csr_pem: csr(),
            sans: vec![],
        }))
        .await
        .map(drop),
        "Ca.Token" => bounded(ca.token(pb::CaTokenRequest {
            role: "worker".into(),
            rotate: false,
        }))
        .await
        .map(drop),
        "Ca.IssueClient" => bounded(ca.issue_client(pb::IssueClientRequest {
            name: "authz-operator".into(),
            csr_pem: csr(),
        }))
        .await
        .map(drop),
        "Ca.Clients" => bounded(ca.clients(pb::ClientsRequest {})).await.map(drop),
        "Ca.RevokeClient a name never issued" => {
            bounded(ca.revoke_client(pb::RevokeClientRequest {
                name: "authz-never-issued".into(),
            }))
            .await
            .map(drop)
        }
        "Ca.Rotate" => bounded(ca.rotate(pb::RotateRequest {})).await.map(drop),
        "RaftService.Vote" => {
            bounded(RaftServiceClient::new(ch).vote(shoal_proto::raft::Blob::default()))
                .await
                .map(drop)
        }
        other => panic!("no call {other}"),
    }
}

/// What a call met: refused means PERMISSION_DENIED, UNAUTHENTICATED, or a connection the
/// server would not have (a revoked certificate is refused at the handshake too).
fn met(result: &Result<(), tonic::Status>) -> Want {
    match result {
        Ok(()) => Yes,
        Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated) => No,
        // Made on this side from a connection the server closed (TLS alert `CertificateRevoked`).
        Err(s) if std::error::Error::source(s).is_some() => No,
        Err(s) => Want::Code(s.code()),
    }
}

fn matches(want: Want, got: &Result<(), tonic::Status>) -> bool {
    match (want, met(got)) {
        (Yes, Yes) | (No, No) => true,
        (Want::Code(c), Want::Code(g)) => c == g,
        _ => false,
    }
}

/// Joins as `role`/`name` with `token` and keeps the certificate in `dir`.
async fn join_as(c: &Cluster, token: &str, role: Role, name: &str, dir: &Path) {
    let hosts: Vec<String> = c.managers.iter().map(|m| m.grpc.clone()).collect();
    let joined = join::join(&hosts, token, role, name, &[])
        .await
        .unwrap_or_else(|e| panic!("joining as {role} {name}: {e}"));
    joined.creds.save_dir(dir).expect("saving the certificate");
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_role_may_call_only_what_its_job_needs() {
    let _serial = serial().await;
    let mut c = Cluster::start(3).await;
    let leader = c.wait_leader().await;
    let addr = c.managers[leader].grpc.clone();
    let root = c.root().to_path_buf();

    // Two workers (simulated nodes that speak the dispatcher protocol), a proxy, and a worker
    // that is removed from the cluster.
    let worker_token = c.worker_token.clone();
    for name in [WORKER, OTHER, REVOKED] {
        join_as(&c, &worker_token, Role::Worker, name, &root.join(name)).await;
        let mut d = DispatcherClient::new(channel(&addr, &root.join(name)));
        bounded(d.register(register(name)))
            .await
            .unwrap_or_else(|e| panic!("registering {name}: {e}"));
    }
    join_as(&c, &worker_token, Role::Proxy, PROXY, &root.join(PROXY)).await;
    let out = c.cli(&["node", "rm", "--force", REVOKED]).await;
    assert!(out.ok(), "{out:?}");

    // The CA names nodes: joining with an existing node's id is refused.
    let hosts: Vec<String> = c.managers.iter().map(|m| m.grpc.clone()).collect();
    let err = join::join(&hosts, &worker_token, Role::Worker, OTHER, &[])
        .await
        .err()
        .expect("joining as an existing node must fail");
    assert!(err.to_string().contains("is taken"), "{err}");
    // ... and a worker certificate carries addresses, never a host name.
    let err = join::join(
        &hosts,
        &worker_token,
        Role::Worker,
        "fresh1",
        &["m1.example".into()],
    )
    .await
    .err()
    .expect("a worker's host name must be refused");
    assert!(err.to_string().contains("IP addresses only"), "{err}");

    // The operator's typed path: a node's labels change, its agent-reported fields do not.
    let out = c
        .cli(&["node", "update", "--label-add", "zone=a", WORKER])
        .await;
    assert!(out.ok(), "{out:?}");

    let mut admin_kv = KvClient::new(channel(&addr, &c.admin_tls));
    let lease = bounded(admin_kv.lease_grant(pb::LeaseGrantRequest { ttl_ms: 60_000 }))
        .await
        .expect("the operator grants a lease")
        .id;
    let fixture = Fixture { lease };

    let callers = [
        Caller {
            label: "manager",
            dir: c.managers[leader].tls_dir(),
            own_node: String::new(),
        },
        Caller {
            label: "worker",
            dir: root.join(WORKER),
            own_node: WORKER.into(),
        },
        Caller {
            label: "proxy",
            dir: root.join(PROXY),
            own_node: String::new(),
        },
        Caller {
            label: "operator",
            dir: c.admin_tls.clone(),
            own_node: String::new(),
        },
        Caller {
            label: "revoked",
            dir: root.join(REVOKED),
            own_node: REVOKED.into(),
        },
    ];
    // Managers learn revocations within a second.
    let revoked = &callers[4];
    wait_for("the removed worker to be refused", async || {
        let ch = channel(&addr, &revoked.dir);
        let r = call("Dispatcher.Heartbeat own", ch, revoked, &fixture).await;
        met(&r) == No
    })
    .await;

    let mut wrong = Vec::new();
    let mut calls = 0;
    for (what, wants) in matrix() {
        for (caller, want) in callers.iter().zip(wants) {
            if want == Skip {
                continue;
            }
            let got = call(what, channel(&addr, &caller.dir), caller, &fixture).await;
            calls += 1;
            if !matches(want, &got) {
                wrong.push(format!(
                    "{what} as {}: want {want:?}, got {got:?}",
                    caller.label
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {calls} calls went the wrong way:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // The refusals carry a reason a person can act on.
    let worker = &callers[1];
    let got = call(
        "Dispatcher.Assignments other",
        channel(&addr, &worker.dir),
        worker,
        &fixture,
    )
    .await
    .expect_err("another node's assignments");
    assert_eq!(got.code(), Code::PermissionDenied);
    assert!(
        got.message().contains(&format!(
            "speaks for node {WORKER} only, not for node {OTHER}"
        )),
        "{got:?}"
    );
    // Nothing the refused calls tried was written.
    let term = bounded(admin_kv.range(range("/shoal/leader/term", false)))
        .await
        .unwrap();
    assert_ne!(term.kvs[0].value, b"99999999999999999999".to_vec());
    let node = bounded(admin_kv.range(range(&format!("/shoal/nodes/{WORKER}"), false)))
        .await
        .unwrap();
    let node: serde_json::Value = serde_json::from_slice(&node.kvs[0].value).unwrap();
    assert_eq!(node["operator_labels"]["zone"], "a", "{node}");
    assert_eq!(node["addr"], "127.0.0.1", "{node}");

    // An operator certificate of another root: refused at the handshake, whatever it calls.
    let foreign = foreign_operator(&c.admin_tls, &root.join("foreign"));
    let stranger = Caller {
        label: "foreign",
        dir: foreign,
        own_node: String::new(),
    };
    for (what, _) in matrix() {
        if what == "Ca.Rotate" || what == "RaftService.Vote" {
            continue;
        }
        let got = call(what, channel(&addr, &stranger.dir), &stranger, &fixture).await;
        assert!(
            got.is_err(),
            "{what} as another cluster's operator: {got:?}"
        );
    }
}

/// An operator certificate that names this cluster but is signed by a root of its own (another
/// cluster's, or a forger's): the caller trusts this cluster's roots, so only the server's
/// check can refuse it.
fn foreign_operator(ours: &Path, dir: &Path) -> PathBuf {
    let cert = std::fs::read_to_string(ours.join("cert.pem")).unwrap();
    let cluster_id = shoal_tls::PeerIdentity::from_pem(&cert).unwrap().cluster_id;
    let root = shoal_tls::pki::RootCa::generate(&cluster_id, 1).unwrap();
    let (key, csr) = shoal_tls::pki::signing_request().unwrap();
    let cert = root
        .issue(
            &csr,
            &shoal_tls::pki::Issue {
                cluster_id,
                role: Role::Client,
                name: "admin".into(),
                sans: vec![],
                lifetime: Duration::from_secs(3600),
            },
        )
        .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let roots = std::fs::read_to_string(ours.join("ca.pem")).unwrap();
    std::fs::write(dir.join("ca.pem"), roots).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    dir.to_path_buf()
}

/// The CLI against the managers in `hosts` with the operator's certificate.
async fn cli_on(hosts: &str, tls: &Path, args: &[&str]) -> crate::cluster::CliOutput {
    let mut all = vec!["--host", hosts];
    all.extend_from_slice(args);
    run_cli(&all, None, &[("SHOAL_TLS_DIR", tls.to_str().unwrap())]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_fence_is_not_a_users_key_and_failover_still_works() {
    let _serial = serial().await;
    let http = format!("127.0.0.1:{}", free_port());
    let mut c = Cluster::start_with(3, &["--http", &http]).await;
    let leader = c.wait_leader().await;

    // The CLI: one error line, non-zero exit, nothing written.
    for args in [
        &["kv", "put", "/shoal/leader/term", "99999999999999999999"][..],
        &["kv", "put", "/shoal/leader/term", "1", "--cas", "0"][..],
        &["kv", "del", "/shoal/", "--prefix"][..],
    ] {
        let out = c.cli(args).await;
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("/shoal/") && out.stderr.contains("written only by shoal"),
            "{args:?}: {out:?}"
        );
    }
    // The Consul HTTP API: 403 with a JSON message.
    for (method, target, body) in [
        (
            "PUT",
            "/v1/kv//shoal/leader/term",
            &b"99999999999999999999"[..],
        ),
        ("DELETE", "/v1/kv/?recurse", &b""[..]),
        (
            "PUT",
            "/v1/txn",
            &br#"[{"KV":{"Verb":"set","Key":"/shoal/leader/term","Value":"OTk5"}}]"#[..],
        ),
    ] {
        let r = crate::consul::http(&http, method, target, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {target}: {e}"));
        assert_eq!(r.status, 403, "{method} {target}: {}", r.text());
        let body = r.json();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("/shoal/")),
            "{method} {target}: {body}"
        );
    }

    // A leader change still works: the new leader fences the store with its own term, and its
    // loops write (a service's tasks appear).
    c.managers[leader].kill();
    let new = c.wait_leader().await;
    assert_ne!(new, leader);
    let term = c.managers[new].status().await.unwrap().term;
    let hosts = c.hosts_of(&[(leader + 1) % 3, (leader + 2) % 3]);
    let tls = c.admin_tls.clone();
    wait_for("the new leader's fence", async || {
        let out = cli_on(&hosts, &tls, &["kv", "get", "/shoal/leader/term"]).await;
        out.stdout.trim().parse::<u64>() == Ok(term)
    })
    .await;
    let create = [
        "service",
        "create",
        "--name",
        "after",
        "--replicas",
        "2",
        "x/y",
    ];
    let out = cli_on(&hosts, &tls, &create).await;
    assert!(out.ok(), "{out:?}");
    wait_for("the new leader to create the service's tasks", async || {
        let out = cli_on(&hosts, &tls, &["service", "ps", "after", "--json"]).await;
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() == 2))
    })
    .await;
}

/// `curl -s` with `dir`'s certificate and `args`; (HTTP status or 0 when no HTTP answer came,
/// how long it took).
fn curl_as(dir: &Path, args: &[&str]) -> (u16, Duration) {
    let file = |f: &str| dir.join(f).display().to_string();
    let started = std::time::Instant::now();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--max-time",
            "60",
            "-w",
            "%{http_code}",
        ])
        .args(["--cacert", &file("ca.pem"), "--cert", &file("cert.pem")])
        .args(["--key", &file("key.pem")])
        .args(args)
        .output()
        .expect("running curl");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (code, started.elapsed())
}

/// Issue 18, item 7: operators' certificates are named, listed and revoked one by one. A
/// revoked one is refused on every API, its open streams (a `Kv.Watch` with nothing to say, a
/// blocking HTTP query) end within seconds, its name is never issued again and the CA does not
/// renew it; a removed node's open `Assignments` ends the same way. The other operator keeps
/// working.
#[tokio::test(flavor = "multi_thread")]
async fn an_operator_certificate_is_named_listed_and_revoked_on_every_api() {
    let _serial = serial().await;
    let http = format!("127.0.0.1:{}", free_port());
    let mut c = Cluster::start_with(1, &["--http", &http, "--http-tls"]).await;
    let leader = c.wait_leader().await;
    let addr = c.managers[leader].grpc.clone();
    let root = c.root().to_path_buf();
    let alice = root.join("alice-tls");

    let out = c
        .cli(&[
            "cluster",
            "client-cert",
            alice.to_str().unwrap(),
            "--name",
            "alice",
        ])
        .await;
    assert!(out.ok(), "{out:?}");
    let out = c
        .cli(&["cluster", "client-cert", "/nonexistent-x", "--name", "a/b"])
        .await;
    assert!(
        !out.ok() && out.stderr.contains("invalid client certificate name"),
        "{out:?}"
    );
    let listed = c.cli(&["cluster", "client-certs", "--json"]).await;
    assert!(listed.ok(), "{listed:?}");
    let certs: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let alice_row = certs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "alice")
        .unwrap_or_else(|| panic!("alice not listed: {certs}"));
    assert_eq!(alice_row["revoked"], false, "{certs}");
    assert_eq!(alice_row["count"], 1, "{certs}");
    assert_eq!(alice_row["issued_by"], "admin", "{certs}");
    assert!(alice_row["expires_ms"].as_u64().unwrap() > 0, "{certs}");

    // Alice works everywhere, and holds streams open: a watch with nothing to say, a blocking
    // HTTP query for a minute.
    let mut kv = KvClient::new(channel(&addr, &alice));
    bounded(kv.put(pb::PutRequest {
        key: b"alice/k".to_vec(),
        value: b"v".to_vec(),
        ..Default::default()
    }))
    .await
    .expect("alice writes");
    let (code, _) = curl_as(&alice, &[&format!("https://{http}/v1/kv/alice/k")]);
    assert_eq!(code, 200);
    let mut watching = bounded(kv.watch(watch("quiet/", true)))
        .await
        .expect("alice watches");
    let blocking = {
        let (alice, http) = (alice.clone(), http.clone());
        std::thread::spawn(move || {
            curl_as(
                &alice,
                &[&format!(
                    "https://{http}/v1/kv/quiet/k?index=1000000000&wait=60s"
                )],
            )
        })
    };
    // A worker's open Assignments, for its node's removal.
    let worker_dir = root.join("w-revoked");
    join_as(
        &c,
        &c.worker_token.clone(),
        Role::Worker,
        "revokedw1",
        &worker_dir,
    )
    .await;
    let mut d = DispatcherClient::new(channel(&addr, &worker_dir));
    bounded(d.register(register("revokedw1")))
        .await
        .expect("register");
    let mut assignments = bounded(d.assignments(pb::AssignmentsRequest {
        node_id: "revokedw1".into(),
        incremental: true,
    }))
    .await
    .expect("assignments");
    tokio::time::timeout(Duration::from_secs(10), assignments.message())
        .await
        .expect("the first set in time")
        .expect("the first set");
    sleep(Duration::from_millis(500)).await;

    let out = c.cli(&["cluster", "revoke-client", "alice"]).await;
    assert!(out.ok() && out.stdout.contains("revoked"), "{out:?}");
    // The CA renews nothing for it, even before this manager's revocation set has it.
    let renewed = bounded(
        CaClient::new(channel(&addr, &alice)).renew(pb::CaRenewRequest {
            csr_pem: csr(),
            sans: vec![],
        }),
    )
    .await;
    assert_eq!(met(&renewed.map(drop)), No, "a revoked certificate renewed");
    let out = c.cli(&["node", "rm", "--force", "revokedw1"]).await;
    assert!(out.ok(), "{out:?}");

    // The open streams end, with nothing written under what they watch.
    let ended = tokio::time::timeout(Duration::from_secs(10), watching.message()).await;
    match ended {
        Ok(Err(status)) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        other => panic!("alice's watch did not end with PERMISSION_DENIED: {other:?}"),
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), assignments.message()).await;
    match ended {
        Ok(Err(status)) => assert_eq!(status.code(), Code::PermissionDenied, "{status:?}"),
        other => panic!("the removed node's assignments did not end: {other:?}"),
    }
    let (code, took) = blocking.join().unwrap();
    assert_eq!(
        code, 0,
        "the blocking query was answered after the revocation"
    );
    assert!(
        took < Duration::from_secs(30),
        "the blocking query lasted {took:?}"
    );

    // Refused on every API from now on; the name is not issued again.
    let got = bounded(KvClient::new(channel(&addr, &alice)).range(range("alice/", true))).await;
    assert_eq!(met(&got.map(drop)), No);
    let (code, _) = curl_as(&alice, &[&format!("https://{http}/v1/kv/alice/k")]);
    assert_eq!(code, 0, "the HTTP API served a revoked certificate");
    let out = cli_on(&addr, &alice, &["kv", "get", "alice/k"]).await;
    assert!(!out.ok(), "{out:?}");
    let again = root.join("alice-again");
    let out = c
        .cli(&[
            "cluster",
            "client-cert",
            again.to_str().unwrap(),
            "--name",
            "alice",
        ])
        .await;
    assert!(!out.ok() && out.stderr.contains("revoked"), "{out:?}");

    // Listed as revoked; the harness's operator is untouched.
    let listed = c.cli(&["cluster", "client-certs"]).await;
    assert!(listed.ok(), "{listed:?}");
    let row = listed
        .stdout
        .lines()
        .find(|l| l.starts_with("alice "))
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert!(row.trim_end().ends_with("yes"), "{row}");
    let (code, _) = curl_as(&c.admin_tls, &[&format!("https://{http}/v1/kv/alice/k")]);
    assert_eq!(code, 200);
}
