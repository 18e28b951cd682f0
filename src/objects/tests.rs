//! One conformance suite for both `ObjectStore`s (the replicated store with its index, and the
//! in-memory double), and the index against full scans: after random writes, junk records and
//! a restart.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shoal_raft::{Command, Put, Range, Store, StoreConfig};

use super::*;
use crate::model::{keys, Node, NodeStatus, Service, Task, TaskState};

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        name: id.into(),
        addr: "127.0.0.2".into(),
        engine_addr: String::new(),
        labels: BTreeMap::new(),
        operator_labels: BTreeMap::new(),
        cpus: 2,
        memory_bytes: 1 << 30,
        engine_version: String::new(),
        images: vec![],
        status: NodeStatus::Ready,
        availability: Default::default(),
        heartbeat_ms: 500,
        message: String::new(),
    }
}

fn service(id: &str, name: &str) -> Service {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": name, "image": "img", "replicas": 2,
    }))
    .unwrap()
}

fn task(id: &str, service: &str, slot: u64) -> Task {
    let mut t = Task::new(id.into(), service.into(), slot, 10);
    t.state = TaskState::Pending;
    t
}

/// What a conformance run needs besides the trait: raw writes, as a user's KV put would do.
trait Harness {
    type S: ObjectStore;
    fn objects(&self) -> Self::S;
    async fn raw_put(&self, key: &str, value: &[u8]);
}

impl Harness for MemoryObjects {
    type S = MemoryObjects;
    fn objects(&self) -> MemoryObjects {
        self.clone()
    }
    async fn raw_put(&self, key: &str, value: &[u8]) {
        self.put_raw(key, value);
    }
}

struct Replicated {
    dir: tempfile::TempDir,
    store: Store,
    objects: Objects,
}

impl Replicated {
    async fn open(dir: tempfile::TempDir) -> Replicated {
        Replicated::open_with(dir, "127.0.0.1:1".into(), vec![], None, Default::default()).await
    }

    async fn open_with(
        dir: tempfile::TempDir,
        grpc: String,
        join: Vec<String>,
        token: Option<String>,
        tuning: shoal_raft::RaftTuning,
    ) -> Replicated {
        let index = Index::new();
        // A previous life's threads may hold the database for a moment after its runtime ends.
        let mut tries = 0;
        let (store, _) = loop {
            let opened = Store::open(StoreConfig {
                data_dir: dir.path().to_path_buf(),
                node: shoal_raft::ManagerNode {
                    grpc: grpc.clone(),
                    ..Default::default()
                },
                join: join.clone(),
                token: token.clone(),
                tls: None,
                force_new_cluster: false,
                tuning: shoal_raft::RaftTuning {
                    heartbeat_ms: 50,
                    election_min_ms: 150,
                    election_max_ms: 300,
                    ..tuning.clone()
                },
                observer: Some(index.clone()),
                quota_bytes: shoal_raft::DEFAULT_QUOTA_BYTES,
            })
            .await;
            match opened {
                Err(e) if tries < 50 && e.to_string().contains("lock") => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => break other.expect("opening a one-manager store"),
            }
        };
        if join.is_empty() {
            // A one-member cluster elects itself.
            let mut leading = store.leadership();
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                leading.wait_for(|l| l.is_some()),
            )
            .await;
        }
        Replicated {
            dir,
            objects: Objects::new(store.clone(), index),
            store,
        }
    }

    /// A full read of the store, decoded the way the index decodes.
    async fn scan(&self) -> View {
        let range = Range {
            key: b"/shoal/".to_vec(),
            prefix: true,
            ..Default::default()
        };
        let (found, revision) = self.store.range(&range, false).await.unwrap();
        super::index::scan(revision, &found.kvs)
    }
}

impl Harness for Replicated {
    type S = Objects;
    fn objects(&self) -> Objects {
        self.objects.clone()
    }
    async fn raw_put(&self, key: &str, value: &[u8]) {
        self.store
            .write(Command::Put(Put {
                key: key.as_bytes().to_vec(),
                value: value.to_vec(),
                ..Default::default()
            }))
            .await
            .unwrap();
    }
}

