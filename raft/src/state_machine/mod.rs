//! The state machine: applies committed entries to the revisioned KV in RocksDB, feeds watches
//! with what changed, keeps the store within its quota (`space.rs`), and builds, checks and
//! installs snapshots. It never reads a clock.

mod apply;
mod pending;
mod read;
mod snapshot;
mod space;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

use futures::Stream;
use futures::TryStreamExt;
use openraft::storage::ApplyResponder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::OptionalSend;
use rocksdb::DB;
use tokio::sync::broadcast;

pub(crate) use self::apply::Counters;
pub use self::apply::LeaseRecord;
pub(crate) use self::apply::HISTORY_REVISIONS;
pub(crate) use self::apply::KEY_COUNTERS;
use self::pending::Pending;
use self::pending::Writes;
pub(crate) use self::read::scan;
pub(crate) use self::read::View;
pub use self::snapshot::SnapshotFile;
pub(crate) use self::snapshot::SnapshotStore;
pub use self::space::human_bytes;
pub(crate) use self::space::may_grow;
pub(crate) use self::space::Space;
pub use self::space::DEFAULT_QUOTA_BYTES;
pub use self::space::MIN_QUOTA_BYTES;
use crate::codec;
use crate::command::Event;
use crate::command::Range;
use crate::command::Response;
use crate::db::io_err;
use crate::db::CF_LEASE;
use crate::db::CF_SM;
use crate::observer::ApplyObserver;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

/// Past this many bytes of keys and values, the entries applied so far in one `apply()` call
/// are written before the next one (a replay after a restart applies thousands at once).
const FLUSH_BYTES: usize = 16 << 20;

/// The changes one entry made, all at one revision. An empty `events` list with a revision
/// ahead of the watcher means "re-read history up to here" (a snapshot was installed).
#[derive(Debug)]
pub(crate) struct RevisionEvents {
    pub revision: u64,
    pub events: Vec<Event>,
}

/// What the state machine shares with readers on the same manager.
pub(crate) struct Shared {
    /// Revision of the last applied entry.
    pub revision: AtomicU64,
    /// Live leases, mirrored from the `lease` column family.
    pub leases: Mutex<BTreeMap<u64, LeaseRecord>>,
    pub events: broadcast::Sender<Arc<RevisionEvents>>,
    /// The space record as of the last applied entry.
    pub space: Mutex<Space>,
}

impl Shared {
    pub(crate) fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    pub(crate) fn space(&self) -> Space {
        self.space.lock().expect("space").clone()
    }
}

pub struct StateMachine {
    db: Arc<DB>,
    shared: Arc<Shared>,
    counters: Counters,
    space: Space,
    snapshots: Arc<SnapshotStore>,
    observer: Option<Arc<dyn ApplyObserver>>,
}

impl StateMachine {
    /// Opens the state machine stored in `db`, with snapshots kept under `snapshot_dir`.
    pub(crate) fn open(
        db: Arc<DB>,
        snapshot_dir: std::path::PathBuf,
        observer: Option<Arc<dyn ApplyObserver>>,
    ) -> io::Result<(Self, Arc<Shared>)> {
        let snapshots = Arc::new(SnapshotStore::open(snapshot_dir)?);
        let counters = read_counters(&db)?;
        let space = space::read(&db, counters.revision)?;
        let (events, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared {
            revision: AtomicU64::new(counters.revision),
            leases: Mutex::new(read_leases(&db)?),
            events,
            space: Mutex::new(space.clone()),
        });
        let sm = StateMachine {
            db,
            shared: shared.clone(),
            counters,
            space,
            snapshots,
            observer,
        };
        sm.reset_observer()?;
        Ok((sm, shared))
    }

    pub(crate) fn snapshot_store(&self) -> Arc<SnapshotStore> {
        self.snapshots.clone()
    }

