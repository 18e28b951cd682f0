//! gRPC definitions: `raft` is the peer-only service between managers, `v1` the client API
//! (KV, leases, watches, cluster admin) that every manager serves.
#![forbid(unsafe_code)]

/// Peer-only Raft transport and leader forwarding.
pub mod raft {
    tonic::include_proto!("shoal.raft");
}

/// Client API: KV, leases, watches, cluster admin.
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}
