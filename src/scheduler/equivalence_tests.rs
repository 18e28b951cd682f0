//! `schedule` (counters, groups, heaps) against the reference (`naive.rs`) on random clusters:
//! the same decisions, in the same order, for every strategy and RNG seed.

use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::testutil::{node, service, task};
use super::*;
use crate::model::{Availability, NodeStatus, PortSpec, Protocol, PublishedPort};

const NAMES: [&str; 7] = ["web", "api", "db", "cache", "data", "worker", "app"];
const CONSTRAINTS: [&str; 11] = [
    "storage==ssd",
    "storage!=hdd",
    "region==eu",
    "storage==s*",
    "node!=n3",
    "node==/n[1-5]/",
    "region==~eu",
    "storage==~ssd",
    "region!=~us",
    "node==~n2",
    "zone==a",
];
const AFFINITIES: [&str; 14] = [
    "container==web",
    "container!=db",
    "container==web.*",
    "container==/^da/",
    "image==cache",
    "image!=db:latest",
    "tier==front",
    "tier!=back",
    "tier==f*",
    "container==~api",
    "container!=~web",
    "tier==~front",
    "image!=~db",
    "image==~web",
];

/// Mostly none, sometimes one, rarely two (more would leave most tasks unschedulable).
fn pick(rng: &mut StdRng, from: &[&str]) -> Vec<String> {
    let n = *[0, 0, 0, 1, 1, 2].choose(rng).unwrap();
    (0..n)
        .map(|_| from.choose(rng).unwrap().to_string())
        .collect()
}

fn random_node(rng: &mut StdRng, n: u32) -> Node {
    let mut node = node(n, &[]);
    let mut label = |rng: &mut StdRng, key: &str, values: &[&str]| {
        if let Some(v) = values.choose(rng).filter(|v| !v.is_empty()) {
            node.labels.insert(key.into(), v.to_string());
        }
    };
    label(rng, "storage", &["ssd", "hdd", ""]);
    label(rng, "region", &["eu", "us", ""]);
    label(
        rng,
        "containerslots",
        &["", "", "", "", "0", "2", "5", "many"],
    );
    if rng.random_bool(0.1) {
        node.operator_labels.insert("storage".into(), "ssd".into());
    }
    node.cpus = rng.random_range(0..=4);
    node.memory_bytes = rng.random_range(1..=4u64) << 30;
    node.images
        .extend(["cache:latest".to_string(), "worker:latest".to_string()]);
    node.images.retain(|_| rng.random_bool(0.9));
    if rng.random_bool(0.3) {
        node.images.push("docker.io/library/cache:7".into());
    }
    if rng.random_bool(0.1) {
        node.status = NodeStatus::Down;
    }
    if rng.random_bool(0.1) {
        node.availability = Availability::Drain;
    }
    node
}

fn random_service(rng: &mut StdRng, name: &str) -> Service {
    let mut svc = service(name);
    svc.image = match rng.random_range(0..10) {
        0 => name.to_string(),
        1 => format!("{name}:2"),
        2 | 3 => format!("{name}@sha256:abc"),
        4 if name == "cache" => "cache:7".into(),
        _ => svc.image,
    };
    if rng.random_bool(0.5) {
        let tier = *["front", "back"].choose(rng).unwrap();
        svc.labels.insert("tier".into(), tier.into());
    }
    svc.constraints = pick(rng, &CONSTRAINTS);
    svc.affinities = pick(rng, &AFFINITIES);
    if rng.random_bool(0.03) {
        svc.constraints.push("storage=ssd".into());
    }
    if rng.random_bool(0.2) {
        svc.ports.push(PortSpec {
            container_port: 80,
            protocol: *[Protocol::Tcp, Protocol::Udp].choose(rng).unwrap(),
            host_port: Some(rng.random_range(80..=81)),
        });
    }
    if rng.random_bool(0.2) {
        svc.ports.push(PortSpec {
            container_port: 8080,
            protocol: Protocol::Tcp,
            host_port: None,
        });
    }
    svc.reservations.nano_cpus = *[0, 0, 0, 100_000_000, 500_000_000, 1_000_000_000]
        .choose(rng)
        .unwrap();
    svc.reservations.memory_bytes = *[0, 0, 0, 64 << 20, 256 << 20, 1 << 30].choose(rng).unwrap();
    if rng.random_bool(0.15) {
        svc.links = vec![format!("{}:alias", NAMES.choose(rng).unwrap())];
    }
    if rng.random_bool(0.1) {
        svc.volumes_from = vec![format!("{}:ro", NAMES.choose(rng).unwrap())];
    }
    if rng.random_bool(0.05) {
        svc.network_mode = Some(format!("container:{}.1", NAMES.choose(rng).unwrap()));
    }
    svc
}

