//! Leader-side execution: what the leader does with a leader-only request, its own or one a
//! follower forwarded. Proposals enter Raft here and nowhere else.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering as AtomicOrdering;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::type_config::async_runtime::WatchReceiver;
use openraft::ChangeMembers;
use openraft::ReadPolicy;
use tokio::time::Instant;

use super::raft_err;
use super::Store;
use crate::command::Command;
use crate::command::Request;
use crate::command::Response;
use crate::error::StoreError;
use crate::forward::LeaderRequest;
use crate::forward::LeaderResponse;
use crate::types::NodeId;

impl Store {
    /// Serves a leader-only request on this manager, which must be the leader.
    pub(crate) async fn handle_as_leader(
        &self,
        req: LeaderRequest,
    ) -> Result<LeaderResponse, StoreError> {
        let raft = &self.inner.raft;
        let not_leader = || StoreError::NotLeader {
            id: self.inner.id,
            leader: None,
        };
        if !raft.is_leader() {
            return Err(not_leader());
        }
        match req {
            LeaderRequest::Write(r) => self.propose(r).await.map(LeaderResponse::Written),
            LeaderRequest::ReadIndex => match raft.get_read_log_id(ReadPolicy::ReadIndex).await {
                Ok((read, _)) => Ok(LeaderResponse::ReadIndex(read.index())),
                Err(RaftError::APIError(_)) => Err(not_leader()),
                Err(e) => Err(raft_err(e)),
            },
            LeaderRequest::KeepAlive(id) => {
                let rec = self
                    .inner
                    .shared
                    .leases
                    .lock()
                    .expect("lease table")
                    .get(&id)
                    .cloned();
                match rec {
                    Some(rec) if self.inner.leases.keep_alive(&rec, Instant::now()) => {
                        Ok(LeaderResponse::KeptAlive { ttl_ms: rec.ttl_ms })
                    }
                    _ => Err(StoreError::LeaseNotFound(id)),
                }
            }
            LeaderRequest::Join { id: 0, .. } => {
                match self
                    .propose(Request::now(Command::AllocateMemberId))
                    .await?
                {
                    Response::MemberId { id } => Ok(LeaderResponse::Joined(id)),
                    other => Err(StoreError::Protocol(format!("unexpected {other:?}"))),
                }
            }
            LeaderRequest::Join { id, node } => {
                raft.add_learner(id, node, true)
                    .await
                    .map_err(membership_err)?;
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                    .await
                    .map_err(membership_err)?;
                tracing::info!(id, "manager joined as voter");
                Ok(LeaderResponse::Joined(id))
            }
            LeaderRequest::Remove(id) => {
                let m = raft.metrics().borrow_watched().membership_config.clone();
                if m.membership().get_node(&id).is_none() {
                    return Err(StoreError::Membership(format!(
                        "manager {id} is not a member"
                    )));
                }
                let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
                if voters.contains(&id) {
                    if voters.len() == 1 {
                        return Err(StoreError::Membership(
                            "cannot remove the last voter".into(),
                        ));
                    }
                    raft.change_membership(
                        ChangeMembers::RemoveVoters(BTreeSet::from([id])),
                        false,
                    )
                    .await
                    .map_err(membership_err)?;
                } else {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                        .await
                        .map_err(membership_err)?;
                }
                tracing::info!(id, "manager removed");
                let m = raft.metrics().borrow_watched().membership_config.clone();
                Ok(LeaderResponse::Removed(
                    m.membership().voter_ids().collect(),
                ))
            }
            LeaderRequest::Status => Ok(LeaderResponse::Status(Box::new(self.local_status()))),
        }
    }

    /// Appends `req` to the log on this manager, which must lead; the one place writes enter
    /// Raft. "Not leader" means the entry was never appended, so the caller may route it again.
    pub(super) async fn propose(&self, req: Request) -> Result<Response, StoreError> {
        let stats = &crate::stats::COUNTERS;
        stats.proposals.fetch_add(1, AtomicOrdering::Relaxed);
        let res = self.inner.raft.client_write(req).await;
        if res.is_err() {
            stats.proposals_failed.fetch_add(1, AtomicOrdering::Relaxed);
        }
        match res {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(StoreError::NotLeader {
                    id: self.inner.id,
                    leader: None,
                })
            }
            Err(e) => Err(StoreError::OutcomeUnknown {
                leader: self.inner.node.grpc.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

fn membership_err<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Membership(e.to_string())
}
