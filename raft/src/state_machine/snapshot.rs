//! Snapshots as files: built from a RocksDB snapshot on a thread of their own (apply goes on
//! meanwhile), checksummed, published by rename, and installed in one atomic write batch. A file
//! is checked against its checksum before it is handed out to be sent to a follower and before
//! it is installed: a corrupt one is never shipped nor installed, and the leader's is rebuilt.
//!
//! File layout: magic `SHOALSNP`, a version byte, then records `[cf u8][klen u32][key][vlen u32]
//! [value]` for every state-machine column family, then `[0xff][record count u64][crc32 u32]`
//! where the CRC covers every byte before it.

use std::fs;
use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Seek;
use std::io::Write;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;

use openraft::storage::RaftSnapshotBuilder;
use rocksdb::WriteBatch;
use rocksdb::DB;
use tokio::sync::oneshot;

use super::apply::KEY_APPLIED;
use super::apply::KEY_MEMBERSHIP;
use crate::codec;
use crate::command::MAX_KEY_BYTES;
use crate::db::io_err;
use crate::db::CF_SM;
use crate::db::SM_CFS;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

const MAGIC: &[u8; 8] = b"SHOALSNP";
const FILE_VERSION: u8 = 1;
const END: u8 = 0xff;

type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// A snapshot's data: an open file, so that a newer snapshot replacing it on disk does not
/// disturb a transfer in progress.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub file: File,
}

impl SnapshotFile {
    pub fn open(path: PathBuf) -> io::Result<Self> {
        let file = File::open(&path)?;
        Ok(SnapshotFile { path, file })
    }
}

/// The snapshot directory and the newest snapshot in it.
pub(crate) struct SnapshotStore {
    dir: PathBuf,
    current: Mutex<Option<SnapshotMeta>>,
}

fn stem(meta: &SnapshotMeta) -> String {
    match &meta.last_log_id {
        Some(id) => format!("snap-{:020}-{}", id.index, id.leader_id),
        None => "snap-empty".to_string(),
    }
}