    fn sm_get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        let cf = self.db.cf_handle(CF_SM).expect("cf sm");
        match self.db.get_cf(cf, key).map_err(io_err)? {
            None => Ok(None),
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
        }
    }

    /// Hands the observer everything under its prefix, as of the applied revision.
    fn reset_observer(&self) -> io::Result<()> {
        let Some(observer) = &self.observer else {
            return Ok(());
        };
        let range = Range {
            key: observer.prefix(),
            prefix: true,
            ..Default::default()
        };
        let found = scan(View::live(&self.db), &range, true)?;
        observer.reset(self.counters.revision, found.kvs);
        Ok(())
    }

    /// Shows readers the space record apply has reached (once it is written).
    fn publish_space(&self) {
        let mut shared = self.shared.space.lock().expect("space");
        if *shared != self.space {
            *shared = self.space.clone();
        }
    }

    /// Applies one entry on top of RocksDB and the writes `pending` before it; its writes join
    /// them. What it did is published once they are written (`flush`).
    fn apply_entry(
        &mut self,
        pending: &mut Pending,
        entry: &crate::types::Entry,
    ) -> io::Result<Done> {
        let mut writes = Writes::default();
        let (response, events, leases) = match &entry.payload {
            EntryPayload::Blank => (empty(self.counters), vec![], None),
            EntryPayload::Normal(req) => {
                let applied =
                    apply::apply_request(&self.db, pending, self.counters, &self.space, req)?;
                self.counters = applied.counters;
                self.space = applied.space;
                writes = applied.writes;
                (applied.response, applied.events, Some(applied.leases))
            }
            EntryPayload::Membership(m) => {
                let stored = StoredMembership::new(Some(entry.log_id), m.clone());
                writes.put(CF_SM, apply::KEY_MEMBERSHIP, codec::encode(&stored)?);
                // Ids are never reused: the allocator stays above every id ever a member.
                let max_id = m.nodes().map(|(id, _)| *id).max().unwrap_or(0);
                if self.counters.next_member <= max_id {
                    self.counters.next_member = max_id + 1;
                    writes.put(CF_SM, KEY_COUNTERS, codec::encode(&self.counters)?);
                }
                // A manager that left no longer holds the cluster to its quota.
                let mut space = self.space.clone();
                space.retain_members(|id| m.get_node(&id).is_some());
                if space != self.space {
                    writes.put(CF_SM, space::KEY_SPACE, codec::encode(&space)?);
                    self.space = space;
                }
                (empty(self.counters), vec![], None)
            }
        };
        pending.add(&self.db, writes);
        Ok(Done {
            revision: self.counters.revision,
            response,
            events,
            leases,
        })
    }

    /// Writes what `pending` holds with `applied` as the last applied log id, in one batch, then
    /// publishes each entry's changes in order and answers its proposer: nothing is visible or
    /// acknowledged before it is written. Not synced: the log entries it comes from are durable,
    /// and the next synced write shares this WAL (see db.rs); after a crash, openraft applies
    /// again from the applied log id written here.
    fn flush(
        &mut self,
        pending: &mut Pending,
        applied: LogId,
        done: &mut Vec<(Done, Option<ApplyResponder<TypeConfig>>)>,
    ) -> io::Result<()> {
        let mut last = Writes::default();
        last.put(CF_SM, apply::KEY_APPLIED, codec::encode(&Some(applied))?);
        pending.add(&self.db, last);
        self.db.write(pending.take()).map_err(io_err)?;
        self.publish_space();
        for (d, responder) in done.drain(..) {
            if let Some(changes) = d.leases {
                let mut table = self.shared.leases.lock().expect("lease table");
                for rec in changes.granted {
                    table.insert(rec.id, rec);
                }
                for id in changes.revoked {
                    table.remove(&id);
                }
            }
            if !d.events.is_empty() {
                if let Some(observer) = &self.observer {
                    observer.applied(d.revision, &d.events);
                }
                self.shared.revision.store(d.revision, Ordering::Release);
                // No receiver is fine: nobody is watching.
                let _ = self.shared.events.send(Arc::new(RevisionEvents {
                    revision: d.revision,
                    events: d.events,
                }));
            }
            if let Some(responder) = responder {
                responder.send(d.response);
            }
        }
        Ok(())
    }

    /// Re-reads everything cached in memory after the stored state was replaced.
    fn reload(&mut self) -> io::Result<()> {
        self.counters = read_counters(&self.db)?;
        self.space = space::read(&self.db, self.counters.revision)?;
        *self.shared.space.lock().expect("space") = self.space.clone();
        self.shared
            .revision
            .store(self.counters.revision, Ordering::Release);
        *self.shared.leases.lock().expect("lease table") = read_leases(&self.db)?;
        self.reset_observer()?;
        let _ = self.shared.events.send(Arc::new(RevisionEvents {
            revision: self.counters.revision,
            events: Vec::new(),
        }));
        Ok(())
    }
}