fn assert_same(index: &View, scan: &View) {
    let all = |v: &View| {
        (
            v.nodes().cloned().collect::<Vec<_>>(),
            v.services().cloned().collect::<Vec<_>>(),
            v.tasks().cloned().collect::<Vec<_>>(),
            v.proxy().cloned(),
        )
    };
    assert_eq!(all(index), all(scan), "the index differs from a full scan");
    let ids = |it: &mut dyn Iterator<Item = &Versioned<Task>>| -> Vec<String> {
        it.map(|t| t.value.id.clone()).collect()
    };
    assert_eq!(ids(&mut index.pending()), ids(&mut scan.pending()));
    for s in scan.services() {
        let id = &s.value.id;
        assert_eq!(
            ids(&mut index.tasks_of_service(id)),
            ids(&mut scan.tasks_of_service(id))
        );
        assert_eq!(
            index.service_by_name(&s.value.name).map(|s| &s.value.id),
            Some(id)
        );
    }
    for n in scan.nodes() {
        let id = &n.value.id;
        assert_eq!(
            ids(&mut index.tasks_of_node(id)),
            ids(&mut scan.tasks_of_node(id))
        );
    }
}

async fn conformance<H: Harness>(h: &H) {
    let s = h.objects();
    assert!(s.claim(2).await.unwrap());
    assert!(!s.claim(1).await.unwrap(), "an earlier term is fenced out");

    // A batch lands as one revision; each write on its own expectation.
    let writes = vec![
        Write::Node {
            node: node("n1"),
            expect: Expect::Absent,
        },
        Write::Task {
            task: task("t1", "s1", 1),
            expect: Expect::Absent,
        },
        Write::Task {
            task: task("t2", "s1", 2),
            expect: Expect::Absent,
        },
    ];
    assert_eq!(
        s.commit(2, writes).await.unwrap(),
        Commit::Done(vec![true; 3])
    );
    let v1 = s.view();
    assert_eq!(v1.task_count(), 2);
    let rev = v1.task("t1").unwrap().mod_revision;
    assert_eq!(v1.task("t2").unwrap().mod_revision, rev);
    assert_eq!(v1.node("n1").unwrap().mod_revision, rev);
    assert_eq!(v1.pending().count(), 2);

    // Partial acceptance: a stale expectation loses only its own write.
    let mut assigned = task("t1", "s1", 1);
    assigned.state = TaskState::Assigned;
    assigned.node_id = Some("n1".into());
    let outcome = s
        .commit(
            2,
            vec![
                Write::Task {
                    task: assigned.clone(),
                    expect: Expect::ModRevision(rev),
                },
                Write::Task {
                    task: task("t2", "s1", 2),
                    expect: Expect::ModRevision(rev - 1),
                },
                Write::Task {
                    task: task("t1", "s1", 1),
                    expect: Expect::Absent,
                },
            ],
        )
        .await
        .unwrap();
    assert_eq!(outcome, Commit::Done(vec![true, false, false]));
    assert!(!outcome.all_applied());
    let v2 = s.view();
    assert_eq!(v2.task("t1").unwrap().value, assigned);
    assert_eq!(
        v2.tasks_of_node("n1")
            .map(|t| t.value.id.as_str())
            .collect::<Vec<_>>(),
        ["t1"]
    );
    let changed: Vec<String> = v2
        .task_changes(&v1)
        .map(|c| c.current().unwrap().value.id.clone())
        .collect();
    assert_eq!(changed, ["t1"]);

    // A task change merges only its fields, on its own expectation; it needs the task there.
    let at = v2.task("t1").unwrap().mod_revision;
    let mut running = assigned.clone();
    running.state = TaskState::Running;
    running.container_id = Some("c1".into());
    running.message = "started".into();
    let change = Write::task_change(&assigned, at, &running).expect("a change");
    let Write::TaskChange { patch, .. } = &change else {
        panic!("{change:?}")
    };
    assert_eq!(
        patch,
        &serde_json::json!({"state": "running", "container_id": "c1", "message": "started"})
    );
    assert_eq!(Write::task_change(&assigned, at, &assigned), None);
    let mut gone = running.clone();
    gone.id = "t-gone".into();
    let outcome = s
        .commit(
            2,
            vec![
                change.clone(),
                // Stale now: the first write moved t1 on.
                change,
                Write::task_change(&task("t-gone", "s1", 5), 1, &gone).unwrap(),
            ],
        )
        .await
        .unwrap();
    assert_eq!(outcome, Commit::Done(vec![true, false, false]));
    let v2 = s.view();
    assert_eq!(v2.task("t1").unwrap().value, running);
    assert!(v2.task("t-gone").is_none());

    // The term fence: a deposed leader's batch writes nothing.
    assert!(s.claim(3).await.unwrap());
    let outcome = s
        .commit(
            2,
            vec![Write::Task {
                task: task("t9", "s1", 9),
                expect: Expect::Absent,
            }],
        )
        .await
        .unwrap();
    assert_eq!(outcome, Commit::Fenced);
    assert!(s.barrier().await.unwrap().task("t9").is_none());

    // A service removal takes its name key; the barrier sees it.
    h.raw_put(
        &keys::service("s1"),
        &serde_json::to_vec(&service("s1", "web")).unwrap(),
    )
    .await;
    h.raw_put(&keys::service_name("web"), b"s1").await;
    let v3 = s.barrier().await.unwrap();
    let s1 = v3.service_by_name("web").expect("service by name");
    let outcome = s
        .commit(
            3,
            vec![Write::DeleteService {
                id: "s1".into(),
                name: "web".into(),
                mod_revision: s1.mod_revision,
            }],
        )
        .await
        .unwrap();
    assert_eq!(outcome, Commit::Done(vec![true]));
    let v4 = s.barrier().await.unwrap();
    assert!(v4.service("s1").is_none() && v4.service_by_name("web").is_none());
    assert!(v4.revision() > v3.revision());
}

