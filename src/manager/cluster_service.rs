//! Cluster admin (`shoal.v1.Cluster`): status, removing a manager, showing the join token.

use shoal_proto::v1 as pb;
use shoal_proto::v1::cluster_server::Cluster;
use shoal_raft::Store;
use tonic::Request;
use tonic::Response;
use tonic::Status;

pub(crate) struct ClusterService {
    store: Store,
}

impl ClusterService {
    pub(crate) fn new(store: Store) -> Self {
        ClusterService { store }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn status(
        &self,
        _req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
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
        let id = req.into_inner().id;
        if id == 0 {
            return Err(Status::invalid_argument(
                "manager id 0 does not exist; ids start at 1",
            ));
        }
        let voters = self.store.remove_member(id).await?;
        Ok(Response::new(pb::RemoveManagerResponse { voters }))
    }

    async fn token(
        &self,
        _req: Request<pb::TokenRequest>,
    ) -> Result<Response<pb::TokenResponse>, Status> {
        Ok(Response::new(pb::TokenResponse {
            token: self.store.token().to_string(),
        }))
    }
}