impl SnapshotStore {
    pub(crate) fn open(dir: PathBuf) -> io::Result<Self> {
        fs::create_dir_all(&dir)?;
        let mut best: Option<SnapshotMeta> = None;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.ends_with(".tmp") {
                // Leftover of a build or transfer cut short by a crash.
                let _ = fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".meta") {
                continue;
            }
            let meta: SnapshotMeta = codec::decode(&fs::read(&path)?)
                .map_err(|e| io::Error::other(format!("snapshot meta {}: {e}", path.display())))?;
            if !path.with_extension("snap").exists() {
                continue;
            }
            let newer = best
                .as_ref()
                .is_none_or(|b| meta.last_log_id > b.last_log_id);
            if newer {
                best = Some(meta);
            }
        }
        Ok(SnapshotStore {
            dir,
            current: Mutex::new(best),
        })
    }

    /// A fresh temporary path in the snapshot directory (so a rename publishes it).
    pub(crate) fn temp_path(&self) -> PathBuf {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.dir
            .join(format!("incoming-{}-{n}.tmp", std::process::id()))
    }

    pub(crate) fn current_meta(&self) -> Option<SnapshotMeta> {
        self.current.lock().expect("snapshot lock").clone()
    }

    /// The size of the current snapshot's file (0: none).
    pub(crate) fn current_bytes(&self) -> u64 {
        self.current_meta()
            .and_then(|meta| fs::metadata(self.dir.join(stem(&meta)).with_extension("snap")).ok())
            .map_or(0, |m| m.len())
    }

    /// The current snapshot, its file checked against its checksum and open at its start. A
    /// corrupt file is an [`io::ErrorKind::InvalidData`] error (see [`is_corrupt`]).
    pub(crate) fn current(&self) -> io::Result<Option<Snapshot>> {
        let Some(meta) = self.current_meta() else {
            return Ok(None);
        };
        let path = self.dir.join(stem(&meta)).with_extension("snap");
        let file = SnapshotFile::open(path)?;
        verify(&file.file).map_err(|e| {
            io::Error::new(e.kind(), format!("snapshot {}: {e}", file.path.display()))
        })?;
        Ok(Some(Snapshot {
            snapshot: file,
            meta,
        }))
    }

    /// Forgets the current snapshot and removes its files (it was found corrupt).
    pub(crate) fn discard_current(&self) {
        let mut current = self.current.lock().expect("snapshot lock");
        if let Some(meta) = current.take() {
            let base = self.dir.join(stem(&meta));
            let _ = fs::remove_file(base.with_extension("meta"));
            let _ = fs::remove_file(base.with_extension("snap"));
        }
    }

    /// Makes the data at `tmp` the current snapshot, durably, and removes older ones.
    fn publish(&self, meta: &SnapshotMeta, tmp: &Path) -> io::Result<()> {
        let base = self.dir.join(stem(meta));
        fs::rename(tmp, base.with_extension("snap"))?;
        let meta_tmp = base.with_extension("meta.tmp");
        let mut f = File::create(&meta_tmp)?;
        f.write_all(&codec::encode(meta)?)?;
        f.sync_all()?;
        fs::rename(&meta_tmp, base.with_extension("meta"))?;
        File::open(&self.dir)?.sync_all()?;

        let mut current = self.current.lock().expect("snapshot lock");
        let keep = stem(meta);
        *current = Some(meta.clone());
        for entry in fs::read_dir(&self.dir)?.flatten() {
            let path = entry.path();
            let name = path
                .file_stem()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let old = name.starts_with("snap-")
                && name != keep
                && !path.to_string_lossy().ends_with(".tmp");
            if old {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    }
}

/// Builds one snapshot. The point-in-time view is fixed before `start` returns; the file is
/// written on a thread while apply continues.
pub struct Builder {
    result: Option<oneshot::Receiver<io::Result<Snapshot>>>,
}

impl Builder {
    pub(crate) async fn start(db: Arc<DB>, store: Arc<SnapshotStore>) -> io::Result<Builder> {
        let (fixed_tx, fixed_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("shoal-snapshot".into())
            .spawn(move || {
                let res = build(&db, &store, fixed_tx);
                if let Err(e) = &res {
                    tracing::error!(error = %e, "building a snapshot failed");
                }
                let _ = done_tx.send(res);
            })?;
        fixed_rx
            .await
            .map_err(|_| io::Error::other("snapshot thread ended before fixing its view"))?;
        Ok(Builder {
            result: Some(done_rx),
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let rx = self
            .result
            .take()
            .ok_or_else(|| io::Error::other("snapshot builder used twice"))?;
        rx.await
            .map_err(|_| io::Error::other("snapshot thread died"))?
    }
}

fn build(db: &DB, store: &SnapshotStore, fixed: oneshot::Sender<()>) -> io::Result<Snapshot> {
    let started = std::time::Instant::now();
    let view = db.snapshot();
    let _ = fixed.send(());

    let sm = db.cf_handle(CF_SM).expect("cf sm");
    let applied: Option<LogId> = match view.get_cf(sm, KEY_APPLIED).map_err(io_err)? {
        Some(b) => codec::decode::<Option<LogId>>(&b)?,
        None => None,
    };
    let membership: StoredMembership = match view.get_cf(sm, KEY_MEMBERSHIP).map_err(io_err)? {
        Some(b) => codec::decode(&b)?,
        None => StoredMembership::default(),
    };
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: membership,
    };

    let tmp = store.temp_path();
    let file = File::create(&tmp)?;
    let mut w = CrcWriter::new(BufWriter::new(file));
    w.write_all(MAGIC)?;
    w.write_all(&[FILE_VERSION])?;
    let mut records = 0u64;
    for (i, name) in SM_CFS.iter().enumerate() {
        let cf = db.cf_handle(name).expect("sm cf");
        for item in view.iterator_cf(cf, rocksdb::IteratorMode::Start) {
            let (k, v) = item.map_err(io_err)?;
            w.write_all(&[i as u8])?;
            w.write_all(&(k.len() as u32).to_le_bytes())?;
            w.write_all(&k)?;
            w.write_all(&(v.len() as u32).to_le_bytes())?;
            w.write_all(&v)?;
            records += 1;
        }
    }
    w.write_all(&[END])?;
    w.write_all(&records.to_le_bytes())?;
    let crc = w.crc.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&crc.to_le_bytes())?;
    inner.flush()?;
    inner.get_ref().sync_all()?;
    drop(inner);
    drop(view);

    // The log behind this snapshot may be purged once it is published: make sure the state
    // machine's own writes up to this point are durable too.
    db.flush_wal(true).map_err(io_err)?;
    store.publish(&meta, &tmp)?;
    tracing::info!(last_log_id = ?meta.last_log_id, records, "built snapshot");
    let path = store.dir.join(stem(&meta)).with_extension("snap");
    let stats = &crate::stats::COUNTERS;
    stats.snapshot.observe(started.elapsed());
    if let Ok(m) = fs::metadata(&path) {
        stats
            .snapshot_bytes
            .store(m.len(), std::sync::atomic::Ordering::Relaxed);
    }
    Ok(Snapshot {
        meta,
        snapshot: SnapshotFile::open(path)?,
    })
}

struct CrcWriter<W> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    fn new(inner: W) -> Self {
        CrcWriter {
            inner,
            crc: crc32fast::Hasher::new(),
        }
    }
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> CrcReader<R> {
    fn exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        self.inner.read_exact(&mut buf)?;
        self.crc.update(&buf);
        Ok(buf)
    }
    fn u32(&mut self) -> io::Result<u32> {
        Ok(u32::from_le_bytes(
            self.exact(4)?.try_into().expect("4 bytes"),
        ))
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupted snapshot: {what}"),
    )
}

/// Whether `e` says a snapshot file is corrupt (bad checksum, bad structure, cut short), as
/// opposed to unreadable.
pub(crate) fn is_corrupt(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
    )
}

