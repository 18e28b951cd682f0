//! shoal's replicated store: openraft over RocksDB, holding a revisioned key space (as etcd's)
//! with transactions, leases and watches. Modules follow openraft's seams: log storage, state
//! machine, network (outbound) and peer service (inbound), plus the [`Store`] handle the rest of
//! shoal uses.
// Unsafe only where a system call has no safe wrapper (`runtime::favour_this_thread`).
#![deny(unsafe_code)]

mod codec;
mod command;
mod compaction;
mod db;
mod error;
mod forward;
mod handover;
mod identity;
mod lease;
mod log_store;
mod merge;
mod network;
mod observer;
mod recovery;
mod runtime;
mod service;
mod state_machine;
mod stats;
mod status;
mod store;
mod types;
mod watch;

pub use command::Batch;
pub use command::Command;
pub use command::Compare;
pub use command::CompareOp;
pub use command::CompareTarget;
pub use command::Delete;
pub use command::Event;
pub use command::EventKind;
pub use command::InvalidRequest;
pub use command::KeyValue;
pub use command::Lock;
pub use command::Merge;
pub use command::Op;
pub use command::OpResponse;
pub use command::Put;
pub use command::Range;
pub use command::RangeResult;
pub use command::Rejection;
pub use command::Response;
pub use command::Txn;
pub use command::MAX_BATCH_WRITES;
pub use command::MAX_KEY_BYTES;
pub use command::MAX_LEASE_TTL_MS;
pub use command::MAX_VALUE_BYTES;
pub use error::StoreError;
pub use identity::token_matches;
pub use identity::JoinToken;
pub use merge::merge_diff;
pub use merge::merge_json;
pub use merge::merge_patch;
pub use network::connect;
pub use network::TOKEN_HEADER;
pub use network::WINDOW_BYTES;
pub use observer::ApplyObserver;
pub use state_machine::human_bytes;
pub use state_machine::DEFAULT_QUOTA_BYTES;
pub use state_machine::MIN_QUOTA_BYTES;
pub use stats::LatencyStats;
pub use stats::StoreStats;
pub use stats::LATENCY_BOUNDS;
pub use status::MemberStatus;
pub use status::Status;
pub use store::Opened;
pub use store::RaftTuning;
pub use store::Store;
pub use store::StoreConfig;
pub use types::ManagerNode;
pub use types::NodeId;
pub use watch::WatchBatch;
pub use watch::WatchStream;

/// For openraft's storage conformance suite and other tests of the storage layer.
#[doc(hidden)]
pub mod testing {
    pub use crate::log_store::LogStore;
    pub use crate::state_machine::StateMachine;
    pub use crate::types::TypeConfig;

    /// Opens a fresh log store and state machine in `dir`.
    pub fn open_storage(dir: &std::path::Path) -> std::io::Result<(LogStore, StateMachine)> {
        let db = crate::db::open(dir).map_err(std::io::Error::other)?;
        let (sm, _) = StateMachine::open(db.clone(), dir.join("snapshots"), None)?;
        Ok((
            LogStore::new(db, crate::compaction::LogBytes::default()),
            sm,
        ))
    }
}
