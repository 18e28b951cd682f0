//! Cluster admin (`shoal.v1.Cluster`): status, removing a manager or a node (revoking its
//! certificate), and operators' typed writes of cluster objects (`manager::typed`). Operator
//! and manager certificates only.

use shoal_proto::v1 as pb;
use shoal_proto::v1::cluster_server::Cluster;
use shoal_raft::Store;
use shoal_tls::Credentials;
use shoal_tls::Role;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::security;
use crate::security::policy::Method;

pub(crate) struct ClusterService {
    store: Store,
    creds: Credentials,
}

impl ClusterService {
    pub(crate) fn new(store: Store, creds: Credentials) -> Self {
        ClusterService { store, creds }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        security::admit(&self.creds, &req, Method::ClusterStatus)?;
        let s = self.store.status().await;
        Ok(Response::new(pb::StatusResponse {
            cluster_id: s.cluster_id,
            member_id: self.store.id(),
            leader_id: s.leader.unwrap_or(0),
            leader_addr: s.leader_addr,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            revision: s.revision,
            snapshot_index: s.snapshot_index,
            purged_index: s.purged_index,
            quota_bytes: s.quota_bytes,
            used_bytes: s.used_bytes,
            alarms: s.alarms,
            members: s
                .members
                .into_iter()
                .map(|m| pb::Member {
                    id: m.id,
                    addr: m.node.grpc,
                    role: m.role,
                    healthy: m.healthy,
                    applied_index: m.applied_index,
                    http: m.node.http,
                    docker_api: m.node.docker_api,
                    voter: m.voter,
                })
                .collect(),
        }))
    }

    async fn remove_manager(
        &self,
        req: Request<pb::RemoveManagerRequest>,
    ) -> Result<Response<pb::RemoveManagerResponse>, Status> {
        security::admit(&self.creds, &req, Method::ClusterRemoveManager)?;
        let id = req.into_inner().id;
        if id == 0 {
            return Err(Status::invalid_argument(
                "manager id 0 does not exist; ids start at 1",
            ));
        }
        let name = security::state::manager_name(&self.store, id).await?;
        let voters = self.store.remove_member(id).await?;
        // Out of the membership first (its own certificate may be the one answering): then its
        // certificate is refused by every manager from their next second on.
        if let Some(name) = name {
            security::state::revoke(&self.store, Role::Manager, &name).await?;
        }
        Ok(Response::new(pb::RemoveManagerResponse { voters }))
    }

    async fn remove_node(
        &self,
        req: Request<pb::RemoveNodeRequest>,
    ) -> Result<Response<pb::RemoveNodeResponse>, Status> {
        security::admit(&self.creds, &req, Method::ClusterRemoveNode)?;
        let r = req.into_inner();
        match security::state::remove_node(&self.store, &r.id, r.force).await? {
            Some(_) => {}
            None => return Err(Status::not_found(format!("no node {}", r.id))),
        }
        Ok(Response::new(pb::RemoveNodeResponse {}))
    }

    async fn commit_objects(
        &self,
        req: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        let caller = security::admit(&self.creds, &req, Method::ClusterCommitObjects)?;
        let txn = super::convert::txn(req.into_inner())?;
        let txn = super::typed::check(&self.store, txn).await.map_err(|e| {
            tracing::warn!(by = %caller.name, "typed commit refused: {e}");
            Status::from(e)
        })?;
        Ok(Response::new(
            super::kv_service::run_txn(&self.store, txn).await?,
        ))
    }
}
