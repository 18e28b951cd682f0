//! A one-manager store in a temporary directory for the API surfaces' in-process tests, and a
//! full dump of it to check that a refused request changed nothing.

use shoal_raft::{KeyValue, Range, Store, StoreConfig};

use crate::objects::{Index, Objects};

pub(crate) struct TestStore {
    /// Removed when the test ends (after the store).
    _dir: tempfile::TempDir,
    pub store: Store,
    pub objects: Objects,
}

impl TestStore {
    /// Bootstraps a one-member cluster that elects itself; its peer address is never served.
    pub async fn open() -> TestStore {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let index = Index::new();
        let (store, _) = Store::open(StoreConfig {
            data_dir: dir.path().to_path_buf(),
            node: shoal_raft::ManagerNode {
                grpc: "127.0.0.1:1".into(),
                ..Default::default()
            },
            join: vec![],
            token: None,
            tls: None,
            force_new_cluster: false,
            tuning: shoal_raft::RaftTuning {
                heartbeat_ms: 50,
                election_min_ms: 150,
                election_max_ms: 300,
                ..Default::default()
            },
            observer: Some(index.clone()),
            quota_bytes: shoal_raft::DEFAULT_QUOTA_BYTES,
        })
        .await
        .expect("opening a one-manager store");
        let mut leading = store.leadership();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            leading.wait_for(|l| l.is_some()),
        )
        .await
        .expect("a one-manager cluster elects itself")
        .expect("the store runs");
        TestStore {
            _dir: dir,
            objects: Objects::new(store.clone(), index),
            store,
        }
    }

    /// Every key with its metadata, and the revision read.
    pub async fn dump(&self) -> (Vec<KeyValue>, u64) {
        let all = Range {
            key: vec![],
            prefix: true,
            ..Default::default()
        };
        let (found, revision) = self.store.range(&all, true).await.expect("a full read");
        (found.kvs, revision)
    }
}
