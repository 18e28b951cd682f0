//! The scheduler workload: services scaled up and down through the `shoal` CLI while managers
//! suffer the nemesis and SIMULATED agents are paused (session cut, tasks kept running, as a
//! real agent cut off from the leader does) or crashed (tasks gone). A simulated agent speaks
//! the real dispatcher protocol (register, heartbeat, assignment stream, task status) but runs
//! no container: a task "runs" from the moment it reports RUNNING until it stops it.
//! Like a real agent, each simulated agent first joins with the token for a worker certificate
//! named by its node id (the dispatcher accepts only that), and keeps it for the whole run.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use shoal::model::{keys, Service, Task, TaskState, TaskStatus};
use shoal::security::join;
use shoal_proto::v1 as pb;
use shoal_proto::v1::dispatcher_client::DispatcherClient;
use shoal_tls::{Credentials, Role};
use tokio::sync::{watch, Mutex};

use super::{Ctx, Proc};
use crate::history::Kind;

const SERVICES: [&str; 2] = ["jepsen-a", "jepsen-b"];
/// The services' image: never pulled or run, only matched by the scheduler's image filter.
const IMAGE: &str = "shoal/jepsen-sim";
const HEARTBEAT: Duration = Duration::from_millis(500);
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    /// Cut off: no calls to the managers; tasks keep running.
    Paused,
    /// Down: tasks gone.
    Crashed,
}

/// Tasks one simulated agent runs: task id -> (service id, slot).
type Running = Arc<Mutex<HashMap<String, (String, u64)>>>;

struct Agent {
    name: String,
    node_id: String,
    mode: watch::Sender<Mode>,
    running: Running,
}

pub async fn run(ctx: Ctx, shoal: &Path, agents: usize, max_replicas: u64) {
    let mut rng = StdRng::seed_from_u64(ctx.seed ^ 0x5343_4845);
    let mut fleet = Vec::new();
    for i in 0..agents {
        let (tx, rx) = watch::channel(Mode::Up);
        let agent = Agent {
            name: format!("sim-agent-{}", i + 1),
            node_id: format!("sim{:x}{}", ctx.seed % 0xffff, i + 1),
            mode: tx,
            running: Running::default(),
        };
        tokio::spawn(session(
            ctx.clone(),
            agent.name.clone(),
            agent.node_id.clone(),
            agent.running.clone(),
            rx,
        ));
        fleet.push(agent);
    }
    // Services, created once (retried: creating an existing name fails harmlessly).
    for name in SERVICES {
        for _ in 0..30 {
            let out = cli(
                shoal,
                &ctx.hosts,
                &ctx.auth.tls_dir,
                &[
                    "service",
                    "create",
                    "--name",
                    name,
                    "--replicas",
                    "2",
                    "shoal/jepsen-sim",
                ],
            )
            .await;
            if out.as_ref().is_ok_and(|o| o.0) || out.is_ok_and(|o| o.1.contains("exists")) {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let mut proc = ctx.process();
    let mut next_agent_fault = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut faulted: Option<usize> = None;
    while !ctx.stopped() {
        let name = SERVICES[rng.random_range(0..SERVICES.len())];
        let n: u64 = rng.random_range(0..=max_replicas);
        let inv = proc.invoke("scale", name, json!({"service": name, "replicas": n}));
        match cli(
            shoal,
            &ctx.hosts,
            &ctx.auth.tls_dir,
            &["service", "scale", &format!("{name}={n}")],
        )
        .await
        {
            Ok((true, _)) => proc.complete(&inv, Kind::Ok, inv.value.clone(), None),
            Ok((false, err)) => proc.complete(&inv, Kind::Info, inv.value.clone(), Some(err)),
            Err(e) => proc.complete(&inv, Kind::Fail, inv.value.clone(), Some(e)),
        }
        // Agent faults on their own schedule: one agent at a time, paused or crashed for ~5 s.
        if tokio::time::Instant::now() >= next_agent_fault {
            if let Some(i) = faulted.take() {
                let _ = fleet[i].mode.send(Mode::Up);
                proc.note("agent-heal", "", json!({"node": fleet[i].name}));
            } else {
                let i = rng.random_range(0..fleet.len());
                let mode = if rng.random_bool(0.5) {
                    Mode::Paused
                } else {
                    Mode::Crashed
                };
                let _ = fleet[i].mode.send(mode);
                proc.note(
                    "agent-fault",
                    "",
                    json!({"node": fleet[i].name, "mode": format!("{mode:?}")}),
                );
                faulted = Some(i);
            }
            next_agent_fault = tokio::time::Instant::now() + Duration::from_secs(5);
        }
        ctx.pause(Duration::from_millis(rng.random_range(1000..3000)))
            .await;
    }
    for a in &fleet {
        let _ = a.mode.send(Mode::Up);
    }
    ctx.wait_finals().await;
    final_state(&ctx, &fleet).await;
}

/// Runs `shoal --host HOSTS --tls-dir TLS_DIR ARGS`: Ok((succeeded, stderr)), Err if it could
/// not be started.
async fn cli(
    shoal: &Path,
    hosts: &[String],
    tls_dir: &Path,
    args: &[&str],
) -> Result<(bool, String), String> {
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new(shoal)
            .arg("--host")
            .arg(hosts.join(","))
            .arg("--tls-dir")
            .arg(tls_dir)
            .env_remove("SHOAL_TLS_DIR")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "shoal CLI timed out".to_string())?
    .map_err(|e| e.to_string())?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    ))
}

