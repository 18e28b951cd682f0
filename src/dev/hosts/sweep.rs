//! Removing hosts: one host as `Hosts` drops it, and the sweep of what runs whose owner died left
//! behind (a crashed `shoal dev`, a killed test): processes in their namespaces (engines,
//! containerd, shims, containers), mounts and directories, namespaces, links and iptables rules.

use std::path::Path;

use super::net::{namespace_pids, remove_namespace, sh};
use super::{DATA_ROOT, PREFIX, RUN_ROOT};

/// What a sweep removed, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    pub rules: usize,
    pub dirs: Vec<String>,
    pub processes: usize,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        *self == Swept::default()
    }
}

/// The pid encoded in one of our names (`shh<hex>g...`), if it is one.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    if hex.is_empty() || !rest[hex.len()..].starts_with('g') {
        return None;
    }
    u32::from_str_radix(&hex, 16).ok()
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn stale(name: &str) -> bool {
    owner(name).is_some_and(|pid| !pid_alive(pid))
}

/// Kills every process in namespace `ns`; returns how many it signalled.
fn kill_namespace(ns: &str) -> usize {
    let pids = namespace_pids(ns);
    for pid in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Wait (briefly) until they are gone: their mounts and files go with them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !namespace_pids(ns).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    pids.len()
}

/// Detaches every mount under `dirs` (deepest first) and removes the directories.
fn remove_dirs(dirs: &[&Path]) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| dirs.iter().any(|d| Path::new(p).starts_with(d)))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let _ = sh("umount", &["--lazy", point]);
    }
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Removes one host after its engine is stopped: leftovers in its namespace, its directories, the
/// namespace and its veth.
pub(crate) fn remove_host(ns: &str, veth: &str, dirs: &[&Path]) -> usize {
    let killed = kill_namespace(ns);
    remove_dirs(dirs);
    remove_namespace(ns, veth);
    killed
}

/// Removes everything of earlier runs whose owner process is gone.
pub fn sweep_stale() -> Swept {
    let mut swept = Swept::default();
    if let Ok(list) = sh("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if stale(name) {
                swept.processes += kill_namespace(name);
                swept.namespaces.push(name.to_string());
            }
        }
    }
    for root in [RUN_ROOT, DATA_ROOT] {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                remove_dirs(&[&entry.path()]);
                swept.dirs.push(entry.path().display().to_string());
            }
        }
    }
    for ns in &swept.namespaces {
        let _ = sh("ip", &["netns", "del", ns]);
    }
    if let Ok(list) = sh("ip", &["-o", "link", "show"]) {
        for line in list.lines() {
            // "12: shh1a2bg0v1@if11: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if stale(name) && sh("ip", &["link", "del", name]).is_ok() {
                swept.links.push(name.to_string());
            }
        }
    }
    for (table, chain) in [("filter", "FORWARD"), ("nat", "POSTROUTING")] {
        let Ok(rules) = sh("iptables", &["-t", table, "-S", chain]) else {
            continue;
        };
        for rule in rules.lines() {
            let comment = rule
                .split("--comment ")
                .nth(1)
                .map(|c| c.split_whitespace().next().unwrap_or("").trim_matches('"'));
            if comment.is_some_and(stale) {
                let mut args = vec!["-t", table, "-D"];
                args.extend(rule.split_whitespace().skip(1).map(|s| s.trim_matches('"')));
                if sh("iptables", &args).is_ok() {
                    swept.rules += 1;
                }
            }
        }
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner() {
        assert_eq!(owner("shh1a2bg0-h3"), Some(0x1a2b));
        assert_eq!(owner("shh1a2bg12v3"), Some(0x1a2b));
        assert_eq!(owner("shh1a2bg0-br"), Some(0x1a2b));
        assert_eq!(owner("shh1a2bg0"), Some(0x1a2b));
        assert_eq!(owner("shh1a2b-h1"), None);
        assert_eq!(owner("sj1a2b-n1"), None);
        assert_eq!(owner("eth0"), None);
        assert_eq!(owner("shhxyz"), None);
    }

    #[test]
    fn names_of_live_owners_are_not_stale() {
        let me = format!("{PREFIX}{:x}g0-h1", std::process::id());
        assert!(!stale(&me));
        assert!(!stale("docker0"));
    }
}
