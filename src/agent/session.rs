//! The agent's session with the leader's Dispatcher: register the node, heartbeat, receive the full
//! assignment set after every change, send the task states the task runner observed. It follows
//! leadership by itself (see `follow`), pauses between failed attempts with jittered exponential
//! backoff (`backoff`), keeps unsent reports for the next leader, and gives up only when a manager
//! refuses its certificate. It never touches Docker.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::v1::dispatcher_client::DispatcherClient;
use shoal_proto::v1::{
    AssignmentSet, AssignmentsRequest, HeartbeatRequest, RegisterRequest, UpdateTaskStatusRequest,
};
use shoal_tls::Credentials;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, Instant};
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use super::backoff::Backoff;
use super::error::AgentError;
use super::follow::{Follow, Next};
use super::plan::Assignment;
use super::throttle::Throttle;
use crate::engine::EngineInfo;
use crate::model::{Service, Task, TaskStatus};

/// Metadata key in a non-leader's UNAVAILABLE answer: the leader's gRPC address, or empty.
pub(crate) const LEADER_HEADER: &str = "x-shoal-leader";
/// Bound on every unary call (and on opening the assignment stream): a dead leader is left fast.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Assignment sets can be large (a task and its service per assignment).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The latest assignment set, shared with the task runner (None until the first set arrives).
pub(crate) type Assignments = Option<Arc<Vec<Assignment>>>;

/// What the node registers as.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub node_id: String,
    pub name: String,
    pub addr: String,
    /// Where the node's engine endpoint listens (`host:port`), for the managers to forward to.
    pub engine_addr: String,
    pub labels: BTreeMap<String, String>,
    pub heartbeat: Duration,
}

/// Why a session with one manager ended.
#[derive(Debug)]
enum End {
    /// PERMISSION_DENIED / UNAUTHENTICATED (the certificate), ALREADY_EXISTS (the name): fatal.
    Refused(String),
    /// The manager is not the leader; it named the leader, or None.
    NotLeader(Option<String>),
    /// The leader does not know the node (any more): register again.
    NotRegistered,
    /// Anything else: unreachable, timed out, stream closed.
    Failed(String),
}

pub(crate) struct Session {
    me: Identity,
    tls: Option<Credentials>,
    follow: Follow,
    /// Pauses between failed attempts.
    backoff: Backoff,
    /// The heartbeat period in force: the configured one until a leader sets another.
    period: Duration,
    channels: HashMap<String, Channel>,
    engine: watch::Receiver<EngineInfo>,
    assignments: watch::Sender<Assignments>,
    reports: mpsc::UnboundedReceiver<TaskStatus>,
    /// Reports not yet acknowledged by a leader, one per task (the furthest state wins).
    pending: BTreeMap<String, TaskStatus>,
}

impl Session {
    pub(crate) fn new(
        me: Identity,
        join: &[String],
        tls: Option<Credentials>,
        engine: watch::Receiver<EngineInfo>,
        assignments: watch::Sender<Assignments>,
        reports: mpsc::UnboundedReceiver<TaskStatus>,
    ) -> Result<Session, AgentError> {
        let mut channels = HashMap::new();
        for addr in join {
            let channel = shoal_raft::connect(addr, tls.as_ref()).map_err(|reason| {
                AgentError::BadAddress {
                    addr: addr.clone(),
                    reason,
                }
            })?;
            channels.insert(addr.clone(), channel);
        }
        let period = me.heartbeat;
        Ok(Session {
            me,
            tls,
            follow: Follow::new(join.to_vec()),
            backoff: Backoff::new(),
            period,
            channels,
            engine,
            assignments,
            reports,
            pending: BTreeMap::new(),
        })
    }

