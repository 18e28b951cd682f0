//! `shoal-bench failover`: repair times with real agents on the machine's Docker engine.
//! - node loss: kill -9 the agent of the node that runs the service's tasks and force-remove its
//!   containers; time until the service again has all its replicas RUNNING on the other node;
//! - leader loss: kill -9 the leader; time until a survivor acknowledges the first client write
//!   (a scale issued right after the kill, retried every 10 ms), and until the next scheduling
//!   write, that is until the task that scale created is ASSIGNED by the new leader's scheduler;
//! - leader stop: the same with SIGTERM, after which the leader hands leadership over;
//! - and from the new leaders' logs, their time from election to their scheduler's first plan.
//!
//! Each trial restores the cluster (agent or manager restarted) before the next. Figures are
//! p50/p99 over the trials, as a table and JSON.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use serde_json::Value;
use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::kv_client::KvClient;
use shoal_proto::v1::{request_op, PutRequest, RangeRequest, RequestOp, TxnRequest};
use shoal_tls::Credentials;
use tokio::time::Instant;

use crate::cluster::{self, Cluster};
use crate::report::Header;

#[derive(Debug, Args)]
pub(crate) struct FailoverArgs {
    /// Trials of each kind.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Replicas of the service whose tasks are moved.
    #[arg(long, default_value_t = 4)]
    replicas: u64,
    /// Image the service runs; it must be in the local engine (`deploy/images/build`).
    #[arg(long, default_value = "shoal/whoami:latest")]
    image: String,
    /// The `shoal` binary (default: `shoal` next to this one).
    #[arg(long)]
    shoal_bin: Option<PathBuf>,
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    dir: PathBuf,
}

#[derive(Debug, Serialize)]
pub(crate) struct Figures {
    pub(crate) trials: usize,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) all_ms: Vec<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    #[serde(flatten)]
    header: Header,
    node_loss: Figures,
    leader_loss: Figures,
    /// From the leader's kill to the first client write a survivor acknowledged.
    leader_loss_first_write: Figures,
    /// The same two times when the leader is stopped (SIGTERM: it hands leadership over).
    leader_stop: Figures,
    leader_stop_first_write: Figures,
    /// The new leader's own time from its election to its scheduler's first plan (its log).
    first_plan: Figures,
}

/// How a leader trial takes the leader away.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// kill -9.
    Kill,
    /// SIGTERM, a graceful stop.
    Stop,
}

/// Times of the leader trials of one kind, in ms.
#[derive(Debug, Default)]
struct LeaderTrials {
    /// Until the first client write a survivor acknowledged.
    first_write: Vec<f64>,
    /// Until the task that write created is ASSIGNED by the new leader's scheduler.
    scheduled: Vec<f64>,
    /// The new leader's election to its scheduler's first plan.
    first_plan: Vec<f64>,
}

/// A `shoal agent` child in its own process group.
pub(crate) struct Agent {
    pub(crate) name: String,
    pub(crate) args: Vec<String>,
    pub(crate) log: PathBuf,
    pub(crate) data_dir: PathBuf,
    pub(crate) child: Option<Child>,
}