/// Reads a snapshot file from its start, handing each record (column family index, key, value)
/// to `record`, and checks the trailer: the record count and the checksum of everything before
/// it. Leaves the file at its start again.
fn read_records(
    file: &File,
    mut record: impl FnMut(usize, Vec<u8>, Vec<u8>) -> io::Result<()>,
) -> io::Result<()> {
    let mut f = file;
    f.rewind()?;
    let mut r = CrcReader {
        inner: BufReader::new(file),
        crc: crc32fast::Hasher::new(),
    };
    if r.exact(MAGIC.len())? != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = r.exact(1)?[0];
    if version != FILE_VERSION {
        return Err(corrupt(&format!("unsupported version {version}")));
    }
    let mut records = 0u64;
    loop {
        let tag = r.exact(1)?[0];
        if tag == END {
            break;
        }
        if tag as usize >= SM_CFS.len() {
            return Err(corrupt("unknown column family"));
        }
        let klen = r.u32()? as usize;
        if klen > MAX_KEY_BYTES + 16 {
            return Err(corrupt("key too long"));
        }
        let key = r.exact(klen)?;
        let vlen = r.u32()? as usize;
        if vlen > 64 * 1024 * 1024 {
            return Err(corrupt("value too long"));
        }
        let value = r.exact(vlen)?;
        record(tag as usize, key, value)?;
        records += 1;
    }
    let count = u64::from_le_bytes(r.exact(8)?.try_into().expect("8 bytes"));
    let want = r.crc.clone().finalize();
    let mut crc = [0u8; 4];
    r.inner.read_exact(&mut crc)?;
    if count != records || u32::from_le_bytes(crc) != want {
        return Err(corrupt("checksum or record count mismatch"));
    }
    let mut rest = [0u8; 1];
    if r.inner.read(&mut rest)? != 0 {
        return Err(corrupt("trailing bytes after the checksum"));
    }
    f.rewind()?;
    Ok(())
}

/// Checks a snapshot file against its checksum; leaves it at its start.
pub(crate) fn verify(file: &File) -> io::Result<()> {
    read_records(file, |_, _, _| Ok(()))
}

/// Replaces the state machine with the snapshot's content in one atomic, synced write, then
/// makes the file the current snapshot. Nothing is written unless the whole file checks out
/// against its checksum first.
pub(crate) fn install(
    db: &DB,
    store: &SnapshotStore,
    meta: &SnapshotMeta,
    data: SnapshotFile,
) -> io::Result<()> {
    let cfs: Vec<_> = SM_CFS
        .iter()
        .map(|n| db.cf_handle(n).expect("sm cf"))
        .collect();
    let mut batch = WriteBatch::default();
    // Every valid key sorts below this one.
    let top = vec![0xffu8; MAX_KEY_BYTES + 16];
    for cf in &cfs {
        batch.delete_range_cf(*cf, [].as_slice(), top.as_slice());
    }
    // The batch is only written once the trailer has been checked.
    read_records(&data.file, |cf, key, value| {
        batch.put_cf(cfs[cf], key, value);
        Ok(())
    })
    .map_err(|e| io::Error::new(e.kind(), format!("snapshot {}: {e}", data.path.display())))?;
    // The meta openraft hands over is authoritative for the applied position.
    let sm = db.cf_handle(CF_SM).expect("cf sm");
    batch.put_cf(sm, KEY_APPLIED, codec::encode(&meta.last_log_id)?);
    batch.put_cf(sm, KEY_MEMBERSHIP, codec::encode(&meta.last_membership)?);
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(io_err)?;

    let tmp = store.temp_path();
    fs::copy(&data.path, &tmp)?;
    File::open(&tmp)?.sync_all()?;
    store.publish(meta, &tmp)
}

