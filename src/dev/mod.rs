//! `shoal dev`: a whole cluster on loopback as child processes of one command: N managers (the
//! first bootstraps, the others join it), M agents once the managers are voters, with `--proxy` an
//! nginx and a `shoal proxy` beside it, `DIR/cluster.json` once every agent is a READY node and the
//! proxy reports, and a clean stop on Ctrl-C. It never deletes anything in DIR: run it again and
//! the same cluster restarts. With `--hosts N` it first builds N hosts (`hosts`: network namespaces
//! with their own Docker engine), runs one agent per host and keeps the services' images loaded
//! into them (`images`); the hosts are removed on exit, or swept at the next start after a crash.

mod agents;
mod error;
pub mod hosts;
mod images;
mod layout;
mod procs;
mod proxy;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::client::{Client, ClientConfig};
pub use error::DevError;
use layout::Slot;
pub use layout::{AgentEntry, ClusterFile, HostEntry, ManagerEntry, MAX_AGENTS};
pub(crate) use procs::last_log_line;
use procs::Group;
pub use proxy::ProxyEntry;
use proxy::ProxySlot;

/// How long one manager may take to come up (first start opens RocksDB, elects, joins).
const START_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Args)]
pub struct DevArgs {
    /// How many managers to run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub managers: u16,
    /// How many agents to run against the local Docker engine: node-1 (labelled storage=ssd),
    /// node-2, ... on 127.0.0.2, 127.0.0.3, ...
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=i64::from(MAX_AGENTS)))]
    pub agents: u32,
    /// How many hosts to build (needs root): network namespaces, each with its own Docker engine
    /// and an agent `host-I` (labelled host=hI; host-1 also storage=ssd). Images of services
    /// reach them from the local engine. Everything is removed on exit (or at the next start).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=hosts::MAX_HOSTS as i64))]
    pub hosts: u16,
    /// Also run nginx (Debian nginx-light) on a free port, with a `shoal proxy` applying the
    /// cluster's proxy config to it.
    #[arg(long)]
    pub proxy: bool,
    /// Where the managers keep their data, logs and cluster.json.
    #[arg(long, default_value = "shoal-dev")]
    pub dir: PathBuf,
}

/// Runs the local cluster until `shutdown` resolves, then stops every child.
pub async fn run(args: DevArgs, shutdown: impl Future<Output = ()>) -> Result<(), DevError> {
    let nginx = if args.proxy {
        let missing = DevError::NotInstalled {
            program: "nginx",
            hint: "apt-get install nginx-light",
        };
        Some(crate::proxy::find_program("nginx").ok_or(missing)?)
    } else {
        None
    };
    std::fs::create_dir_all(args.dir.join("logs")).map_err(DevError::io("creating", &args.dir))?;
    let dir = std::path::absolute(&args.dir).map_err(DevError::io("resolving", &args.dir))?;
    let exe = std::env::current_exe().map_err(DevError::io("finding", "the shoal executable"))?;

    let previous = layout::read_cluster_file(&dir)?;
    let slots = match &previous {
        Some(file) => {
            if file.managers.len() != usize::from(args.managers) {
                return Err(DevError::Existing {
                    dir: dir.clone(),
                    reason: format!(
                        "holds a cluster of {} managers; run with --managers {} or choose another --dir",
                        file.managers.len(),
                        file.managers.len()
                    ),
                });
            }
            let slots = layout::previous_slots(&dir, file)?;
            if let Some(missing) = slots.iter().find(|s| !s.data_dir.exists()) {
                // Started without its data, it would bootstrap a second, separate cluster.
                return Err(DevError::Existing {
                    dir: dir.clone(),
                    reason: format!(
                        "cluster.json lists {} but it is gone; remove {} to start a new cluster",
                        missing.data_dir.display(),
                        dir.display()
                    ),
                });
            }
            slots
        }
        None => {
            if dir.join("m1").exists() {
                return Err(DevError::Existing {
                    dir: dir.clone(),
                    reason: "holds manager data but no cluster.json (an interrupted start?); remove it or choose another --dir".into(),
                });
            }
            layout::fresh_slots(&dir, usize::from(args.managers))?
        }
    };

    tokio::pin!(shutdown);
    let logs = dir.join("logs");
    let hosts = if args.hosts > 0 {
        let created = hosts::Hosts::create(usize::from(args.hosts), &logs);
        tokio::select! {
            created = created => Some(created?),
            _ = &mut shutdown => return Ok(()),
        }
    } else {
        None
    };
    let started = Started {
        dir: &dir,
        exe: &exe,
        slots: &slots,
        previous,
        hosts: hosts.as_ref(),
    };
    let result = run_with(args, started, nginx, shutdown).await;
    if let Some(hosts) = hosts {
        // Stopping the engines and their containers blocks (and waits): off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || drop(hosts)).await;
    }
    result
}

