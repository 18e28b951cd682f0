//! The dispatcher: agent sessions over gRPC (`shoal.v1.Dispatcher`), answered by the leader only.
//! It registers nodes, keeps heartbeats in memory (`control::Heartbeats`), streams each node's
//! assignments, and applies the task states agents report, each move checked against the task
//! lifecycle (`Task::transition` as the agent) and written conditioned on the revision it read.

use std::collections::BTreeMap;
use std::pin::Pin;

use shoal_proto::v1 as pb;
use shoal_proto::v1::dispatcher_server::Dispatcher;
use shoal_raft::{Range, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::assignments::Readers;
use super::control::objects::{Commit, Expect, ObjectStore, Write};
use super::control::Leading;
use crate::host::now_ms;
use crate::model::{keys, Actor, Availability, Node, NodeStatus, Task, TaskStatus};

/// Metadata entry naming the leader's gRPC address on an UNAVAILABLE answer.
pub const LEADER_HEADER: &str = "x-shoal-leader";

/// Attempts at a read-modify-write that keeps meeting newer state.
const ATTEMPTS: usize = 5;

/// Heartbeat periods an agent may ask for.
const HEARTBEAT_MS: std::ops::RangeInclusive<u64> = 50..=60_000;

pub struct DispatcherService {
    store: Store,
    leading: watch::Receiver<Option<Leading>>,
    /// One store read per revision for all the assignment streams of a term.
    readers: Readers,
}

impl DispatcherService {
    pub fn new(store: Store, leading: watch::Receiver<Option<Leading>>) -> Self {
        DispatcherService {
            store,
            leading,
            readers: Readers::default(),
        }
    }

    /// Checks the caller's worker certificate (not revoked: a removed node's session ends at
    /// its next call) and that this manager's loops lead; returns the running term.
    fn admit<T>(&self, req: &Request<T>) -> Result<Leading, Status> {
        if let Some(creds) = self.store.tls() {
            shoal_tls::net::authorize(creds, req.extensions(), crate::security::WORKER_ROLES)?;
        }
        match self.leading.borrow().clone() {
            Some(leading) => Ok(leading),
            None => Err(self.not_leader()),
        }
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

    async fn read_nodes(&self) -> Result<Vec<(Node, u64)>, Status> {
        let range = Range {
            key: keys::NODES.as_bytes().to_vec(),
            prefix: true,
            ..Default::default()
        };
        let (found, _) = self.store.range(&range, true).await.map_err(store_status)?;
        Ok(found
            .kvs
            .into_iter()
            .filter_map(|kv| Some((serde_json::from_slice(&kv.value).ok()?, kv.mod_revision)))
            .collect())
    }

    /// One node's record, read from this replica. A heartbeat reads only its own node: reading
    /// them all made each heartbeat cost O(nodes), and 1,000 nodes at 2 beats/s starved Raft.
    async fn read_node(&self, id: &str) -> Result<Option<Node>, Status> {
        let range = Range {
            key: keys::node(id).into_bytes(),
            ..Default::default()
        };
        let (found, _) = self.store.range(&range, true).await.map_err(store_status)?;
        Ok(found
            .kvs
            .first()
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Writes one node, conditioned on what `change` was computed from; retried on a conflict.
    async fn update_node(
        &self,
        term: u64,
        id: &str,
        mut change: impl FnMut(Option<&Node>, &[(Node, u64)]) -> Result<Option<Node>, Status>,
    ) -> Result<(), Status> {
        for _ in 0..ATTEMPTS {
            let nodes = self.read_nodes().await?;
            let current = nodes.iter().find(|(n, _)| n.id == id);
            let Some(node) = change(current.map(|(n, _)| n), &nodes)? else {
                return Ok(());
            };
            let expect = current.map_or(Expect::Absent, |(_, rev)| Expect::ModRevision(*rev));
            let write = Write::Node { node, expect };
            match self.store.commit(term, vec![write]).await {
                Ok(Commit::Applied) => return Ok(()),
                Ok(Commit::Conflict) => continue,
                Err(e) => return Err(store_status(e)),
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
        let leading = self.admit(&req)?;
        let caller = req
            .extensions()
            .get::<shoal_tls::PeerInfo>()
            .and_then(|p| p.identity.clone());
        let r = req.into_inner();
        validate_register(&r)?;
        if let Some(caller) = caller {
            // A worker certificate speaks for one node only.
            if caller.name != r.node_id {
                return Err(Status::permission_denied(format!(
                    "the certificate of node {} cannot register node {}",
                    caller.name, r.node_id
                )));
            }
        }
        // The store, not this manager's revocation cache, which lags by up to a second.
        let revoked = crate::security::state::revoked(&self.store)
            .await
            .map_err(Status::from)?;
        if revoked.contains(&shoal_tls::creds::revocation_name(
            shoal_tls::Role::Worker,
            &r.node_id,
        )) {
            return Err(Status::permission_denied(format!(
                "node {} was removed from the cluster",
                r.node_id
            )));
        }
        let id = r.node_id.clone();
        self.update_node(leading.term, &id, |current, all| {
            if let Some((other, _)) = all
                .iter()
                .find(|(n, _)| n.name == r.name && n.id != r.node_id)
                .filter(|(n, _)| n.status == NodeStatus::Ready)
            {
                return Err(Status::already_exists(format!(
                    "node name {} is taken by node {}, which is ready; give --name another name",
                    r.name, other.id
                )));
            }
            let (operator_labels, availability) = match current {
                Some(n) => (n.operator_labels.clone(), n.availability),
                None => (BTreeMap::new(), Availability::Active),
            };
            let mut images = r.images.clone();
            images.sort();
            images.dedup();
            Ok(Some(Node {
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
            }))
        })
        .await?;
        leading
            .heartbeats
            .registered(&id, tokio::time::Instant::now());
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
        let leading = self.admit(&req)?;
        let r = req.into_inner();
        if !leading
            .heartbeats
            .beat(&r.node_id, tokio::time::Instant::now())
        {
            return Err(Status::not_found(format!(
                "node {} is not registered with this leader; register again",
                r.node_id
            )));
        }
        let mut period_ms = crate::model::DEFAULT_HEARTBEAT_MS;
        if r.images_changed {
            let mut images = r.images.clone();
            images.sort();
            images.dedup();
            self.update_node(leading.term, &r.node_id, |current, _| {
                let Some(node) = current else {
                    return Err(Status::not_found("node is not registered; register again"));
                };
                period_ms = node.heartbeat_ms;
                if node.images == images {
                    return Ok(None);
                }
                let mut node = node.clone();
                node.images = images.clone();
                Ok(Some(node))
            })
            .await?;
        } else if let Some(node) = self.read_node(&r.node_id).await? {
            period_ms = node.heartbeat_ms;
        }
        Ok(Response::new(pb::HeartbeatResponse { period_ms }))
    }

    type AssignmentsStream = Pin<Box<dyn Stream<Item = Result<pb::AssignmentSet, Status>> + Send>>;

    async fn assignments(
        &self,
        req: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let leading = self.admit(&req)?;
        let node = req.into_inner().node_id;
        let (tx, rx) = mpsc::channel(4);
        let mut sets = self
            .readers
            .subscribe(&self.store, &leading, self.leading.clone());
        tokio::spawn(async move {
            let mut sent: Option<Vec<(String, u64)>> = None;
            loop {
                let published = sets.borrow_and_update().clone();
                if let Some(status) = published.stopped() {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if let Some(mine) = published.node(&node) {
                    if sent.as_ref() != Some(&mine.versions) {
                        if tx.send(Ok(mine.set.clone())).await.is_err() {
                            return;
                        }
                        sent = Some(mine.versions.clone());
                    }
                }
                tokio::select! {
                    r = sets.changed() => if r.is_err() { break },
                    _ = tx.closed() => return,
                }
            }
            let _ = tx
                .send(Err(Status::unavailable(
                    "leadership changed; find the new leader",
                )))
                .await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn update_task_status(
        &self,
        req: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::UpdateTaskStatusResponse>, Status> {
        let leading = self.admit(&req)?;
        let r = req.into_inner();
        let mut updates = Vec::with_capacity(r.updates.len());
        for raw in &r.updates {
            let status: TaskStatus = serde_json::from_slice(raw)
                .map_err(|e| Status::invalid_argument(format!("invalid task status: {e}")))?;
            updates.push(status);
        }
        let (mut applied, mut skipped) = (0u32, 0u32);
        for status in updates {
            if self.apply_status(leading.term, &r.node_id, &status).await? {
                applied += 1;
            } else {
                skipped += 1;
            }
        }
        Ok(Response::new(pb::UpdateTaskStatusResponse {
            applied,
            skipped,
        }))
    }
}

impl DispatcherService {
    /// Applies one reported state; false when the move is not the agent's to make (any more).
    async fn apply_status(
        &self,
        term: u64,
        node: &str,
        status: &TaskStatus,
    ) -> Result<bool, Status> {
        let range = Range {
            key: keys::task(&status.task_id).into_bytes(),
            ..Default::default()
        };
        for _ in 0..ATTEMPTS {
            let (found, _) = self.store.range(&range, true).await.map_err(store_status)?;
            let Some(kv) = found.kvs.first() else {
                return Ok(false);
            };
            let Ok(mut task) = serde_json::from_slice::<Task>(&kv.value) else {
                return Ok(false);
            };
            if task.node_id.as_deref() != Some(node) {
                tracing::warn!(task = %task.id, node, "an agent reported a task of another node");
                return Ok(false);
            }
            let before = task.clone();
            if task.state != status.state
                && task
                    .transition(status.state, Actor::Agent, &status.message, now_ms())
                    .is_err()
            {
                return Ok(false);
            }
            if status.container_id.is_some() {
                task.container_id.clone_from(&status.container_id);
            }
            if !status.ports.is_empty() {
                task.ports.clone_from(&status.ports);
            }
            if status.exit_code.is_some() {
                task.exit_code = status.exit_code;
            }
            if task == before {
                return Ok(true);
            }
            let write = Write::Task {
                task,
                expect: Expect::ModRevision(kv.mod_revision),
            };
            match self.store.commit(term, vec![write]).await {
                Ok(Commit::Applied) => return Ok(true),
                Ok(Commit::Conflict) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(format!(
            "task {} kept changing while its state was being written; report it again",
            status.task_id
        )))
    }
}

fn validate_register(r: &pb::RegisterRequest) -> Result<(), Status> {
    let id_ok = !r.node_id.is_empty()
        && r.node_id.len() <= 64
        && r.node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !id_ok {
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
    Ok(())
}

fn store_status(e: StoreError) -> Status {
    e.into()
}
