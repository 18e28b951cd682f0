//! Simulated agents, a test double for `shoal agent`: many nodes in one process, each with its
//! own worker certificate and its own mutual-TLS connection to the leader (the dispatcher takes
//! a node's identity from the certificate of the connection, so nodes cannot share one), speaking
//! the real agent protocol (`shoal.v1.Dispatcher`: Register, Heartbeat, the Assignments stream,
//! UpdateTaskStatus) and running nothing. Each node first joins with the token (`shoal.v1.Ca/Join`)
//! for a certificate named by its node id, as `shoal agent` does; unlike `shoal agent` it trusts
//! the roots of the bench's own (manager) credentials instead of fetching and pinning them. A node
//! acknowledges each task it is assigned at once: it reports it RUNNING in the next batch, as the
//! real agent's session does when its task runner has reported ACCEPTED, STARTING and RUNNING
//! before the batch leaves (the session keeps only the furthest state per task).
//! Never use it for anything but load: no container exists behind a RUNNING it reports.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use shoal_proto::v1::ca_client::CaClient;
use shoal_proto::v1::dispatcher_client::DispatcherClient;
use shoal_proto::v1::{
    AssignmentSet, AssignmentsRequest, CaJoinRequest, HeartbeatRequest, RegisterRequest,
    UpdateTaskStatusRequest,
};
use shoal_tls::token::JoinToken;
use shoal_tls::{Credentials, Role};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::cluster;

/// Joins in flight at once (each costs the CA a signature).
const JOINS_AT_ONCE: usize = 16;
/// Assignment sets of nodes with many tasks are large.
const MAX_MESSAGE: usize = 256 * 1024 * 1024;
/// Bound on a unary call; a slow leader shows up as errors in the counters.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// What the simulated nodes have done so far, summed over all of them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) registered: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
    pub(crate) heartbeat_errors: AtomicU64,
    pub(crate) assignment_sets: AtomicU64,
    /// Tasks reported RUNNING and applied by the leader.
    pub(crate) reported: AtomicU64,
    pub(crate) report_errors: AtomicU64,
    pub(crate) stream_errors: AtomicU64,
    /// The latest failure, to say what went wrong.
    pub(crate) last_error: std::sync::Mutex<String>,
}

impl Counters {
    fn failed(&self, counter: &AtomicU64, what: String) {
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = what;
        }
    }

    pub(crate) fn last_error(&self) -> String {
        self.last_error
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
    }
}

/// How the simulated nodes present themselves.
#[derive(Debug, Clone)]
pub(crate) struct SimConfig {
    pub(crate) heartbeat_ms: u64,
    /// Images every node claims to have (the scheduler places only where the image is).
    pub(crate) images: Vec<String>,
}

/// The running simulated nodes; dropping it stops every session.
pub(crate) struct SimAgents {
    pub(crate) counters: Arc<Counters>,
    tasks: JoinSet<()>,
}

