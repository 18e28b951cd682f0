//! The dispatcher: agent sessions over gRPC (`shoal.v1.Dispatcher`), answered by the leader only.
//! It registers nodes, keeps heartbeats in memory (`control::Heartbeats`), streams each node's
//! assignments, and hands the task states agents report to the term's batcher (`statuses`),
//! which checks each move against the task lifecycle and commits them together. Every read is
//! of the object index; nothing here decodes the store.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use shoal_proto::v1 as pb;
use shoal_proto::v1::dispatcher_server::Dispatcher;
use shoal_raft::Store;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::assignments::{NodeSet, Readers};
use super::control::{heartbeat_period_ms, Leading};
use super::statuses::{self, Report, Reports};
use crate::model::{Availability, Node, NodeStatus, TaskStatus, DEFAULT_HEARTBEAT_MS};
use crate::objects::{Commit, Expect, ObjectStore, Objects, View, Write};
use crate::proxy::safe;
use crate::security::policy::{self, Method};

/// The answer to a call whose leader term ended while it was served.
pub(crate) fn leadership_changed() -> Status {
    Status::unavailable("leadership changed; find the new leader")
}

/// Metadata entry naming the leader's gRPC address on an UNAVAILABLE answer.
pub const LEADER_HEADER: &str = "x-shoal-leader";

/// Attempts at a read-modify-write that keeps meeting newer state.
const ATTEMPTS: usize = 5;

/// Heartbeat periods an agent may ask for.
const HEARTBEAT_MS: std::ops::RangeInclusive<u64> = 50..=60_000;

pub struct DispatcherService {
    store: Store,
    objects: Objects,
    leading: watch::Receiver<Option<Leading>>,
    /// One builder of assignment sets for all the streams of a term.
    readers: Readers,
    /// The status batcher of the current term.
    reports: Arc<Mutex<Option<(u64, Reports)>>>,
}

impl DispatcherService {
    pub fn new(objects: Objects, leading: watch::Receiver<Option<Leading>>) -> Self {
        DispatcherService {
            store: objects.store().clone(),
            objects,
            leading,
            readers: Readers::default(),
            reports: Arc::default(),
        }
    }

    /// The batcher of `term`, started by its first report.
    fn reports(&self, term: u64) -> Reports {
        let mut slot = self.reports.lock().unwrap_or_else(|e| e.into_inner());
        match slot.as_ref() {
            Some((t, tx)) if *t == term && !tx.is_closed() => tx.clone(),
            _ => {
                let tx = statuses::start(self.objects.clone(), term);
                *slot = Some((term, tx.clone()));
                tx
            }
        }
    }

    /// Checks the caller's worker certificate (not revoked: a removed node's session ends at
    /// its next call) and that it speaks for `node`, its own node (the certificate names it:
    /// the request's node id is only a claim), and that this manager's loops lead; returns the
    /// running term.
    fn admit<T>(&self, req: &Request<T>, method: Method, node: &str) -> Result<Leading, Status> {
        self.caller(req, method, node)?;
        self.leading()
    }

    /// The running term, if this manager's loops lead.
    fn leading(&self) -> Result<Leading, Status> {
        match self.leading.borrow().clone() {
            Some(leading) => Ok(leading),
            None => Err(self.not_leader()),
        }
    }

    /// The caller's certificate, checked as [`Self::admit`] does (None: a store without TLS).
    fn caller<T>(
        &self,
        req: &Request<T>,
        method: Method,
        node: &str,
    ) -> Result<Option<Arc<shoal_tls::PeerIdentity>>, Status> {
        let Some(creds) = self.store.tls() else {
            return Ok(None);
        };
        let caller = crate::security::admit(creds, req, method)?;
        policy::own_node(caller.role, &caller.name, node)?;
        Ok(Some(caller))
    }

    fn not_leader(&self) -> Status {
        let leader = self
            .store
            .leader_addr()
            .filter(|_| self.store.leader() != Some(self.store.id()))
            .unwrap_or_default();
        let mut status = Status::unavailable(match leader.as_str() {
            "" => "not the leader, and no leader is known yet".to_string(),
            addr => format!("not the leader; the leader is {addr}"),
        });
        if let Ok(v) = leader.parse() {
            status.metadata_mut().insert(LEADER_HEADER, v);
        }
        status
    }

