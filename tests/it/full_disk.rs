//! A manager whose disk fills up: it stops with one clear error line and a non-zero exit, and
//! once the disk has room again every acknowledged write is there, and no refused one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use tokio::time::sleep;

use crate::cluster::{assert_contains, put, read_prefix, serial, tail, Manager};

/// A small tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "mounting a tmpfs at {} failed: this test needs root",
            path.display()
        );
        SmallDisk(path)
    }

    fn grow(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "growing the tmpfs at {} failed", self.0.display());
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A value that does not compress away, recognisable per key.
fn value(i: usize) -> String {
    let mut x = i as u64 * 2654435761 + 1;
    let filler: String = (0..300_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    format!("{i}:{filler}")
}

async fn wait_leader(m: &Manager) {
    for _ in 0..300 {
        if m.status().await.is_ok_and(|s| s.leader_id != 0) {
            return;
        }
        sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{} never elected itself; log:\n{}",
        m.name,
        tail(&m.log_text())
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_stops_the_manager_and_loses_no_acknowledged_write() {
    let _serial = serial().await;
    let root = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(root.path().join("disk"), "16m");
    let mut m = Manager::new(&disk.0, "m1");
    m.log = root.path().join("m1.log");
    m.spawn(&[]);
    wait_leader(&m).await;

    let mut kv = m.kv();
    let mut acked = BTreeMap::new();
    let mut refused = None;
    for i in 0..200 {
        let (key, val) = (format!("big/{i:03}"), value(i));
        match put(&mut kv, &key, &val).await {
            Ok(_) => {
                acked.insert(key, val);
            }
            Err(e) => {
                refused = Some((key, e));
                break;
            }
        }
    }
    let (refused_key, err) = refused.expect("200 writes of 300 KB fit in a 16 MiB disk?");
    assert!(!acked.is_empty(), "the very first write failed: {err}");

    let status = m
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the manager kept running on a full disk");
    assert!(!status.success(), "the manager exited 0 on a full disk");
    let log = m.log_text();
    let errors: Vec<&str> = log.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "want one error line, got:\n{}", tail(&log));
    assert!(
        errors[0].contains("No space left on device"),
        "the error does not say why: {}",
        errors[0]
    );

    disk.grow("256m");
    m.spawn(&[]);
    wait_leader(&m).await;
    let mut kv = m.kv();
    let stored = read_prefix(&mut kv, "big/", false)
        .await
        .expect("read after restart");
    assert_contains(&stored, &acked, "after the disk grew");
    // The write that failed was never acknowledged; it may or may not have been applied, but
    // nothing else appeared.
    let extra: Vec<&String> = stored
        .keys()
        .filter(|k| !acked.contains_key(*k) && **k != refused_key)
        .collect();
    assert!(extra.is_empty(), "keys nobody wrote: {extra:?}");
}