/// Worker certificates for nodes `sim-00001`... (one join each through the manager at `addr`
/// with `token`), in node order.
pub(crate) async fn join_all(
    addr: SocketAddr,
    trust: &Credentials,
    token: &str,
    nodes: usize,
) -> Result<Vec<Credentials>> {
    let token = JoinToken::parse(token).context("the join token")?;
    // No certificate to present yet: only the cluster's roots, to check the manager's.
    let anonymous = Credentials::new(trust.cluster_id(), &trust.roots_pem())?;
    let endpoint = cluster::endpoint(addr)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(CALL_TIMEOUT)
        .tcp_nodelay(true);
    let ca = CaClient::new(
        cluster::connect(endpoint, &anonymous)
            .await
            .with_context(|| format!("connecting to {addr} to join"))?,
    );
    let slots = Arc::new(Semaphore::new(JOINS_AT_ONCE));
    let mut joins = JoinSet::new();
    for i in 0..nodes {
        let (mut ca, secret, slots) = (ca.clone(), token.secret.clone(), slots.clone());
        joins.spawn(async move {
            let _slot = slots.acquire_owned().await?;
            let name = node_id(i);
            let (key_pem, csr_pem) = shoal_tls::pki::signing_request()?;
            let issued = ca
                .join(CaJoinRequest {
                    secret,
                    role: Role::Worker.to_string(),
                    name: name.clone(),
                    csr_pem,
                    sans: Vec::new(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("joining as {name}: {:?}: {}", s.code(), s.message()))?
                .into_inner();
            let creds = Credentials::with_cert(&issued.roots_pem, &issued.cert_pem, &key_pem)?;
            anyhow::Ok((i, creds))
        });
    }
    let mut all: Vec<Option<Credentials>> = vec![None; nodes];
    while let Some(joined) = joins.join_next().await {
        let (i, creds) = joined??;
        all[i] = Some(creds);
    }
    Ok(all.into_iter().flatten().collect())
}

fn node_id(i: usize) -> String {
    format!("sim-{:05}", i + 1)
}

impl SimAgents {
    /// Registers one node per credentials in `nodes` (`sim-00001`..., from [`join_all`]) with
    /// the leader at `leader`, each over its own connection, then keeps each one's heartbeats,
    /// assignment stream and reports going. Returns once every node is registered.
    pub(crate) async fn start(
        leader: SocketAddr,
        nodes: Vec<Credentials>,
        config: SimConfig,
    ) -> Result<SimAgents> {
        let counters = Arc::new(Counters::default());
        let mut tasks = JoinSet::new();
        let (registered_tx, mut registered_rx) = mpsc::channel::<Result<(), String>>(64);
        let count = nodes.len();
        for (i, creds) in nodes.into_iter().enumerate() {
            // The TLS handshake is part of the connect: thousands at once take a while.
            let endpoint = cluster::endpoint(leader)?
                .connect_timeout(CALL_TIMEOUT)
                .tcp_nodelay(true);
            // Connects on the first call (Register), so that nodes connect concurrently.
            let channel = cluster::connect_lazy(endpoint, &creds);
            let client = DispatcherClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            let node = Node {
                id: node_id(i),
                client,
                counters: counters.clone(),
                config: config.clone(),
            };
            tasks.spawn(node.run(registered_tx.clone()));
        }
        drop(registered_tx);
        for _ in 0..count {
            match registered_rx.recv().await {
                Some(Ok(())) => {}
                Some(Err(e)) => anyhow::bail!("a simulated node could not register: {e}"),
                None => anyhow::bail!("simulated nodes stopped before registering"),
            }
        }
        Ok(SimAgents { counters, tasks })
    }
}

impl Drop for SimAgents {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// The fields of an assigned task the simulator needs.
#[derive(Deserialize)]
struct TaskHead {
    id: String,
    state: String,
    desired_state: String,
}

struct Node {
    id: String,
    client: DispatcherClient<Channel>,
    counters: Arc<Counters>,
    config: SimConfig,
}

impl Node {
    async fn register(&mut self) -> Result<(), String> {
        let req = tonic::Request::new(RegisterRequest {
            node_id: self.id.clone(),
            name: self.id.clone(),
            addr: "127.0.0.1".into(),
            labels: Default::default(),
            cpus: 64,
            memory_bytes: 256 << 30,
            engine_version: "simulated".into(),
            images: self.config.images.clone(),
            heartbeat_ms: self.config.heartbeat_ms,
            // A simulated node has no engine to serve.
            engine_addr: String::new(),
        });
        match tokio::time::timeout(CALL_TIMEOUT, self.client.register(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(format!("{}: {:?}: {}", self.id, s.code(), s.message())),
            Err(_) => Err(format!("{}: no answer within {CALL_TIMEOUT:?}", self.id)),
        }
    }

    async fn run(mut self, registered: mpsc::Sender<Result<(), String>>) {
        // Registration is retried a few times: a thousand at once may meet conflicts.
        let mut result = Err(String::new());
        for _ in 0..5 {
            result = self.register().await;
            if result.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let ok = result.is_ok();
        let _ = registered.send(result).await;
        if !ok {
            return;
        }
        self.counters.registered.fetch_add(1, Ordering::Relaxed);
        let stream = tonic::Request::new(AssignmentsRequest {
            node_id: self.id.clone(),
            incremental: true,
        });
        let stream = match self.client.assignments(stream).await {
            Ok(s) => s.into_inner(),
            Err(s) => {
                let what = format!("assignments: {:?}: {}", s.code(), s.message());
                self.counters.failed(&self.counters.stream_errors, what);
                return;
            }
        };
        let (sets_tx, sets_rx) = mpsc::unbounded_channel();
        tokio::join!(
            self.heartbeat(),
            receive(stream, sets_tx, &self.counters),
            self.report(sets_rx),
        );
    }

    /// Heartbeats at the period the leader answers with, as the real agent does.
    async fn heartbeat(&self) {
        let mut client = self.client.clone();
        let mut period = Duration::from_millis(self.config.heartbeat_ms);
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::time::sleep_until(next).await;
            let req = tonic::Request::new(HeartbeatRequest {
                node_id: self.id.clone(),
                ..Default::default()
            });
            match tokio::time::timeout(CALL_TIMEOUT, client.heartbeat(req)).await {
                Ok(Ok(response)) => {
                    self.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                    let told = response.into_inner().period_ms;
                    if told != 0 {
                        period = Duration::from_millis(told.clamp(10, 60_000));
                    }
                }
                _ => {
                    self.counters
                        .heartbeat_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            // A late heartbeat is not followed by a burst of catch-up ones.
            next = (next + period).max(tokio::time::Instant::now());
        }
    }

    /// Reports RUNNING, in one batch per round, every task that arrived ASSIGNED.
    async fn report(&self, mut sets: mpsc::UnboundedReceiver<Vec<TaskHead>>) {
        let mut client = self.client.clone();
        let mut done: HashSet<String> = HashSet::new();
        while let Some(mut set) = sets.recv().await {
            // Messages are changes: merge the queued ones, a task's latest head winning.
            while let Ok(newer) = sets.try_recv() {
                set.extend(newer);
            }
            let latest: HashMap<String, TaskHead> =
                set.into_iter().map(|t| (t.id.clone(), t)).collect();
            let batch: Vec<String> = latest
                .into_values()
                .filter(|t| t.state == "assigned" && t.desired_state == "running")
                .filter(|t| !done.contains(&t.id))
                .map(|t| t.id)
                .collect();
            if batch.is_empty() {
                continue;
            }
            let updates = batch
                .iter()
                .map(|id| {
                    serde_json::to_vec(&serde_json::json!({
                        "task_id": id,
                        "state": "running",
                        "message": "simulated",
                        "container_id": format!("sim-{id}"),
                    }))
                    .unwrap_or_default()
                })
                .collect();
            let req = tonic::Request::new(UpdateTaskStatusRequest {
                node_id: self.id.clone(),
                updates,
            });
            match tokio::time::timeout(CALL_TIMEOUT, client.update_task_status(req)).await {
                Ok(Ok(r)) => {
                    let applied = r.into_inner().applied;
                    self.counters
                        .reported
                        .fetch_add(u64::from(applied), Ordering::Relaxed);
                    done.extend(batch);
                }
                // The next set still shows these tasks ASSIGNED: they are sent again.
                Ok(Err(s)) => self.counters.failed(
                    &self.counters.report_errors,
                    format!("report: {:?}: {}", s.code(), s.message()),
                ),
                Err(_) => self.counters.failed(
                    &self.counters.report_errors,
                    format!("report: no answer within {CALL_TIMEOUT:?}"),
                ),
            }
        }
    }
}

/// Decodes the task heads of each message of the incremental stream (the complete set, then the
/// tasks added or changed) and hands them to the reporter.
async fn receive(
    mut stream: tonic::Streaming<AssignmentSet>,
    to: mpsc::UnboundedSender<Vec<TaskHead>>,
    counters: &Counters,
) {
    loop {
        match stream.message().await {
            Ok(Some(set)) => {
                counters.assignment_sets.fetch_add(1, Ordering::Relaxed);
                let heads = set
                    .tasks
                    .iter()
                    .filter_map(|a| serde_json::from_slice::<TaskHead>(&a.task).ok())
                    .collect();
                if to.send(heads).is_err() {
                    return;
                }
            }
            Ok(None) => {
                counters.failed(&counters.stream_errors, "assignments: stream ended".into());
                return;
            }
            Err(s) => {
                let what = format!("assignments: {:?}: {}", s.code(), s.message());
                counters.failed(&counters.stream_errors, what);
                return;
            }
        }
    }
}