impl Agent {
    pub(crate) fn spawn(&mut self, exe: &Path) -> Result<()> {
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let err = out.try_clone()?;
        self.child = Some(
            Command::new(exe)
                .args(&self.args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting agent {}", self.name))?,
        );
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    fn node_id(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("node_id"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    /// Force-removes the node's containers: the node died with them.
    fn remove_containers(&self) {
        remove_labelled(&format!("shoal.node={}", self.node_id()));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
        self.remove_containers();
    }
}

/// Force-removes (with their volumes) the local engine's containers labelled `label`.
pub(crate) fn remove_labelled(label: &str) {
    let Ok(out) = Command::new("docker")
        .args(["ps", "-aq", "--filter", &format!("label={label}")])
        .output()
    else {
        return;
    };
    let ids = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(&ids)
            .output();
    }
}

/// Starts `n` agents `node-1..` with data dirs and logs under `dir`, each advertising its own
/// 127.0.0.(i+1).
pub(crate) fn start_agents(
    exe: &Path,
    dir: &Path,
    join: &str,
    token: &str,
    n: usize,
) -> Result<Vec<Agent>> {
    let mut agents = Vec::with_capacity(n);
    for i in 1..=n {
        let name = format!("node-{i}");
        let data_dir = dir.join(&name);
        let mut agent = Agent {
            args: vec![
                "agent".into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--join".into(),
                join.to_string(),
                "--token".into(),
                token.to_string(),
                "--name".into(),
                name.clone(),
                "--advertise-addr".into(),
                format!("127.0.0.{}", i + 1),
            ],
            log: dir.join(format!("{name}.log")),
            data_dir,
            name,
            child: None,
        };
        agent.spawn(exe)?;
        agents.push(agent);
    }
    Ok(agents)
}

/// Every record under a prefix, as JSON, read from the first manager that answers.
async fn read(
    addrs: &[std::net::SocketAddr],
    tls: &Credentials,
    prefix: &str,
) -> Result<Vec<(Value, u64)>> {
    let mut last = None;
    for addr in addrs {
        let attempt = async {
            let endpoint = cluster::endpoint(*addr)?
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_secs(2));
            let channel = cluster::connect(endpoint, tls).await?;
            let resp = KvClient::new(channel)
                .range(RangeRequest {
                    key: prefix.as_bytes().to_vec(),
                    prefix: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            anyhow::Ok(
                resp.kvs
                    .into_iter()
                    .filter_map(|kv| {
                        Some((serde_json::from_slice(&kv.value).ok()?, kv.mod_revision))
                    })
                    .collect(),
            )
        };
        match attempt.await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no manager")))
}

/// Tasks meant to run and RUNNING, by node id.
async fn running_by_node(
    addrs: &[std::net::SocketAddr],
    tls: &Credentials,
) -> Result<BTreeMap<String, usize>> {
    let mut by_node = BTreeMap::new();
    for (t, _) in read(addrs, tls, "/shoal/tasks/").await? {
        if t["state"] == "running" && t["desired_state"] == "running" {
            *by_node
                .entry(t["node_id"].as_str().unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
    }
    Ok(by_node)
}

async fn wait<F, Fut>(what: &str, within: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(crate) async fn run(args: FailoverArgs) -> Result<()> {
    let exe = cluster::shoal_exe(args.shoal_bin.as_deref())?;
    let dir = tempfile::Builder::new()
        .prefix("shoal-bench-failover-")
        .tempdir_in(&args.dir)?;
    let mut cluster = Cluster::start(&exe, dir.path(), 3).await?;
    let addrs = cluster.addrs();
    let tls = cluster.tls().clone();
    let join = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut agents = start_agents(&exe, dir.path(), &join, cluster.token(), 2)?;
    let replicas = args.replicas.to_string();
    let created = Command::new(&exe)
        .args(["--host", &join])
        .arg("--tls-dir")
        .arg(cluster.tls_dir())
        .args(["service", "create", "--name", "web"])
        .args(["--replicas", &replicas, "-p", "80", &args.image])
        .output()?;
    if !created.status.success() {
        bail!(
            "service create failed: {}",
            String::from_utf8_lossy(&created.stderr).trim()
        );
    }
    let n = args.replicas as usize;
    wait("the service to run", Duration::from_secs(60), || async {
        running_by_node(&addrs, &tls)
            .await
            .is_ok_and(|m| m.values().sum::<usize>() == n)
    })
    .await?;

    let mut node_loss = Vec::new();
    for trial in 0..args.trials {
        let by_node = running_by_node(&addrs, &tls).await?;
        // The victim is the agent whose node runs the most tasks.
        let victim = (0..agents.len())
            .max_by_key(|&i| by_node.get(&agents[i].node_id()).copied().unwrap_or(0))
            .unwrap_or(0);
        let victim_id = agents[victim].node_id();
        let start = Instant::now();
        agents[victim].kill();
        agents[victim].remove_containers();
        wait("replacements", Duration::from_secs(60), || async {
            running_by_node(&addrs, &tls)
                .await
                .is_ok_and(|m| m.values().sum::<usize>() == n && !m.contains_key(&victim_id))
        })
        .await?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        eprintln!("node loss trial {}: {ms:.0} ms", trial + 1);
        node_loss.push(ms);
        agents[victim].spawn(&exe)?;
        wait("the node to come back", Duration::from_secs(60), || async {
            read(&addrs, &tls, "/shoal/nodes/")
                .await
                .is_ok_and(|nodes| {
                    nodes.iter().filter(|(n, _)| n["status"] == "ready").count() == agents.len()
                })
        })
        .await?;
    }

    let mut kill = LeaderTrials::default();
    let mut stop = LeaderTrials::default();
    for trial in 0..args.trials {
        for (how, trials) in [(Loss::Kill, &mut kill), (Loss::Stop, &mut stop)] {
            leader_trial(&exe, &mut cluster, how, n, trials).await?;
            eprintln!(
                "{how:?} trial {}: first write {:.0} ms, next scheduling write {:.0} ms",
                trial + 1,
                trials.first_write.last().unwrap_or(&0.0),
                trials.scheduled.last().unwrap_or(&0.0)
            );
        }
    }

    let report = Report {
        header: Header::new("failover", &args.dir),
        node_loss: figures(node_loss),
        leader_loss: figures(kill.scheduled),
        leader_loss_first_write: figures(kill.first_write),
        leader_stop: figures(stop.scheduled),
        leader_stop_first_write: figures(stop.first_write),
        first_plan: figures(kill.first_plan.into_iter().chain(stop.first_plan).collect()),
    };
    println!("| repair | trials | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, f) in [
        ("node loss → replacements RUNNING", &report.node_loss),
        (
            "leader loss → first acknowledged write",
            &report.leader_loss_first_write,
        ),
        ("leader loss → next scheduling write", &report.leader_loss),
        (
            "leader stop → first acknowledged write",
            &report.leader_stop_first_write,
        ),
        ("leader stop → next scheduling write", &report.leader_stop),
        (
            "new leader: elected → first scheduler plan",
            &report.first_plan,
        ),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.0} | {:.0} |",
            f.trials, f.p50_ms, f.p99_ms, f.max_ms
        );
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    drop(agents);
    Ok(())
}

/// Takes the leader away (`how`), scales the service up by one through a survivor right away,
/// times the first acknowledged write and the scheduling of the task it created, then restores
/// the service and the manager.
async fn leader_trial(
    exe: &Path,
    cluster: &mut Cluster,
    how: Loss,
    n: usize,
    trials: &mut LeaderTrials,
) -> Result<()> {
    let addrs = cluster.addrs();
    let tls = cluster.tls().clone();
    let leader = leader_index(&addrs, &tls).await?;
    let survivors: Vec<(usize, std::net::SocketAddr)> = addrs
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .collect();
    let survivor_addrs: Vec<std::net::SocketAddr> = survivors.iter().map(|(_, a)| *a).collect();
    let (service, _) = read(&survivor_addrs, &tls, "/shoal/services/")
        .await?
        .into_iter()
        .next()
        .context("the service is gone")?;
    let before: Vec<String> = read(&survivor_addrs, &tls, "/shoal/tasks/")
        .await?
        .into_iter()
        .filter_map(|(t, _)| Some(t["id"].as_str()?.to_string()))
        .collect();
    let log_lengths: Vec<u64> = survivors
        .iter()
        .map(|(i, _)| std::fs::metadata(cluster.log(*i)).map_or(0, |m| m.len()))
        .collect();
    let start = Instant::now();
    match how {
        Loss::Kill => cluster.kill(leader),
        Loss::Stop => cluster.stop(leader),
    }
    // Scale up by one through a survivor, as soon as one takes the write.
    let mut scaled = service.clone();
    scaled["replicas"] = (n as u64 + 1).into();
    let key = format!("/shoal/services/{}", service["id"].as_str().unwrap_or(""));
    let value = serde_json::to_vec(&scaled)?;
    'write: loop {
        for addr in &survivor_addrs {
            if put(*addr, &tls, &key, &value).await.is_ok() {
                break 'write;
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("no manager took the scale write");
        }
        // Not a hot loop: the survivors need the CPU for their election.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    trials
        .first_write
        .push(start.elapsed().as_secs_f64() * 1000.0);
    wait(
        "the new task to be assigned",
        Duration::from_secs(60),
        || async {
            read(&survivor_addrs, &tls, "/shoal/tasks/")
                .await
                .is_ok_and(|tasks| {
                    tasks.iter().any(|(t, _)| {
                        !before.iter().any(|b| t["id"] == b.as_str())
                            && t["state"] != "pending"
                            && t["state"] != "new"
                    })
                })
        },
    )
    .await?;
    trials
        .scheduled
        .push(start.elapsed().as_secs_f64() * 1000.0);
    for ((i, _), from) in survivors.iter().zip(log_lengths) {
        if let Some(ms) = first_plan_ms(cluster.log(*i), from) {
            trials.first_plan.push(ms);
        }
    }
    // Back to n replicas, and the manager that was taken away back in the cluster.
    put(
        survivor_addrs[0],
        &tls,
        &key,
        &serde_json::to_vec(&service)?,
    )
    .await?;
    cluster.restart(exe, leader).await?;
    wait("the service to settle", Duration::from_secs(60), || async {
        running_by_node(&addrs, &tls)
            .await
            .is_ok_and(|m| m.values().sum::<usize>() == n)
    })
    .await?;
    Ok(())
}

/// The `ms=` of the scheduler's "first plan of this term" line a manager logged after byte
/// `from` of its log.
fn first_plan_ms(log: &Path, from: u64) -> Option<f64> {
    use std::io::{Read, Seek};
    let mut file = std::fs::File::open(log).ok()?;
    file.seek(std::io::SeekFrom::Start(from)).ok()?;
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    text.lines()
        .filter(|l| l.contains("first plan of this term") && l.contains("scheduler"))
        .find_map(|l| {
            let rest = &l[l.find(" ms=")? + 4..];
            rest.split_whitespace().next()?.parse().ok()
        })
}

/// Writes a cluster object at `key` the way `shoal service scale` does (`Cluster.CommitObjects`:
/// users' KV writes never reach `/shoal/`).
async fn put(addr: std::net::SocketAddr, tls: &Credentials, key: &str, value: &[u8]) -> Result<()> {
    let endpoint = cluster::endpoint(addr)?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_secs(3));
    let channel = cluster::connect(endpoint, tls).await?;
    let put = PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.to_vec(),
        ..Default::default()
    };
    ClusterClient::new(channel)
        .commit_objects(TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::Put(put)),
            }],
            ..Default::default()
        })
        .await?;
    Ok(())
}

pub(crate) async fn leader_index(
    addrs: &[std::net::SocketAddr],
    tls: &Credentials,
) -> Result<usize> {
    for _ in 0..100 {
        for (i, addr) in addrs.iter().enumerate() {
            if let Ok(s) = cluster::status(*addr, tls).await {
                if s.leader_id != 0 && s.leader_id == s.member_id {
                    return Ok(i);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no leader")
}

/// Nearest-rank percentiles.
pub(crate) fn figures(mut all: Vec<f64>) -> Figures {
    all.sort_by(f64::total_cmp);
    let pick = |p: f64| {
        if all.is_empty() {
            return 0.0;
        }
        let rank = ((p * all.len() as f64).ceil() as usize).clamp(1, all.len());
        all[rank - 1]
    };
    Figures {
        trials: all.len(),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: all.last().copied().unwrap_or(0.0),
        all_ms: all,
    }
}