    /// Writes one node, conditioned on what `change` was computed from; retried on a conflict.
    /// `change` sees the node as this leader's index has it, and the whole view.
    async fn update_node(
        &self,
        term: u64,
        id: &str,
        mut change: impl FnMut(Option<&Node>, &View) -> Result<Option<Node>, Status>,
    ) -> Result<(), Status> {
        let mut view = self.objects.view();
        for _ in 0..ATTEMPTS {
            let current = view.node(id);
            let Some(node) = change(current.map(|n| &n.value), &view)? else {
                return Ok(());
            };
            let expect = current.map_or(Expect::Absent, |n| Expect::ModRevision(n.mod_revision));
            let write = Write::Node { node, expect };
            match self.objects.commit(term, vec![write]).await {
                Ok(c) if c.all_applied() => return Ok(()),
                Ok(Commit::Fenced) => return Err(leadership_changed()),
                Ok(Commit::Done(_)) => {
                    view = self.objects.newer_than(&view).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Status::aborted(format!(
            "node {id} kept changing while it was being updated; try again"
        )))
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherService {
    async fn register(
        &self,
        req: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let leading = self.admit(&req, Method::DispatcherRegister, &req.get_ref().node_id)?;
        let r = req.into_inner();
        validate_register(&r)?;
        // The store, not this manager's revocation cache, which lags by up to a second; this
        // node's key only: after a failover every agent registers at once.
        let revoked =
            crate::security::state::is_revoked(&self.store, shoal_tls::Role::Worker, &r.node_id)
                .await
                .map_err(Status::from)?;
        if revoked {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster",
                r.node_id
            )));
        }
        let id = r.node_id.clone();
        self.update_node(leading.term, &id, |current, view| {
            // A name is the node's until it is removed, down or not: constraints and operators
            // name nodes by it (`node==NAME`), so a newcomer never inherits another's placements.
            if let Some(other) = view
                .nodes_named(&r.name)
                .map(|n| &n.value)
                .find(|n| n.id != r.node_id)
            {
                return Err(Status::already_exists(format!(
                    "node name {} is taken by node {} ({}); give --name another name, or remove that node first (shoal node rm {})",
                    r.name,
                    other.id,
                    other.status.as_str(),
                    other.id
                )));
            }
            let (operator_labels, availability) = match current {
                Some(n) => (n.operator_labels.clone(), n.availability),
                None => (BTreeMap::new(), Availability::Active),
            };
            let mut images = r.images.clone();
            images.sort();
            images.dedup();
            let node = Node {
                id: r.node_id.clone(),
                name: r.name.clone(),
                addr: r.addr.clone(),
                engine_addr: r.engine_addr.clone(),
                labels: r.labels.clone().into_iter().collect(),
                operator_labels,
                cpus: r.cpus,
                memory_bytes: r.memory_bytes,
                engine_version: r.engine_version.clone(),
                images,
                status: NodeStatus::Ready,
                availability,
                heartbeat_ms: r.heartbeat_ms,
                message: String::new(),
            };
            // An agent registering again after a failover usually finds its record as it
            // left it: no Raft write then (were the index behind on a DOWN, liveness marks
            // the node READY again at its next heartbeat).
            Ok((current != Some(&node)).then_some(node))
        })
        .await?;
        leading
            .heartbeats
            .registered(&id, tokio::time::Instant::now(), r.heartbeat_ms);
        tracing::info!(node = %id, name = %r.name, addr = %r.addr, "node registered");
        Ok(Response::new(pb::RegisterResponse {
            node_id: id,
            leader_id: self.store.id(),
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let leading = self.admit(&req, Method::DispatcherHeartbeat, &req.get_ref().node_id)?;
        let r = req.into_inner();
        let view = self.objects.view();
        let period_ms = view.node(&r.node_id).map_or(DEFAULT_HEARTBEAT_MS, |n| {
            heartbeat_period_ms(n.value.heartbeat_ms, view.node_count())
        });
        drop(view);
        if !leading
            .heartbeats
            .beat(&r.node_id, tokio::time::Instant::now(), period_ms)
        {
            return Err(Status::not_found(format!(
                "node {} is not registered with this leader; register again",
                r.node_id
            )));
        }
        if r.images_changed {
            let mut images = r.images.clone();
            images.sort();
            images.dedup();
            self.update_node(leading.term, &r.node_id, |current, _| {
                let Some(node) = current else {
                    return Err(Status::not_found("node is not registered; register again"));
                };
                if node.images == images {
                    return Ok(None);
                }
                let mut node = node.clone();
                node.images = images.clone();
                Ok(Some(node))
            })
            .await?;
        }
        Ok(Response::new(pb::HeartbeatResponse { period_ms }))
    }

    type AssignmentsStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentSet, Status>> + Send>>;

    async fn assignments(
        &self,
        req: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let caller = self.caller(&req, Method::DispatcherAssignments, &req.get_ref().node_id)?;
        let leading = self.leading()?;
        let creds = self.store.tls().cloned();
        let pb::AssignmentsRequest {
            node_id: node,
            incremental,
        } = req.into_inner();
        // Room for one message: each is computed from the latest sets when there is room for
        // it, so a slow agent gets fewer, larger changes instead of a queue of stale sets.
        let (tx, rx) = mpsc::channel(1);
        let mut sets = self
            .readers
            .subscribe(&self.objects, &leading, self.leading.clone());
        tokio::spawn(async move {
            let _session = crate::metrics::families::DISPATCHER_SESSIONS.track(&[]);
            let mut sent: Option<Arc<NodeSet>> = None;
            loop {
                let Ok(permit) = tx.reserve().await else {
                    return;
                };
                let published = sets.borrow_and_update().clone();
                // Checked again before every message: a removed node learns nothing more.
                if let (Some(creds), Some(caller)) = (&creds, &caller) {
                    if creds.is_revoked(caller) {
                        permit.send(Err(Status::permission_denied(format!(
                            "node {} was removed from the cluster",
                            caller.name
                        ))));
                        return;
                    }
                }
                if let Some(status) = published.stopped() {
                    permit.send(Err(status));
                    return;
                }
                let mut message = None;
                if let Some(mine) = published.node(&node) {
                    message = match &sent {
                        Some(last) if Arc::ptr_eq(last, &mine) => None,
                        Some(last) if incremental => mine.changes_since(last),
                        Some(last) if last.same(&mine) => None,
                        _ if incremental => Some(mine.complete()),
                        _ => Some(mine.whole()),
                    };
                    sent = Some(mine);
                }
                match message {
                    Some(message) => permit.send(Ok(message)),
                    None => drop(permit),
                }
                // A revocation wakes the stream at once (the check above then ends it).
                let revoked = async {
                    match (&creds, &caller) {
                        (Some(creds), Some(caller)) => creds.until_revoked(caller).await,
                        _ => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = sets.changed() => if r.is_err() { break },
                    _ = tx.closed() => return,
                    () = revoked => {}
                }
            }
            let _ = tx.send(Err(leadership_changed())).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn update_task_status(
        &self,
        req: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::UpdateTaskStatusResponse>, Status> {
        let leading = self.admit(
            &req,
            Method::DispatcherUpdateTaskStatus,
            &req.get_ref().node_id,
        )?;
        let r = req.into_inner();
        let mut updates = Vec::with_capacity(r.updates.len());
        for raw in &r.updates {
            let status: TaskStatus = serde_json::from_slice(raw)
                .map_err(|e| Status::invalid_argument(format!("invalid task status: {e}")))?;
            validate_status(&status)?;
            updates.push(status);
        }
        let (reply, answer) = oneshot::channel();
        let report = Report {
            node: r.node_id,
            statuses: updates,
            reply,
        };
        if self.reports(leading.term).send(report).await.is_err() {
            return Err(leadership_changed());
        }
        let (applied, skipped) = answer.await.map_err(|_| leadership_changed())??;
        Ok(Response::new(pb::UpdateTaskStatusResponse {
            applied,
            skipped,
        }))
    }
}

fn validate_register(r: &pb::RegisterRequest) -> Result<(), Status> {
    if !crate::model::is_node_id(&r.node_id) {
        return Err(Status::invalid_argument(format!(
            "invalid node id {:?}: 1 to 64 letters, digits or '-'",
            r.node_id
        )));
    }
    let name_ok = r
        .name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && r.name.len() <= 128
        && r.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !name_ok {
        return Err(Status::invalid_argument(format!(
            "invalid node name {:?}: letters, digits, '-', '_' or '.', starting with a letter or digit",
            r.name
        )));
    }
    if !HEARTBEAT_MS.contains(&r.heartbeat_ms) {
        return Err(Status::invalid_argument(format!(
            "invalid heartbeat period {} ms: expected {} to {} ms",
            r.heartbeat_ms,
            HEARTBEAT_MS.start(),
            HEARTBEAT_MS.end()
        )));
    }
    if let Some((k, _)) = r.labels.iter().find(|(k, _)| k.is_empty()) {
        return Err(Status::invalid_argument(format!(
            "invalid label {k:?}: empty key"
        )));
    }
    // Both end up in proxy configs and in managers' connections: plain addresses only.
    if !safe::is_node_addr(&r.addr) {
        return Err(Status::invalid_argument(format!(
            "invalid node address {:?}: expected an IP address or a DNS name, optionally with :PORT",
            r.addr
        )));
    }
    if !r.engine_addr.is_empty() && !safe::is_host_port(&r.engine_addr) {
        return Err(Status::invalid_argument(format!(
            "invalid engine address {:?}: expected HOST:PORT",
            r.engine_addr
        )));
    }
    Ok(())
}

/// A task status as an agent may report it: published ports on an IP address (or none given).
fn validate_status(status: &TaskStatus) -> Result<(), Status> {
    for p in &status.ports {
        if !p.host_ip.is_empty() && p.host_ip.parse::<std::net::IpAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "invalid task status of {}: host IP {:?} of port {} is not an IP address",
                status.task_id, p.host_ip, p.container_port
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Protocol, PublishedPort, TaskState};

    fn register(addr: &str, engine_addr: &str) -> pb::RegisterRequest {
        pb::RegisterRequest {
            node_id: "n1".into(),
            name: "node-1".into(),
            addr: addr.into(),
            engine_addr: engine_addr.into(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            ..Default::default()
        }
    }

    #[test]
    fn only_plain_addresses_register() {
        for (addr, engine) in [
            ("10.0.0.1", "10.0.0.1:2380"),
            ("fe80::1", "[fe80::1]:2380"),
            ("node-1.example", "node-1.example:2380"),
            ("127.0.0.2", ""),
        ] {
            validate_register(&register(addr, engine)).unwrap();
        }
        for (addr, engine) in [
            ("10.0.0.1; }", "10.0.0.1:2380"),
            ("10.0.0.1\nserver 6.6.6.6:80", "10.0.0.1:2380"),
            ("a b", "10.0.0.1:2380"),
            ("#", "10.0.0.1:2380"),
            ("", "10.0.0.1:2380"),
            ("10.0.0.1", "10.0.0.1"),
            ("10.0.0.1", "10.0.0.1:2380/x"),
            ("10.0.0.1", "evil}:1"),
        ] {
            let err = validate_register(&register(addr, engine)).unwrap_err();
            assert_eq!(
                err.code(),
                tonic::Code::InvalidArgument,
                "{addr:?} {engine:?}"
            );
            assert!(err.message().contains("address"), "{}", err.message());
        }
    }

    #[test]
    fn reported_ports_carry_ip_addresses() {
        let status = |host_ip: &str| TaskStatus {
            task_id: "t1".into(),
            state: TaskState::Running,
            message: String::new(),
            container_id: None,
            ports: vec![PublishedPort {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_ip: host_ip.into(),
                host_port: 32768,
            }],
            exit_code: None,
            health: None,
        };
        for ok in ["", "0.0.0.0", "::", "127.0.0.2"] {
            validate_status(&status(ok)).unwrap();
        }
        for bad in ["127.0.0.2:1 max_fails=0; }", "x", "1.2.3.4 ", "}"] {
            let err = validate_status(&status(bad)).unwrap_err();
            assert!(err.message().contains("host IP"), "{}", err.message());
        }
    }
}