    /// Runs sessions with one manager after another; returns only when a manager refuses the token.
    pub(crate) async fn run(mut self) -> AgentError {
        let mut throttle = Throttle::default();
        loop {
            let addr = self.follow.current().to_string();
            let end = match self.channel(&addr) {
                Ok(channel) => self.session(&addr, channel, &mut throttle).await,
                Err(reason) => End::Failed(format!("invalid address: {reason}")),
            };
            let next = match end {
                End::Refused(message) => return AgentError::Refused { addr, message },
                End::NotRegistered => {
                    let line = format!("the leader at {addr} does not know this node");
                    if throttle.should_log(&line) {
                        tracing::info!("{line}; registering again");
                    }
                    Next::Pause
                }
                End::NotLeader(leader) => {
                    let leader = leader.unwrap_or_default();
                    tracing::debug!(manager = %addr, %leader, "not the leader");
                    self.follow.not_leader(Some(&leader))
                }
                End::Failed(reason) => {
                    // Keyed by the reason alone: going round the managers is one failure, not many.
                    if throttle.should_log(&reason) {
                        tracing::warn!("manager {addr}: {reason}; trying another manager");
                    }
                    self.follow.failed()
                }
            };
            if next == Next::Pause {
                // A new leader declares the node DOWN 3 periods after it took over unless it
                // hears from it: try again at least every half period (a hop may follow).
                self.backoff.cap(self.period / 2);
                sleep(self.backoff.failed(Instant::now())).await;
            }
        }
    }

    fn channel(&mut self, addr: &str) -> Result<Channel, String> {
        if let Some(channel) = self.channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = shoal_raft::connect(addr, self.tls.as_ref())?;
        self.channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    /// One session with `addr`: register, then heartbeats, assignments and reports side by side
    /// until any of them fails.
    async fn session(&mut self, addr: &str, channel: Channel, throttle: &mut Throttle) -> End {
        let mut client = DispatcherClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let caller = Caller {
            node_id: self.me.node_id.clone(),
        };
        let engine = self.engine.borrow().clone();
        let register = RegisterRequest {
            node_id: self.me.node_id.clone(),
            name: self.me.name.clone(),
            addr: self.me.addr.clone(),
            engine_addr: self.me.engine_addr.clone(),
            labels: self.me.labels.clone().into_iter().collect(),
            cpus: engine.cpus,
            memory_bytes: engine.memory_bytes,
            engine_version: engine.version.clone(),
            images: engine.images.clone(),
            heartbeat_ms: u64::try_from(self.me.heartbeat.as_millis()).unwrap_or(u64::MAX),
        };
        if let Err(end) = call(client.register(caller.request(register))).await {
            return end;
        }
        let request = caller.stream_request(AssignmentsRequest {
            node_id: self.me.node_id.clone(),
            incremental: true,
        });
        let stream = match call(client.assignments(request)).await {
            Ok(stream) => stream,
            Err(end) => return end,
        };
        self.follow.connected();
        self.backoff.connected(Instant::now());
        crate::metrics::families::AGENT_SESSIONS.inc(&[]);
        let _connected = crate::metrics::families::AGENT_CONNECTED.track(&[]);
        if throttle.clear() {
            tracing::info!(leader = %addr, node = %self.me.node_id, "registered again");
        } else {
            tracing::info!(leader = %addr, node = %self.me.node_id, "registered");
        }
        let heartbeat = heartbeat(
            client.clone(),
            caller.clone(),
            &mut self.period,
            self.engine.clone(),
            engine.images,
        );
        tokio::select! {
            end = heartbeat => end,
            end = receive(stream, &self.assignments) => end,
            end = send_reports(client, &caller, &mut self.reports, &mut self.pending) => end,
        }
    }
}

/// Puts a deadline the server sees on every request.
#[derive(Clone)]
struct Caller {
    node_id: String,
}

impl Caller {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.stream_request(message);
        request.set_timeout(CALL_TIMEOUT);
        request
    }

    /// For a stream that stays open: no deadline (a server may apply one to the whole call).
    fn stream_request<T>(&self, message: T) -> tonic::Request<T> {
        tonic::Request::new(message)
    }
}