/// After the heal: waits (up to 60 s) until every service has its replicas RUNNING in the store
/// and on the agents, then records what it saw.
async fn final_state(ctx: &Ctx, fleet: &[Agent]) {
    let proc = ctx.process();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut last = json!({});
    let mut settled = false;
    while tokio::time::Instant::now() < deadline {
        if let Some(state) = observe(ctx, fleet).await {
            settled = state
                .values()
                .all(|s| s["replicas"] == s["running"] && s["replicas"] == s["agents_running"]);
            last = json!(state);
            if settled {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    proc.note(
        "final-state",
        "",
        json!({"settled": settled, "services": last}),
    );
}

async fn observe(ctx: &Ctx, fleet: &[Agent]) -> Option<BTreeMap<String, serde_json::Value>> {
    let mut client = ctx.final_client(0).await?;
    let list = |prefix: &str| pb::RangeRequest {
        key: prefix.as_bytes().to_vec(),
        prefix: true,
        ..Default::default()
    };
    let services = client.range(list(keys::SERVICES)).await.ok()?;
    let tasks = client.range(list(keys::TASKS)).await.ok()?;
    let tasks: Vec<Task> = tasks
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    let mut on_agents: HashMap<String, u64> = HashMap::new();
    for a in fleet {
        for (service, _) in a.running.lock().await.values() {
            *on_agents.entry(service.clone()).or_default() += 1;
        }
    }
    let mut out = BTreeMap::new();
    for kv in &services.kvs {
        let Ok(s) = serde_json::from_slice::<Service>(&kv.value) else {
            continue;
        };
        if !SERVICES.contains(&s.name.as_str()) {
            continue;
        }
        let running = tasks
            .iter()
            .filter(|t| {
                t.service_id == s.id
                    && t.state == TaskState::Running
                    && t.desired_state == TaskState::Running
            })
            .count();
        out.insert(
            s.name.clone(),
            json!({"replicas": s.replicas, "running": running,
                "agents_running": on_agents.get(&s.id).copied().unwrap_or(0)}),
        );
    }
    Some(out)
}

/// One simulated agent's session loop, for the whole run.
async fn session(
    ctx: Ctx,
    name: String,
    node_id: String,
    running: Running,
    mut mode: watch::Receiver<Mode>,
) {
    let proc = ctx.process();
    let Some(creds) = worker_credentials(&ctx, &proc, &name, &node_id, &mut mode).await else {
        return;
    };
    let mut hosts: Vec<String> = ctx.hosts.clone();
    let mut connected = false;
    let mut target = 0usize;
    loop {
        let current = *mode.borrow();
        if current != Mode::Up {
            if connected {
                proc.note("session-lost", "", json!({"node": name}));
                connected = false;
            }
            if current == Mode::Crashed {
                let mut r = running.lock().await;
                for (_, (service, slot)) in r.drain() {
                    stopped(&proc, &name, &service, slot);
                }
            }
            let _ = mode.changed().await;
            continue;
        }
        let addr = hosts[target % hosts.len()].clone();
        let result = serve(
            &creds,
            &proc,
            &name,
            &node_id,
            &addr,
            &running,
            &mut mode,
            &mut connected,
        )
        .await;
        if connected {
            proc.note("session-lost", "", json!({"node": name}));
            connected = false;
        }
        match result {
            Err(Some(leader)) if !leader.is_empty() => {
                if !hosts.contains(&leader) {
                    hosts.push(leader.clone());
                }
                target = hosts.iter().position(|h| *h == leader).unwrap_or(0);
            }
            _ => target += 1,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stopped(proc: &Proc, node: &str, service: &str, slot: u64) {
    proc.note(
        "task-stopped",
        "",
        json!({"node": node, "service": service, "slot": slot}),
    );
}

/// Joins with the manager token for a worker certificate named `node_id`, as `shoal agent`
/// does before its first Register: retried (never while the agent is cut off) until it succeeds;
/// None if the run stops first.
async fn worker_credentials(
    ctx: &Ctx,
    proc: &Proc,
    name: &str,
    node_id: &str,
    mode: &mut watch::Receiver<Mode>,
) -> Option<Credentials> {
    loop {
        if ctx.stopped() {
            return None;
        }
        if *mode.borrow() != Mode::Up {
            let mut stop = ctx.stop.clone();
            tokio::select! {
                _ = mode.changed() => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            continue;
        }
        match join::join(&ctx.hosts, &ctx.auth.token, Role::Worker, node_id, &[]).await {
            Ok(joined) => return Some(joined.creds),
            Err(e) => {
                proc.note(
                    "agent-join-failed",
                    "",
                    json!({"node": name, "error": e.to_string()}),
                );
                ctx.pause(Duration::from_secs(1)).await;
            }
        }
    }
}

fn request<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// The leader's address from a non-leader's refusal.
fn leader_of(status: &tonic::Status) -> Option<String> {
    status
        .metadata()
        .get("x-shoal-leader")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// One session with one manager. Err(Some(leader)) when it named another leader.
#[allow(clippy::too_many_arguments)]
async fn serve(
    creds: &Credentials,
    proc: &Proc,
    name: &str,
    node_id: &str,
    addr: &str,
    running: &Running,
    mode: &mut watch::Receiver<Mode>,
    connected: &mut bool,
) -> Result<(), Option<String>> {
    // Mutual TLS with the worker certificate; connects lazily, on the Register below.
    let channel = join::channel(addr, creds).map_err(|_| None)?;
    // A set of thousands of tasks is larger than gRPC's default 4 MiB message.
    let mut client = DispatcherClient::new(channel).max_decoding_message_size(64 << 20);
    let reg = pb::RegisterRequest {
        node_id: node_id.to_string(),
        name: name.to_string(),
        addr: "127.0.0.1".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        engine_version: "simulated".into(),
        // The scheduler places a task only where its image is present.
        images: vec![format!("{IMAGE}:latest")],
        heartbeat_ms: HEARTBEAT.as_millis() as u64,
        ..Default::default()
    };
    client
        .register(request(reg))
        .await
        .map_err(|s| leader_of(&s))?;
    let mut stream = client
        // Whole sets: the real agent follows incremental streams, this node the other kind.
        .assignments(request(pb::AssignmentsRequest {
            node_id: node_id.to_string(),
            incremental: false,
        }))
        .await
        .map_err(|s| leader_of(&s))?
        .into_inner();
    *connected = true;
    proc.note("session-up", "", json!({"node": name}));
    let mut beat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = mode.changed() => {
                if *mode.borrow() != Mode::Up {
                    return Err(None);
                }
            }
            _ = beat.tick() => {
                let hb = pb::HeartbeatRequest { node_id: node_id.to_string(), ..Default::default() };
                if let Err(s) = client.heartbeat(request(hb)).await {
                    return Err(leader_of(&s));
                }
            }
            set = stream.message() => {
                let set = match set {
                    Ok(Some(set)) => set,
                    Ok(None) => return Err(None),
                    Err(s) => return Err(leader_of(&s)),
                };
                let updates = apply(proc, name, running, &set).await;
                if !updates.is_empty() {
                    let req = pb::UpdateTaskStatusRequest {
                        node_id: node_id.to_string(),
                        updates: updates.iter().filter_map(|u| serde_json::to_vec(u).ok()).collect(),
                    };
                    if let Err(s) = client.update_task_status(request(req)).await {
                        return Err(leader_of(&s));
                    }
                }
            }
        }
    }
}

/// Reconciles the simulated tasks with an assignment set; returns the states to report.
async fn apply(
    proc: &Proc,
    name: &str,
    running: &Running,
    set: &pb::AssignmentSet,
) -> Vec<TaskStatus> {
    let tasks: Vec<Task> = set
        .tasks
        .iter()
        .filter_map(|a| serde_json::from_slice(&a.task).ok())
        .collect();
    let wanted: HashMap<&str, &Task> = tasks
        .iter()
        .filter(|t| t.desired_state == TaskState::Running && !t.state.is_terminal())
        .map(|t| (t.id.as_str(), t))
        .collect();
    let mut updates = Vec::new();
    let mut r = running.lock().await;
    // Stop what is no longer wanted.
    let gone: Vec<String> = r
        .keys()
        .filter(|id| !wanted.contains_key(id.as_str()))
        .cloned()
        .collect();
    for id in gone {
        if let Some((service, slot)) = r.remove(&id) {
            stopped(proc, name, &service, slot);
            if let Some(t) = tasks.iter().find(|t| t.id == id) {
                if !t.state.is_terminal() {
                    updates.push(status(&id, TaskState::Shutdown, "stopped"));
                }
            }
        }
    }
    for (id, t) in wanted {
        if r.contains_key(id) {
            continue;
        }
        if t.state >= TaskState::Running {
            // It was running here before a crash: the simulated container is gone.
            updates.push(status(id, TaskState::Failed, "simulated container lost"));
            continue;
        }
        r.insert(id.to_string(), (t.service_id.clone(), t.slot));
        proc.note(
            "task-running",
            "",
            json!({"node": name, "service": t.service_id, "slot": t.slot, "task": id}),
        );
        updates.push(status(id, TaskState::Running, "simulated"));
    }
    updates
}

fn status(id: &str, state: TaskState, message: &str) -> TaskStatus {
    TaskStatus {
        task_id: id.to_string(),
        state,
        message: message.to_string(),
        container_id: Some(format!("sim-{id}")),
        ports: Vec::new(),
        exit_code: None,
        health: None,
    }
}
