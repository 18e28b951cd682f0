//! Snapshots as files: built from a RocksDB snapshot on a thread of their own (apply goes on
//! meanwhile), checksummed, published by rename, and installed in one atomic write batch.
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

    pub(crate) fn current(&self) -> io::Result<Option<Snapshot>> {
        let Some(meta) = self.current_meta() else {
            return Ok(None);
        };
        let path = self.dir.join(stem(&meta)).with_extension("snap");
        Ok(Some(Snapshot {
            snapshot: SnapshotFile::open(path)?,
            meta,
        }))
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

/// Replaces the state machine with the snapshot's content in one atomic, synced write, then
/// makes the file the current snapshot.
pub(crate) fn install(
    db: &DB,
    store: &SnapshotStore,
    meta: &SnapshotMeta,
    data: SnapshotFile,
) -> io::Result<()> {
    let mut r = CrcReader {
        inner: BufReader::new(&data.file),
        crc: crc32fast::Hasher::new(),
    };
    if r.exact(MAGIC.len())? != MAGIC {
        return Err(corrupt("bad magic"));
    }
    let version = r.exact(1)?[0];
    if version != FILE_VERSION {
        return Err(corrupt(&format!("unsupported version {version}")));
    }
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
    let mut records = 0u64;
    loop {
        let tag = r.exact(1)?[0];
        if tag == END {
            break;
        }
        let cf = cfs
            .get(tag as usize)
            .ok_or_else(|| corrupt("unknown column family"))?;
        let klen = r.u32()? as usize;
        if klen > top.len() {
            return Err(corrupt("key too long"));
        }
        let key = r.exact(klen)?;
        let vlen = r.u32()? as usize;
        if vlen > 64 * 1024 * 1024 {
            return Err(corrupt("value too long"));
        }
        let value = r.exact(vlen)?;
        batch.put_cf(*cf, key, value);
        records += 1;
    }
    let count = u64::from_le_bytes(r.exact(8)?.try_into().expect("8 bytes"));
    let want = r.crc.clone().finalize();
    let mut crc = [0u8; 4];
    r.inner.read_exact(&mut crc)?;
    if count != records || u32::from_le_bytes(crc) != want {
        return Err(corrupt("checksum or record count mismatch"));
    }
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