/// One call, bounded on this side too: a manager that hangs is as good as gone.
async fn call<T>(
    response: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, End> {
    match tokio::time::timeout(CALL_TIMEOUT, response).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(classify(&status)),
        Err(_) => Err(End::Failed(format!("no answer within {CALL_TIMEOUT:?}"))),
    }
}

fn classify(status: &Status) -> End {
    if revoked(status) {
        return End::Refused(
            "this node's certificate is revoked: the node was removed from the cluster (shoal node rm)"
                .into(),
        );
    }
    match status.code() {
        // ALREADY_EXISTS: the node's name is another node's (`Register`); retrying cannot help.
        Code::PermissionDenied | Code::Unauthenticated | Code::AlreadyExists => {
            End::Refused(status.message().into())
        }
        Code::NotFound => End::NotRegistered,
        Code::Unavailable => match status.metadata().get(LEADER_HEADER) {
            Some(leader) => End::NotLeader(leader.to_str().ok().map(str::to_string)),
            None => End::Failed(describe(status)),
        },
        _ => End::Failed(describe(status)),
    }
}

/// Whether the connection failed because a manager refused this node's certificate as revoked
/// (a TLS alert, so a transport error rather than a status the manager chose).
fn revoked(status: &Status) -> bool {
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(status);
    while let Some(e) = source {
        if e.to_string().contains("CertificateRevoked") {
            return true;
        }
        source = e.source();
    }
    false
}

fn describe(status: &Status) -> String {
    if status.message().is_empty() {
        format!("{}", status.code())
    } else {
        format!("{}: {}", status.code(), status.message())
    }
}

/// Heartbeats every `period` (the leader may change it), with the image list when it changed.
async fn heartbeat(
    mut client: DispatcherClient<Channel>,
    caller: Caller,
    period: &mut Duration,
    engine: watch::Receiver<EngineInfo>,
    mut images_sent: Vec<String>,
) -> End {
    let mut next = Instant::now() + *period;
    loop {
        sleep_until(next).await;
        let images = engine.borrow().images.clone();
        let changed = images != images_sent;
        let request = HeartbeatRequest {
            node_id: caller.node_id.clone(),
            images_changed: changed,
            images: if changed { images.clone() } else { Vec::new() },
        };
        match call(client.heartbeat(caller.request(request))).await {
            Ok(response) => {
                if changed {
                    images_sent = images;
                }
                if response.period_ms != 0 {
                    *period = Duration::from_millis(response.period_ms.clamp(10, 60_000));
                }
            }
            Err(end) => return end,
        }
        // A late heartbeat is not followed by a burst of catch-up ones.
        next = (next + *period).max(Instant::now());
    }
}

/// Hands the node's set to the task runner after every message of the (incremental) stream.
async fn receive(mut stream: Streaming<AssignmentSet>, to: &watch::Sender<Assignments>) -> End {
    let mut held = Held::default();
    loop {
        match stream.message().await {
            Ok(Some(set)) => {
                // Acting on part of a set could remove the containers of the tasks left out,
                // and later changes build on this one: a message that does not decode ends the
                // stream, and the next one starts from a complete set.
                if let Err(reason) = held.apply(&set) {
                    return End::Failed(format!(
                        "an assignment message at revision {} does not decode: {reason}",
                        set.revision
                    ));
                }
                tracing::debug!(
                    revision = set.revision,
                    changes = set.changes,
                    tasks = held.tasks.len(),
                    "assignments"
                );
                to.send_replace(Some(Arc::new(held.assignments())));
            }
            Ok(None) => return End::Failed("the leader closed the assignment stream".into()),
            Err(status) => return classify(&status),
        }
    }
}

/// The node's set as an incremental assignment stream built it: tasks and services by id.
#[derive(Debug, Default)]
pub(crate) struct Held {
    tasks: BTreeMap<String, Task>,
    services: BTreeMap<String, Service>,
}

