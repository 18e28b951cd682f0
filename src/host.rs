//! Facts about the machine a process runs on that several components need: its host name, its
//! wall clock in milliseconds, and keeping what a process writes to itself.

use std::time::{SystemTime, UNIX_EPOCH};

/// The host's name, as the kernel knows it (the default agent and proxy name).
pub fn host_name() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_string())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Milliseconds since the epoch by this machine's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// From now on, files and directories this process creates are its user's only (umask 077):
/// a manager's RocksDB files, snapshots and keys hold services' environments and the cluster's
/// secrets, and RocksDB creates its files itself. Only for `shoal manager` and `shoal agent`,
/// whose data dirs nobody else reads.
pub fn private_files() {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(0o077));
}

/// Creates `dir` (and its parents) if missing, and makes it its owner's only (0700), whatever
/// mode an earlier version or an operator left it with.
pub fn private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}
