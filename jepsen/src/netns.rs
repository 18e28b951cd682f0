//! The test network: one bridge in the harness's namespace and, per manager, a network namespace
//! with a veth into the bridge and its own IP. Partitions are DROP rules in a chain of our own
//! inside each namespace, so healing flushes exactly what we added; the harness (the bridge's
//! address) is never partitioned. Every name carries a run prefix (`sj` + pid in hex); dropping
//! the `Net` removes everything, and a new run sweeps the leftovers of runs whose pid is gone.

use std::net::Ipv4Addr;
use std::process::Command;

use crate::error::HarnessError;

/// The iptables chain, inside each namespace, that holds the partition rules.
const CHAIN: &str = "SHOAL-JEPSEN";
/// Every name we create starts with this, then the pid in hex.
const PREFIX: &str = "sj";

/// Runs `ip`/`iptables`; the error names the command and carries its stderr.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<String, HarnessError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HarnessError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One manager's namespace.
#[derive(Debug, Clone)]
pub struct Slot {
    pub ns: String,
    pub ip: Ipv4Addr,
    veth: String,
}

pub struct Net {
    prefix: String,
    bridge: String,
    pub gateway: Ipv4Addr,
    pub slots: Vec<Slot>,
    forward_rule: Option<Vec<String>>,
}

/// Whether this process can build the network: root, and `ip` and `iptables` on the PATH.
pub fn preflight() -> Result<(), HarnessError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(HarnessError::Preflight(
            "the harness creates network namespaces and iptables rules: run it as root".into(),
        ));
    }
    for tool in ["ip", "iptables"] {
        if sh(tool, &["-V"]).is_err() && sh(tool, &["--version"]).is_err() {
            return Err(HarnessError::Preflight(format!(
                "`{tool}` not found (install iproute2 and iptables)"
            )));
        }
    }
    Ok(())
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid encoded in one of our names (`sj<hex>` then a non-hex marker), if it is one.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let hex: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
    let tail = &rest[hex.len()..];
    if hex.is_empty() || !tail.starts_with(['h', 'p', '-']) {
        return None;
    }
    u32::from_str_radix(&hex, 16).ok()
}

/// Removes namespaces, links and the FORWARD rule of earlier runs whose process is gone.
pub fn sweep_stale() {
    let stale = |name: &str| owner(name).is_some_and(|pid| !pid_alive(pid));
    if let Ok(list) = sh("ip", &["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if stale(name) {
                let _ = sh("ip", &["netns", "del", name]);
            }
        }
    }
    if let Ok(list) = sh("ip", &["-o", "link", "show"]) {
        for line in list.lines() {
            // "12: sj1a2bh1@if11: <...>"
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            if stale(name) {
                let _ = sh("ip", &["link", "del", name]);
            }
        }
    }
    if let Ok(rules) = sh("iptables", &["-S", "FORWARD"]) {
        for rule in rules.lines() {
            let comment = rule
                .split("--comment ")
                .nth(1)
                .map(|c| c.split_whitespace().next().unwrap_or("").trim_matches('"'));
            if comment.is_some_and(|c| stale(&format!("{c}-"))) {
                let spec: Vec<&str> = rule.split_whitespace().skip(1).collect();
                let mut args = vec!["-D"];
                args.extend(spec.iter().map(|s| s.trim_matches('"')));
                let _ = sh("iptables", &args);
            }
        }
    }
}