/// Nodes, services, and tasks: some occupying nodes (some on unknown nodes, some of deleted
/// services), some finished, and pending ones created at a few distinct times.
fn random_cluster(rng: &mut StdRng) -> (Vec<Node>, Vec<Service>, Vec<Task>) {
    let count = if rng.random_bool(0.02) {
        0
    } else {
        rng.random_range(1..=20)
    };
    let mut ids: Vec<u32> = (1..=count).collect();
    ids.shuffle(rng);
    let nodes: Vec<Node> = ids.iter().map(|&n| random_node(rng, n)).collect();
    let node_ids: Vec<String> = nodes
        .iter()
        .map(|n| n.id.clone())
        .chain(["n99".to_string()])
        .collect();
    let mut names = NAMES.to_vec();
    names.shuffle(rng);
    names.truncate(rng.random_range(1..=5));
    let mut services: Vec<Service> = names.iter().map(|n| random_service(rng, n)).collect();
    services.push(random_service(rng, "gone"));
    let mut tasks = Vec::new();
    for svc in &services {
        let mut slot = 0;
        for _ in 0..rng.random_range(0..=4) {
            slot += 1;
            let mut t = task(svc, slot, node_ids.choose(rng).map(String::as_str));
            t.state = *[
                TaskState::Assigned,
                TaskState::Starting,
                TaskState::Running,
                TaskState::Complete,
            ]
            .choose(rng)
            .unwrap();
            if rng.random_bool(0.2) {
                t.ports.push(PublishedPort {
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: String::new(),
                    host_port: rng.random_range(80..=81),
                });
            }
            tasks.push(t);
        }
        let most = match (svc.name.as_str(), rng.random_bool(0.2)) {
            ("gone", _) => 1,
            (_, true) => 40,
            (_, false) => 8,
        };
        for _ in 0..rng.random_range(0..=most) {
            slot += 1;
            let mut t = task(svc, slot, None);
            t.created_ms = rng.random_range(0..3);
            if rng.random_bool(0.05) {
                t.desired_state = TaskState::Shutdown;
            }
            if rng.random_bool(0.05) {
                t.ports.push(PublishedPort {
                    container_port: 80,
                    protocol: Protocol::Tcp,
                    host_ip: String::new(),
                    host_port: 80,
                });
            }
            tasks.push(t);
        }
    }
    // The tasks of "gone" stay, its service does not.
    services.pop();
    tasks.shuffle(rng);
    (nodes, services, tasks)
}

#[test]
fn decisions_equal_the_reference_on_random_clusters() {
    let mut assigned = 0;
    let mut unschedulable = 0;
    for seed in 0..600u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (nodes, services, tasks) = random_cluster(&mut rng);
        let snapshot = Snapshot::new(&nodes, &services, &tasks);
        let pending = snapshot.pending();
        for strategy in [Strategy::Spread, Strategy::Binpack, Strategy::Random] {
            let draw = rng.random::<u64>();
            let fast = schedule(
                &pending,
                &snapshot,
                strategy,
                &mut StdRng::seed_from_u64(draw),
            );
            let reference = naive::schedule(
                &pending,
                &snapshot,
                strategy,
                &mut StdRng::seed_from_u64(draw),
            );
            assert_eq!(
                fast, reference,
                "cluster seed {seed}, {strategy:?}, rng seed {draw}"
            );
            for d in fast {
                match d {
                    Decision::Assign { .. } => assigned += 1,
                    Decision::Unschedulable { .. } => unschedulable += 1,
                }
            }
        }
    }
    // The clusters exercise both outcomes plenty.
    assert!(
        assigned > 8_000 && unschedulable > 8_000,
        "{assigned} assigned, {unschedulable} unschedulable"
    );
}
