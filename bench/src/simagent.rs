//! Simulated agents, a test double for `shoal agent`: many nodes in one process, multiplexed over
//! a few gRPC connections to the leader, speaking the real agent protocol (`shoal.v1.Dispatcher`:
//! Register, Heartbeat, the Assignments stream, UpdateTaskStatus) and running nothing. A node
//! acknowledges each task it is assigned at once: it reports it RUNNING in the next batch, as the
//! real agent's session does when its task runner has reported ACCEPTED, STARTING and RUNNING
//! before the batch leaves (the session keeps only the furthest state per task).
//! Never use it for anything but load: no container exists behind a RUNNING it reports.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;
use shoal_proto::v1::dispatcher_client::DispatcherClient;
use shoal_proto::v1::{
    AssignmentSet, AssignmentsRequest, HeartbeatRequest, RegisterRequest, UpdateTaskStatusRequest,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

/// Metadata key carrying the cluster's join token.
const TOKEN_HEADER: &str = "x-shoal-token";
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
    pub(crate) nodes: usize,
    /// Node sessions per gRPC connection (HTTP/2 streams: one assignment stream per node).
    pub(crate) nodes_per_connection: usize,
    pub(crate) heartbeat_ms: u64,
    /// Images every node claims to have (the scheduler places only where the image is).
    pub(crate) images: Vec<String>,
}

/// The running simulated nodes; dropping it stops every session.
pub(crate) struct SimAgents {
    pub(crate) counters: Arc<Counters>,
    tasks: JoinSet<()>,
}

impl SimAgents {
    /// Registers `config.nodes` nodes (`sim-00001`...) with the leader at `leader`, then keeps
    /// each one's heartbeats, assignment stream and reports going. Returns once every node is
    /// registered.
    pub(crate) async fn start(
        leader: SocketAddr,
        token: &str,
        config: SimConfig,
    ) -> Result<SimAgents> {
        let token: MetadataValue<Ascii> = token.parse().context("the join token")?;
        let conns = config
            .nodes
            .div_ceil(config.nodes_per_connection.max(1))
            .max(1);
        let mut channels = Vec::with_capacity(conns);
        for _ in 0..conns {
            channels.push(
                Endpoint::from_shared(format!("http://{leader}"))?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("connecting to the leader at {leader}"))?,
            );
        }
        let counters = Arc::new(Counters::default());
        let mut tasks = JoinSet::new();
        let (registered_tx, mut registered_rx) = mpsc::channel::<Result<(), String>>(64);
        for i in 0..config.nodes {
            let client = DispatcherClient::new(channels[i % conns].clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            let node = Node {
                id: format!("sim-{:05}", i + 1),
                client,
                token: token.clone(),
                counters: counters.clone(),
                config: config.clone(),
            };
            tasks.spawn(node.run(registered_tx.clone()));
        }
        drop(registered_tx);
        for _ in 0..config.nodes {
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
    token: MetadataValue<Ascii>,
    counters: Arc<Counters>,
    config: SimConfig,
}

impl Node {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        r.metadata_mut().insert(TOKEN_HEADER, self.token.clone());
        r
    }

    async fn register(&mut self) -> Result<(), String> {
        let req = self.request(RegisterRequest {
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
        let stream = self.request(AssignmentsRequest {
            node_id: self.id.clone(),
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

    async fn heartbeat(&self) {
        let mut client = self.client.clone();
        let period = Duration::from_millis(self.config.heartbeat_ms);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let req = self.request(HeartbeatRequest {
                node_id: self.id.clone(),
                ..Default::default()
            });
            match tokio::time::timeout(CALL_TIMEOUT, client.heartbeat(req)).await {
                Ok(Ok(_)) => self.counters.heartbeats.fetch_add(1, Ordering::Relaxed),
                _ => self
                    .counters
                    .heartbeat_errors
                    .fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Reports RUNNING, in one batch per round, every task that arrived ASSIGNED.
    async fn report(&self, mut sets: mpsc::UnboundedReceiver<Vec<TaskHead>>) {
        let mut client = self.client.clone();
        let mut done: HashSet<String> = HashSet::new();
        while let Some(mut set) = sets.recv().await {
            // Only the latest set matters; the ones queued behind it are older.
            while let Ok(newer) = sets.try_recv() {
                set = newer;
            }
            let batch: Vec<String> = set
                .into_iter()
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
            let req = self.request(UpdateTaskStatusRequest {
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

/// Decodes each assignment set's task heads and hands them to the reporter.
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