impl Net {
    /// Builds a bridge and `n` namespaces. On error, whatever was made is removed (by Drop).
    pub fn create(n: usize) -> Result<Net, HarnessError> {
        let pid = std::process::id();
        let prefix = format!("{PREFIX}{pid:x}");
        let used = sh("ip", &["-o", "-4", "addr", "show"]).unwrap_or_default();
        let third = (0..250u32)
            .map(|k| (pid + k) % 250 + 1)
            .find(|t| !used.contains(&format!("10.213.{t}.")))
            .ok_or_else(|| HarnessError::Preflight("no free 10.213.x.0/24 subnet".into()))?;
        let third = u8::try_from(third).unwrap_or(1);
        let mut net = Net {
            bridge: format!("{prefix}-br"),
            prefix,
            gateway: Ipv4Addr::new(10, 213, third, 1),
            slots: Vec::new(),
            forward_rule: None,
        };
        let br = net.bridge.clone();
        sh("ip", &["link", "add", &br, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{}/24", net.gateway), "dev", &br],
        )?;
        sh("ip", &["link", "set", &br, "up"])?;
        // With br_netfilter loaded (Docker loads it), bridged traffic crosses FORWARD, whose
        // policy Docker sets to DROP: let our bridge's own traffic through, and only it.
        let nf = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .unwrap_or_default();
        if nf.trim() == "1" {
            let rule: Vec<String> = [
                "FORWARD",
                "-i",
                &br,
                "-o",
                &br,
                "-m",
                "comment",
                "--comment",
                &net.prefix,
                "-j",
                "ACCEPT",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut args = vec!["-I"];
            args.extend(rule.iter().map(String::as_str));
            sh("iptables", &args)?;
            net.forward_rule = Some(rule);
        }
        for i in 1..=n {
            net.add_slot(i, Ipv4Addr::new(10, 213, third, 10 + i as u8))?;
        }
        Ok(net)
    }

    fn add_slot(&mut self, i: usize, ip: Ipv4Addr) -> Result<(), HarnessError> {
        let ns = format!("{}-n{i}", self.prefix);
        let veth = format!("{}h{i}", self.prefix);
        let peer = format!("{}p{i}", self.prefix);
        sh("ip", &["netns", "add", &ns])?;
        self.slots.push(Slot {
            ns: ns.clone(),
            ip,
            veth: veth.clone(),
        });
        sh(
            "ip",
            &["link", "add", &veth, "type", "veth", "peer", "name", &peer],
        )?;
        sh("ip", &["link", "set", &peer, "netns", &ns])?;
        sh("ip", &["link", "set", &veth, "master", &self.bridge])?;
        sh("ip", &["link", "set", &veth, "up"])?;
        sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", &peer],
        )?;
        sh("ip", &["-n", &ns, "link", "set", &peer, "up"])?;
        // The partition chain, hooked into INPUT and OUTPUT of this namespace only.
        let ipt = |args: &[&str]| -> Result<String, HarnessError> {
            let mut full = vec!["netns", "exec", &ns, "iptables"];
            full.extend(args);
            sh("ip", &full)
        };
        ipt(&["-N", CHAIN])?;
        ipt(&["-I", "INPUT", "-j", CHAIN])?;
        ipt(&["-I", "OUTPUT", "-j", CHAIN])?;
        Ok(())
    }

    /// Drops all traffic between the namespaces of slots `a` and `b` (both directions, rules in
    /// both namespaces). The bridge address, i.e. the harness, stays reachable.
    pub fn block(&self, a: usize, b: usize) -> Result<(), HarnessError> {
        for (from, to) in [(a, b), (b, a)] {
            let ns = &self.slots[from].ns;
            let peer = self.slots[to].ip.to_string();
            for flag in ["-s", "-d"] {
                sh(
                    "ip",
                    &[
                        "netns", "exec", ns, "iptables", "-A", CHAIN, flag, &peer, "-j", "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Removes every partition rule we added (and only those: our chain is flushed).
    pub fn heal(&self) -> Result<(), HarnessError> {
        for slot in &self.slots {
            sh("ip", &["netns", "exec", &slot.ns, "iptables", "-F", CHAIN])?;
        }
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for slot in &self.slots {
            // Deleting one end of a veth deletes the pair.
            let _ = sh("ip", &["link", "del", &slot.veth]);
            let _ = sh("ip", &["netns", "del", &slot.ns]);
        }
        let _ = sh("ip", &["link", "del", &self.bridge]);
        if let Some(rule) = &self.forward_rule {
            let mut args = vec!["-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = sh("iptables", &args);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner() {
        assert_eq!(owner("sj1a2bh3"), Some(0x1a2b));
        assert_eq!(owner("sj1a2b-n1"), Some(0x1a2b));
        assert_eq!(owner("sj1a2b-br"), Some(0x1a2b));
        assert_eq!(owner("sj1a2b"), None);
        assert_eq!(owner("eth0"), None);
        assert_eq!(owner("sjxyz-n1"), None);
    }
}