impl Held {
    /// Applies one message: a complete set replaces what is held, changes patch it. Nothing
    /// changes if any part of the message does not decode.
    pub(crate) fn apply(&mut self, set: &AssignmentSet) -> Result<(), String> {
        let mut tasks = Vec::with_capacity(set.tasks.len());
        let mut services = Vec::with_capacity(set.services.len());
        for a in &set.tasks {
            let task: Task = serde_json::from_slice(&a.task).map_err(|e| format!("task: {e}"))?;
            // A whole-set message carries each task's service with it.
            if !a.service.is_empty() {
                let service: Service = serde_json::from_slice(&a.service)
                    .map_err(|e| format!("service of task {}: {e}", task.id))?;
                services.push(service);
            }
            tasks.push(task);
        }
        for json in &set.services {
            let service: Service =
                serde_json::from_slice(json).map_err(|e| format!("service: {e}"))?;
            services.push(service);
        }
        if !set.changes {
            self.tasks.clear();
            self.services.clear();
        }
        for id in &set.removed {
            self.tasks.remove(id);
        }
        for id in &set.removed_services {
            self.services.remove(id);
        }
        self.tasks
            .extend(tasks.into_iter().map(|t| (t.id.clone(), t)));
        self.services
            .extend(services.into_iter().map(|s| (s.id.clone(), s)));
        Ok(())
    }

    /// Every held task with its service (None if the service is gone).
    pub(crate) fn assignments(&self) -> Vec<Assignment> {
        self.tasks
            .values()
            .map(|task| Assignment {
                task: task.clone(),
                service: self.services.get(&task.service_id).cloned(),
            })
            .collect()
    }
}

/// Sends pending reports in batches as they come. A report leaves `pending` only once a leader took
/// it; a failed batch stays for the next leader (reports are idempotent there).
async fn send_reports(
    mut client: DispatcherClient<Channel>,
    caller: &Caller,
    reports: &mut mpsc::UnboundedReceiver<TaskStatus>,
    pending: &mut BTreeMap<String, TaskStatus>,
) -> End {
    loop {
        if pending.is_empty() {
            match reports.recv().await {
                Some(report) => merge(pending, report),
                // The task runner is gone: the agent is stopping.
                None => std::future::pending::<()>().await,
            }
        }
        while let Ok(report) = reports.try_recv() {
            merge(pending, report);
        }
        let batch: Vec<TaskStatus> = pending.values().cloned().collect();
        let updates = batch
            .iter()
            .filter_map(|s| serde_json::to_vec(s).ok())
            .collect();
        let request = UpdateTaskStatusRequest {
            node_id: caller.node_id.clone(),
            updates,
        };
        let response = client.update_task_status(caller.request(request));
        match tokio::time::timeout(CALL_TIMEOUT, response).await {
            Ok(Ok(response)) => {
                let response = response.into_inner();
                tracing::debug!(
                    applied = response.applied,
                    skipped = response.skipped,
                    "task states reported"
                );
            }
            // The leader refuses the batch itself: sending it again would not help, and the next
            // assignment set lets the task runner derive what still needs reporting.
            Ok(Err(status)) if status.code() == Code::InvalidArgument => {
                tracing::warn!("the leader refused task states: {}", describe(&status));
            }
            Ok(Err(status)) => return classify(&status),
            Err(_) => return End::Failed(format!("no answer within {CALL_TIMEOUT:?}")),
        }
        for sent in batch {
            if pending.get(&sent.task_id) == Some(&sent) {
                pending.remove(&sent.task_id);
            }
        }
    }
}

/// States only move forward: a later report replaces an earlier one, never the other way round.
fn merge(pending: &mut BTreeMap<String, TaskStatus>, report: TaskStatus) {
    match pending.get(&report.task_id) {
        Some(held) if held.state > report.state => {}
        _ => {
            pending.insert(report.task_id.clone(), report);
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