/// What `run` prepared before starting any process.
struct Started<'a> {
    dir: &'a Path,
    exe: &'a Path,
    slots: &'a [Slot],
    previous: Option<ClusterFile>,
    hosts: Option<&'a hosts::Hosts>,
}

/// `run` once the hosts (if any) are up.
async fn run_with(
    args: DevArgs,
    started: Started<'_>,
    nginx: Option<PathBuf>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<(), DevError> {
    let Started {
        dir,
        exe,
        slots,
        previous,
        hosts,
    } = started;
    let mut agent_slots = layout::agent_slots(dir, args.agents);
    if let Some(hosts) = hosts {
        let list: Vec<_> = hosts
            .hosts()
            .iter()
            .map(|h| (h.name.clone(), h.ip, h.docker_host()))
            .collect();
        agent_slots.extend(layout::host_agent_slots(dir, &list));
    }
    let proxy_slot = match &nginx {
        Some(nginx) => {
            let previous = previous.as_ref().and_then(|f| f.proxy.as_ref());
            Some((nginx.as_path(), ProxySlot::new(dir, previous)?))
        }
        None => None,
    };
    let proxy = proxy_slot.as_ref().map(|(nginx, slot)| (*nginx, slot));

    let mut group = Group::new();
    let started = tokio::select! {
        started = start(exe, slots, &agent_slots, proxy, previous.as_ref(), &mut group) => started,
        _ = &mut shutdown => {
            group.stop().await;
            return Ok(());
        }
    };
    let mut file = match started {
        Ok(file) => file,
        Err(e) => {
            group.stop().await;
            return Err(e);
        }
    };
    if let Some(hosts) = hosts {
        file.hosts = hosts
            .hosts()
            .iter()
            .map(|h| layout::HostEntry {
                name: h.name.clone(),
                docker_host: h.docker_host(),
                addr: h.ip.to_string(),
                netns: h.ns.clone(),
                dockerd_pid: h.dockerd_pid().unwrap_or(0),
                dockerd_log: h.log.clone(),
            })
            .collect();
    }
    let path = layout::write_cluster_file(dir, &file)?;
    print_summary(&file, slots, &path);

    let managers: Vec<String> = file.managers.iter().map(|m| m.grpc.clone()).collect();
    let mut images = hosts.map(|h| images::Sync::new(h, client_config(managers, &file.tls_dir)));
    let mut tick = tokio::time::interval(images::SYNC_EVERY);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick(), if images.is_some() => {
                if let Some(sync) = images.as_mut() {
                    sync.run().await;
                }
            }
            (index, status) = group.next_exit() => {
                let p = group.get(index);
                eprintln!(
                    "shoal dev: {} {} (pid {}) exited unexpectedly ({status}); see {}. The others keep running.",
                    p.kind, p.name, p.pid, p.log.display()
                );
                // Agents alone cannot do anything: no manager left is the end.
                if group.alive_of("manager") == 0 {
                    return Err(DevError::AllExited { logs: dir.join("logs") });
                }
            }
        }
    }
    let (alive_managers, alive_agents) = (group.alive_of("manager"), group.alive_of("agent"));
    let plural = |n: usize| if n == 1 { "" } else { "s" };
    let proxy = match group.alive_of("nginx") + group.alive_of("proxy") {
        0 => "",
        _ => " and the proxy",
    };
    let hosts = match file.hosts.len() {
        0 => String::new(),
        n => format!(" and {n} host{}", plural(n)),
    };
    eprintln!(
        "shoal dev: stopping {alive_managers} manager{}, {alive_agents} agent{}{proxy}{hosts}",
        plural(alive_managers),
        plural(alive_agents)
    );
    group.stop().await;
    Ok(())
}