fn read_counters(db: &DB) -> io::Result<Counters> {
    let cf = db.cf_handle(CF_SM).expect("cf sm");
    match db.get_cf(cf, KEY_COUNTERS).map_err(io_err)? {
        None => Ok(Counters::default()),
        Some(bytes) => Ok(codec::decode(&bytes)?),
    }
}

fn read_leases(db: &DB) -> io::Result<BTreeMap<u64, LeaseRecord>> {
    let cf = db.cf_handle(CF_LEASE).expect("cf lease");
    let mut out = BTreeMap::new();
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (_, bytes) = item.map_err(io_err)?;
        let rec: LeaseRecord = codec::decode(&bytes)?;
        out.insert(rec.id, rec);
    }
    Ok(out)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = snapshot::Builder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = self.sm_get::<Option<LogId>>(apply::KEY_APPLIED)?.flatten();
        let membership = self
            .sm_get::<StoredMembership>(apply::KEY_MEMBERSHIP)?
            .unwrap_or_default();
        Ok((applied, membership))
    }

    /// Applies the entries as one RocksDB write batch (cut into several only past
    /// `FLUSH_BYTES`): each entry reads through the writes of those before it, and every
    /// answer waits for the batch to be written.
    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut pending = Pending::default();
        let mut done = Vec::new();
        let mut last = None;
        while let Some((entry, responder)) = entries.try_next().await? {
            let d = self.apply_entry(&mut pending, &entry)?;
            done.push((d, responder));
            last = Some(entry.log_id);
            if pending.bytes() >= FLUSH_BYTES {
                self.flush(&mut pending, entry.log_id, &mut done)?;
            }
        }
        match last {
            Some(log_id) if !done.is_empty() => self.flush(&mut pending, log_id, &mut done),
            _ => Ok(()),
        }
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        match snapshot::Builder::start(self.db.clone(), self.snapshots.clone()).await {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot start building a snapshot");
                None
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        snapshot::Builder::start(self.db.clone(), self.snapshots.clone())
            .await
            .expect("starting a snapshot builder")
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        let db = self.db.clone();
        let store = self.snapshots.clone();
        let meta2 = meta.clone();
        tokio::task::spawn_blocking(move || snapshot::install(&db, &store, &meta2, snapshot))
            .await
            .map_err(io::Error::other)??;
        self.reload()?;
        tracing::info!(last_log_id = ?meta.last_log_id, revision = self.counters.revision, "installed snapshot");
        Ok(())
    }

    /// What openraft sends a follower that needs a snapshot (and reads at startup): only ever a
    /// file that matches its checksum. A corrupt one is discarded and rebuilt from the state
    /// machine on the spot.
    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>>, io::Error> {
        let store = self.snapshots.clone();
        let checked = tokio::task::spawn_blocking(move || store.current())
            .await
            .map_err(io::Error::other)?;
        match checked {
            Err(e) if snapshot::is_corrupt(&e) => {
                tracing::error!(error = %e, "the current snapshot is corrupt: rebuilding it");
                self.snapshots.discard_current();
                let mut builder =
                    snapshot::Builder::start(self.db.clone(), self.snapshots.clone()).await?;
                let rebuilt = builder.build_snapshot().await?;
                Ok(Some(rebuilt))
            }
            other => other,
        }
    }
}

/// What one applied entry did, kept until its batch is written.
struct Done {
    /// The store's revision once the entry applied.
    revision: u64,
    response: Response,
    /// Its changes, at `revision` (empty: it changed no key).
    events: Vec<Event>,
    leases: Option<apply::LeaseChanges>,
}

fn empty(c: Counters) -> Response {
    Response::Empty {
        revision: c.revision,
    }
}
