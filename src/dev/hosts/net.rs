//! The hosts' network: one bridge in the root namespace and, per host, a network namespace with a
//! veth into the bridge, its own IP and a default route through the bridge. Forwarding and NAT in
//! the root namespace (`FORWARD` accepts for the bridge, a `MASQUERADE` for its subnet) let the
//! hosts' containers reach the outside; every rule carries the run's prefix as its comment, so a
//! sweep finds the rules of a crashed run.

use std::net::Ipv4Addr;
use std::process::Command;

use super::HostsError;

/// Runs a command; the error names it and carries its stderr.
pub(crate) fn sh(program: &str, args: &[&str]) -> Result<String, HostsError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| HostsError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(HostsError::Command {
            command: format!("{program} {}", args.join(" ")),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The bridge, its subnet and the root namespace's rules of one run.
pub(crate) struct Bridge {
    pub(crate) name: String,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mtu: u32,
    rules: Vec<(&'static str, Vec<String>)>,
}

/// The MTU of the root namespace's default route device (1500 when there is none).
fn uplink_mtu() -> u32 {
    let route = sh("ip", &["-o", "route", "show", "default"]).unwrap_or_default();
    let dev = route
        .split_whitespace()
        .skip_while(|w| *w != "dev")
        .nth(1)
        .unwrap_or("");
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .ok()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500)
}

impl Bridge {
    /// Creates `PREFIX-br` on a free 10.214.x.0/24 and its forwarding and NAT rules. On error,
    /// whatever was made is removed (by Drop).
    pub(crate) fn create(prefix: &str, seed: u32) -> Result<Bridge, HostsError> {
        let used = sh("ip", &["-o", "-4", "addr", "show"]).unwrap_or_default();
        let third = (0..250u32)
            .map(|k| (seed + k) % 250 + 1)
            .find(|t| !used.contains(&format!("10.214.{t}.")))
            .ok_or(HostsError::NoSubnet)?;
        let third = u8::try_from(third).unwrap_or(1);
        let mut bridge = Bridge {
            name: format!("{prefix}-br"),
            gateway: Ipv4Addr::new(10, 214, third, 1),
            mtu: uplink_mtu(),
            rules: Vec::new(),
        };
        let br = bridge.name.clone();
        sh("ip", &["link", "add", &br, "type", "bridge"])?;
        sh(
            "ip",
            &["addr", "add", &format!("{}/24", bridge.gateway), "dev", &br],
        )?;
        sh("ip", &["link", "set", &br, "mtu", &bridge.mtu.to_string()])?;
        sh("ip", &["link", "set", &br, "up"])?;
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let subnet = format!("10.214.{third}.0/24");
        let comment = ["-m", "comment", "--comment", prefix];
        // Docker sets FORWARD's policy to DROP: accept what enters or leaves our bridge (between
        // hosts, and out to the world), before Docker's own chains.
        for dir in ["-i", "-o"] {
            let mut rule = vec!["FORWARD".to_string(), dir.into(), br.clone()];
            rule.extend(comment.iter().map(|s| s.to_string()));
            rule.extend(["-j".into(), "ACCEPT".into()]);
            bridge.add_rule("filter", "-I", rule)?;
        }
        let mut nat = vec![
            "POSTROUTING".to_string(),
            "-s".into(),
            subnet,
            "!".into(),
            "-o".into(),
            br.clone(),
        ];
        nat.extend(comment.iter().map(|s| s.to_string()));
        nat.extend(["-j".into(), "MASQUERADE".into()]);
        bridge.add_rule("nat", "-A", nat)?;
        Ok(bridge)
    }

    fn add_rule(
        &mut self,
        table: &'static str,
        how: &str,
        rule: Vec<String>,
    ) -> Result<(), HostsError> {
        let mut args = vec!["-t", table, how];
        args.extend(rule.iter().map(String::as_str));
        sh("iptables", &args)?;
        self.rules.push((table, rule));
        Ok(())
    }

    /// The address of host `i` (1-based) on the bridge.
    pub(crate) fn host_ip(&self, i: usize) -> Ipv4Addr {
        let [a, b, c, _] = self.gateway.octets();
        Ipv4Addr::new(a, b, c, 10 + i as u8)
    }

    /// Creates namespace `ns` with veth `veth` (its peer `peer` inside) on the bridge at `ip`.
    pub(crate) fn add_namespace(
        &self,
        ns: &str,
        veth: &str,
        peer: &str,
        ip: Ipv4Addr,
    ) -> Result<(), HostsError> {
        sh("ip", &["netns", "add", ns])?;
        sh(
            "ip",
            &["link", "add", veth, "type", "veth", "peer", "name", peer],
        )?;
        let mtu = self.mtu.to_string();
        sh("ip", &["link", "set", peer, "netns", ns])?;
        sh("ip", &["link", "set", veth, "mtu", &mtu])?;
        sh("ip", &["link", "set", veth, "master", &self.name])?;
        sh("ip", &["link", "set", veth, "up"])?;
        sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &["-n", ns, "addr", "add", &format!("{ip}/24"), "dev", peer],
        )?;
        sh("ip", &["-n", ns, "link", "set", peer, "mtu", &mtu])?;
        sh("ip", &["-n", ns, "link", "set", peer, "up"])?;
        sh(
            "ip",
            &[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &self.gateway.to_string(),
            ],
        )?;
        Ok(())
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = sh("ip", &["link", "del", &self.name]);
        for (table, rule) in &self.rules {
            let mut args = vec!["-t", table, "-D"];
            args.extend(rule.iter().map(String::as_str));
            let _ = sh("iptables", &args);
        }
    }
}

/// Removes namespace `ns` and the veth pair `veth` (deleting one end deletes both).
pub(crate) fn remove_namespace(ns: &str, veth: &str) {
    let _ = sh("ip", &["link", "del", veth]);
    let _ = sh("ip", &["netns", "del", ns]);
}

/// The pids of every process in namespace `ns`.
pub(crate) fn namespace_pids(ns: &str) -> Vec<i32> {
    sh("ip", &["netns", "pids", ns])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