/// Starts every manager and waits until all of them are voters. A fresh cluster: m1 bootstraps,
/// then each other manager joins it in turn. A previous one: all restart from their data dirs.
/// Then starts the agents, joined to every manager, and waits until each is a READY node; then
/// nginx (`proxy`: its binary and slot) and its `shoal proxy`.
async fn start(
    exe: &Path,
    slots: &[Slot],
    agent_slots: &[layout::AgentSlot],
    proxy: Option<(&Path, &ProxySlot)>,
    previous: Option<&ClusterFile>,
    group: &mut Group,
) -> Result<ClusterFile, DevError> {
    let token = match previous {
        Some(file) => {
            for slot in slots {
                group.spawn("manager", &slot.name, exe, &slot.manager_args(), &slot.log)?;
            }
            file.token.clone()
        }
        None => {
            let first = &slots[0];
            let index = group.spawn(
                "manager",
                &first.name,
                exe,
                &first.manager_args(),
                &first.log,
            )?;
            let token = wait_for_token(first, index, group).await?;
            wait_for_voters(first, index, group, &slots[..1], 1, slots).await?;
            for (i, slot) in slots.iter().enumerate().skip(1) {
                let mut args = slot.manager_args();
                args.extend([
                    "--join".into(),
                    first.grpc.to_string(),
                    "--token".into(),
                    token.clone(),
                ]);
                let index = group.spawn("manager", &slot.name, exe, &args, &slot.log)?;
                wait_for_voters(slot, index, group, slots, i + 1, slots).await?;
            }
            token
        }
    };
    let status = wait_for_voters(&slots[0], 0, group, slots, slots.len(), slots).await?;
    let tls_dir = tls_dir(slots);
    let managers = slots
        .iter()
        .enumerate()
        .map(|(i, slot)| ManagerEntry {
            id: status
                .members
                .iter()
                .find(|m| m.addr == slot.grpc.to_string())
                .map_or(0, |m| m.id),
            pid: group.get(i).pid,
            grpc: slot.grpc.to_string(),
            docker_api: slot.docker_api.to_string(),
            http: slot.http.to_string(),
            data_dir: slot.data_dir.clone(),
        })
        .collect();
    let grpc: Vec<String> = slots.iter().map(|s| s.grpc.to_string()).collect();
    let agents = agents::start(exe, agent_slots, &grpc, &token, &tls_dir, group).await?;
    let proxy = match proxy {
        Some((nginx, slot)) => {
            let entry = proxy::start(exe, nginx, slot, &grpc, &token, &tls_dir, group).await?;
            Some(serde_json::to_value(entry).expect("plain data"))
        }
        None => None,
    };
    Ok(ClusterFile {
        token,
        tls_dir,
        managers,
        agents,
        hosts: Vec::new(),
        proxy,
    })
}

/// The first manager's credentials (`DATA_DIR/tls`): the CLI and `shoal dev` itself use them.
fn tls_dir(slots: &[Slot]) -> PathBuf {
    crate::security::local::tls_dir(&slots[0].data_dir)
}

/// A client of `managers` presenting the credentials in `tls_dir` (none yet: connecting fails,
/// and the caller's loop tries again).
pub(crate) fn client_config(managers: Vec<String>, tls_dir: &Path) -> ClientConfig {
    let mut config = ClientConfig::new(managers);
    if let Ok(creds) = shoal_tls::Credentials::load_dir(tls_dir) {
        config = config.with_tls(creds);
    }
    config.connect_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(5);
    config
}