/// Random object writes and junk records; the index must equal a full scan throughout.
async fn random_writes<H: Harness>(h: &H, seed: u64) {
    let s = h.objects();
    let mut rng = StdRng::seed_from_u64(seed);
    let term = 7;
    assert!(s.claim(term).await.unwrap());
    for round in 0..30 {
        let view = s.view();
        let mut writes = Vec::new();
        for _ in 0..rng.random_range(1..20) {
            let id = format!("t{}", rng.random_range(0..40));
            let current = view.task(&id);
            let expect = match current {
                Some(t) if rng.random_bool(0.9) => Expect::ModRevision(t.mod_revision),
                Some(_) => Expect::Absent,
                None => Expect::Absent,
            };
            if let Some(t) = current.filter(|_| rng.random_bool(0.2)) {
                writes.push(Write::DeleteTask {
                    id,
                    mod_revision: t.mod_revision,
                });
                continue;
            }
            let mut t = task(&id, &format!("s{}", rng.random_range(0..4)), 1);
            t.state = [TaskState::Pending, TaskState::Assigned, TaskState::Running]
                [rng.random_range(0..3)];
            if t.state != TaskState::Pending {
                t.node_id = Some(format!("n{}", rng.random_range(0..5)));
            }
            // A change of the stored task, as status reports make, or a whole task.
            if let Some(c) = current.filter(|_| rng.random_bool(0.5)) {
                t.id.clone_from(&c.value.id);
                t.message = format!("round {round}");
                if let Some(w) = Write::task_change(&c.value, c.mod_revision, &t) {
                    writes.push(w);
                }
                continue;
            }
            writes.push(Write::Task { task: t, expect });
        }
        s.commit(term, writes).await.unwrap();
        match round % 7 {
            // Junk under /shoal/: skipped by both the index and a scan.
            3 => h.raw_put(&keys::task("t3"), b"{not json").await,
            5 => {
                let n = node(&format!("n{}", rng.random_range(0..5)));
                h.raw_put(&keys::node(&n.id), &serde_json::to_vec(&n).unwrap())
                    .await
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_in_memory_store_conforms() {
    conformance(&MemoryObjects::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicated_store_conforms() {
    let r = Replicated::open(tempfile::tempdir().unwrap()).await;
    conformance(&r).await;
    r.store.shutdown().await;
}

#[tokio::test]
async fn the_in_memory_index_equals_a_full_scan_after_random_writes() {
    for seed in 0..20 {
        let m = MemoryObjects::new();
        random_writes(&m, seed).await;
        assert_same(&m.view(), &m.scan());
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn the_replicated_index_equals_a_full_scan_after_random_writes_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // Each life of the manager in a runtime of its own: dropping it ends every task that holds
    // the database, as a process exit would.
    let (dir, before) = runtime().block_on(async {
        let r = Replicated::open(dir).await;
        random_writes(&r, 1).await;
        let before = r.objects.barrier().await.unwrap();
        assert!(before.task_count() > 0);
        assert_same(&before, &r.scan().await);
        r.store.shutdown().await;
        (r.dir, before)
    });
    // Restart: the index is rebuilt by one scan at start-up.
    assert_eq!(dir.path(), path);
    runtime().block_on(async {
        let r = Replicated::open(dir).await;
        let after = r.objects.barrier().await.unwrap();
        assert_same(&after, &before);
        assert_same(&after, &r.scan().await);
        r.store.shutdown().await;
    });
}

/// Serves `store`'s peer service on `listener` (plaintext: this crate's tests only).
fn serve_peers(store: &Store, listener: tokio::net::TcpListener) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let server = tonic::transport::Server::builder()
        .add_service(store.peer_service())
        .serve_with_incoming(incoming);
    tokio::spawn(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_that_installs_a_snapshot_rebuilds_its_index_from_it() {
    let tuning = shoal_raft::RaftTuning {
        snapshot_every: 20,
        keep_behind_snapshot: 2,
        ..Default::default()
    };
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a1 = l1.local_addr().unwrap().to_string();
    let first = Replicated::open_with(
        tempfile::tempdir().unwrap(),
        a1.clone(),
        vec![],
        None,
        tuning.clone(),
    )
    .await;
    serve_peers(&first.store, l1);
    // Enough entries that the log behind the snapshots is purged: the joiner needs one.
    random_writes(&first, 3).await;
    random_writes(&first, 4).await;
    let leader_view = first.objects.barrier().await.unwrap();
    // Wait until the log behind a snapshot is gone, so the joiner cannot replay it.
    let purged = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            if first.store.status().await.purged_index > 0 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(purged.is_ok(), "the first manager never purged its log");

    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a2 = l2.local_addr().unwrap().to_string();
    let second = Replicated::open_with(
        tempfile::tempdir().unwrap(),
        a2,
        vec![a1.clone()],
        Some(first.store.token().to_string()),
        tuning,
    )
    .await;
    serve_peers(&second.store, l2);
    second.store.finish_join(&[a1]).await.unwrap();
    let joined = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        super::store::view_at(second.objects.subscribe(), leader_view.revision()),
    )
    .await
    .expect("the joiner catches up")
    .unwrap();
    assert!(joined.task_count() > 0);
    assert!(
        second.store.status().await.snapshot_index > 0,
        "the joiner installed a snapshot"
    );
    assert_same(&joined, &leader_view);
    let range = Range {
        key: b"/shoal/".to_vec(),
        prefix: true,
        ..Default::default()
    };
    let (found, revision) = second.store.range(&range, true).await.unwrap();
    assert_same(&joined, &super::index::scan(revision, &found.kvs));
    second.store.shutdown().await;
    first.store.shutdown().await;
}