#[cfg(test)]
mod tests {
    use openraft::impls::leader_id_adv::LeaderId;
    use openraft::storage::RaftStateMachine;

    use super::*;
    use crate::command::Command;
    use crate::command::Put;
    use crate::command::Request;
    use crate::state_machine::apply;
    use crate::state_machine::StateMachine;

    /// A state machine holding `keys` keys, applied up to log index `keys`.
    fn machine(dir: &Path, keys: u64) -> (Arc<DB>, StateMachine) {
        let db = crate::db::open(dir).unwrap();
        let mut counters = apply::Counters::default();
        let mut space = crate::state_machine::space::read(&db, 0).unwrap();
        for i in 0..keys {
            let req = Request {
                at_ms: 0,
                cmd: Command::Put(Put {
                    key: format!("k/{i}").into_bytes(),
                    value: vec![b'v'; 100],
                    ..Default::default()
                }),
            };
            let pending = crate::state_machine::pending::Pending::default();
            let a = apply::apply_request(&db, &pending, counters, &space, &req).unwrap();
            (counters, space) = (a.counters, a.space);
            db.write(a.writes.batch(&db)).unwrap();
        }
        let applied = Some(LogId::new(
            LeaderId {
                term: 1,
                node_id: 1,
            },
            keys,
        ));
        let sm_cf = db.cf_handle(CF_SM).unwrap();
        db.put_cf(sm_cf, KEY_APPLIED, codec::encode(&applied).unwrap())
            .unwrap();
        let (sm, _) = StateMachine::open(db.clone(), dir.join("snapshots"), None).unwrap();
        (db, sm)
    }

    /// Flips one byte in the middle of the file at `path`.
    fn flip_a_byte(path: &Path) {
        let mut bytes = fs::read(path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x5a;
        fs::write(path, bytes).unwrap();
    }

    fn key_count(db: &DB) -> usize {
        let cf = db.cf_handle(crate::db::CF_KV).unwrap();
        db.iterator_cf(cf, rocksdb::IteratorMode::Start).count()
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_is_rebuilt_and_never_handed_out_to_send() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, mut sm) = machine(dir.path(), 50);
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let path = built.snapshot.path.clone();
        drop(built);
        verify(&File::open(&path).unwrap()).unwrap();

        flip_a_byte(&path);
        let e = verify(&File::open(&path).unwrap()).unwrap_err();
        assert!(is_corrupt(&e), "{e}");

        // What openraft sends to a follower comes from here: a file that checks out, rebuilt.
        let sent = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        verify(&sent.snapshot.file).unwrap();
        assert_eq!(sent.meta.last_log_id.map(|l| l.index), Some(50));
        verify(&File::open(&sent.snapshot.path).unwrap()).unwrap();
        // And it is the current one from now on.
        let again = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        assert_eq!(again.meta, sent.meta);
        verify(&again.snapshot.file).unwrap();
    }

    #[tokio::test]
    async fn a_cut_short_snapshot_is_rebuilt_too() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, mut sm) = machine(dir.path(), 20);
        let built = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let path = built.snapshot.path.clone();
        drop(built);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let sent = sm
            .get_current_snapshot()
            .await
            .unwrap()
            .expect("a snapshot");
        verify(&sent.snapshot.file).unwrap();
    }

    #[tokio::test]
    async fn a_corrupt_snapshot_is_not_installed() {
        let source = tempfile::tempdir().unwrap();
        let (_, mut leader) = machine(source.path(), 30);
        let built = leader
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let target = tempfile::tempdir().unwrap();
        let (follower_db, mut follower) = machine(target.path(), 3);
        let copy = target.path().join("received.snap");
        fs::copy(&built.snapshot.path, &copy).unwrap();
        flip_a_byte(&copy);

        let e = follower
            .install_snapshot(&built.meta, SnapshotFile::open(copy.clone()).unwrap())
            .await
            .unwrap_err();
        assert!(is_corrupt(&e), "{e}");
        // Nothing of it was written: the follower still has its own 3 keys and no snapshot.
        assert_eq!(key_count(&follower_db), 3);
        let (applied, _) = follower.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(3));

        // The intact file installs.
        follower
            .install_snapshot(
                &built.meta,
                SnapshotFile::open(built.snapshot.path.clone()).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(key_count(&follower_db), 30);
    }
}