/// Waits for the bootstrapping manager to write its manager join token (it joins any node role).
async fn wait_for_token(slot: &Slot, index: usize, group: &mut Group) -> Result<String, DevError> {
    let path = crate::security::local::token_file(&slot.data_dir, shoal_tls::Role::Manager);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(token) = std::fs::read_to_string(&path) {
            let token = token.trim();
            if !token.is_empty() {
                return Ok(token.to_string());
            }
        }
        check_alive(slot, index, group)?;
        if tokio::time::Instant::now() >= deadline {
            return Err(timeout(slot, "write its join token"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until some manager of `ask` reports a leader and at least `voters` voters, and the
/// manager being started (`index`) is still alive.
async fn wait_for_voters(
    slot: &Slot,
    index: usize,
    group: &mut Group,
    ask: &[Slot],
    voters: usize,
    all: &[Slot],
) -> Result<shoal_proto::v1::StatusResponse, DevError> {
    let addrs: Vec<String> = ask.iter().map(|s| s.grpc.to_string()).collect();
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        check_alive(slot, index, group)?;
        // Read again each round: the first manager writes its credentials as it starts.
        let config = client_config(addrs.clone(), &tls_dir(all));
        if let Ok(mut client) = Client::connect(config).await {
            if let Ok(status) = client.status().await {
                let count = status.members.iter().filter(|m| m.voter).count();
                if status.leader_id != 0 && count >= voters {
                    return Ok(status);
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(timeout(slot, "become a voter"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_alive(slot: &Slot, index: usize, group: &mut Group) -> Result<(), DevError> {
    match group.exited(index) {
        None => Ok(()),
        Some(status) => Err(DevError::ExitedEarly {
            kind: "manager",
            name: slot.name.clone(),
            status,
            last_log_line: procs::last_log_line(&slot.log),
            log: slot.log.clone(),
        }),
    }
}

fn timeout(slot: &Slot, what: &'static str) -> DevError {
    DevError::StartTimeout {
        kind: "manager",
        name: slot.name.clone(),
        what,
        waited: START_TIMEOUT,
        log: slot.log.clone(),
    }
}

fn print_summary(file: &ClusterFile, slots: &[Slot], path: &Path) {
    println!(
        "shoal dev: {} managers running (Ctrl-C stops them)",
        file.managers.len()
    );
    for (m, slot) in file.managers.iter().zip(slots) {
        println!(
            "  {}  id {}  pid {}  grpc {}  http {}  docker-api {}  log {}",
            slot.name,
            m.id,
            m.pid,
            m.grpc,
            m.http,
            m.docker_api,
            slot.log.display()
        );
    }
    if !file.agents.is_empty() {
        let n = file.agents.len();
        println!("{n} agent{} running", if n == 1 { "" } else { "s" });
    }
    for a in &file.agents {
        println!(
            "  {}  pid {}  addr {}  log {}",
            a.name,
            a.pid,
            a.addr,
            a.log.display()
        );
    }
    let proxy = file.proxy.clone().map(serde_json::from_value::<ProxyEntry>);
    if let Some(Ok(p)) = proxy {
        println!("proxy running: nginx on http://127.0.0.1:{}", p.port);
        println!(
            "  nginx  pid {}  config {}  log {}",
            p.nginx_pid,
            p.config.display(),
            p.nginx_log.display()
        );
        println!("  {}  pid {}  log {}", p.name, p.pid, p.log.display());
    }
    if !file.hosts.is_empty() {
        let n = file.hosts.len();
        println!(
            "{n} host{} running (network namespaces with their own engine; `docker` reaches one with DOCKER_HOST)",
            if n == 1 { "" } else { "s" }
        );
    }
    for h in &file.hosts {
        println!(
            "  {}  addr {}  netns {}  dockerd pid {}  log {}",
            h.name,
            h.addr,
            h.netns,
            h.dockerd_pid,
            h.dockerd_log.display()
        );
        println!("      DOCKER_HOST={}", h.docker_host);
    }
    println!("join token (manager; joins any node role): {}", file.token);
    println!("credentials: {}", file.tls_dir.display());
    println!("cluster file: {}", path.display());
    println!();
    let hosts: Vec<&str> = file.managers.iter().map(|m| m.grpc.as_str()).collect();
    println!("export SHOAL_HOST={}", hosts.join(","));
    println!("export SHOAL_TLS_DIR={}", file.tls_dir.display());
}
