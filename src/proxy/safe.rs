//! What may be written into an nginx or haproxy config: the rules every value of a `ProxyModel`
//! must follow (DNS names, `host:port` addresses, plain paths and words), shared by the labels'
//! reader, the model builder, node registration and the renderer, which refuses a model that
//! breaks any of them. Nothing here escapes: a value is plain or it is refused.

use std::net::IpAddr;

use crate::model::{ProxyHost, ProxyModel, Upstream};

/// A DNS name: letters, digits, '-' and '.', not starting or ending with '-' or '.'.
pub fn is_dns_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !v.starts_with(['-', '.'])
        && !v.ends_with(['-', '.'])
}

/// An absolute path with nothing a config could read as syntax (no blanks, quotes, `;`,
/// braces, `#`, `$` or backslashes).
pub fn is_plain_path(v: &str) -> bool {
    v.starts_with('/')
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ";{}'\"\\#$".contains(c))
}

/// A word of an option (`interlock.backend_option`): letters, digits, ' ', '-', '_' and '.'.
pub fn is_option_words(v: &str) -> bool {
    v.chars()
        .all(|c| c.is_ascii_alphanumeric() || " -_.".contains(c))
}

/// An identifier (task id, node name): letters, digits, '-', '_' and '.'.
fn is_ident(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A host a node may advertise: an IP address or a DNS name.
pub fn is_host(v: &str) -> bool {
    v.parse::<IpAddr>().is_ok() || is_dns_name(v)
}

/// `host:port` with a host as [`is_host`] (an IPv6 host in brackets) and a port from 1.
pub fn is_host_port(v: &str) -> bool {
    let Some((host, port)) = v.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0) && !port.starts_with('+');
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => host.parse::<std::net::Ipv4Addr>().is_ok() || is_dns_name(host),
    };
    port_ok && host_ok
}

/// A node's registered address: a host, or `host:port` (the port is not used).
pub fn is_node_addr(v: &str) -> bool {
    is_host(v) || is_host_port(v)
}

/// The upstream address of `host` (an IP or a DNS name) and `port`, as a config takes it
/// (`[v6]:port`); None if the host is neither.
pub fn upstream_addr(host: &str, port: u16) -> Option<String> {
    if port == 0 {
        return None;
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(std::net::SocketAddr::new(ip, port).to_string()),
        Err(_) if is_dns_name(host) => Some(format!("{host}:{port}")),
        Err(_) => None,
    }
}

/// Checks every value of `model` that a template writes into a config; the first that breaks
/// its rule is the error, naming the host and the field.
pub fn check_model(model: &ProxyModel) -> Result<(), String> {
    for host in &model.hosts {
        check_host(host).map_err(|e| format!("host {:?}: {e}", host.name))?;
    }
    Ok(())
}

/// Checks one upstream server: its address, task id and node name.
pub fn check_upstream(u: &Upstream) -> Result<(), String> {
    let bad = |field: &str, v: &str, rule: &str| Err(format!("{field} {v:?} is not {rule}"));
    if !is_host_port(&u.addr) {
        return bad("upstream", &u.addr, "host:port");
    }
    if !is_ident(&u.task_id) {
        return bad("task id", &u.task_id, "letters, digits, '-', '_' and '.'");
    }
    if !is_ident(&u.node) {
        return bad("node", &u.node, "letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

fn check_host(h: &ProxyHost) -> Result<(), String> {
    let bad = |field: &str, v: &str, rule: &str| Err(format!("{field} {v:?} is not {rule}"));
    if !is_dns_name(&h.name) {
        return bad("name", &h.name, "a DNS name");
    }
    if let Some(a) = h.aliases.iter().find(|a| !is_dns_name(a)) {
        return bad("alias", a, "a DNS name");
    }
    for u in &h.upstreams {
        check_upstream(u)?;
    }
    let paths = [&h.ssl_cert, &h.ssl_cert_key]
        .into_iter()
        .filter(|p| !p.is_empty())
        .chain(&h.websocket_endpoints)
        .chain(&h.context_root)
        .chain(&h.health_check);
    for p in paths {
        if !is_plain_path(p) {
            return bad(
                "path",
                p,
                "an absolute path without blanks or config syntax",
            );
        }
    }
    if let Some(o) = h.backend_options.iter().find(|o| !is_option_words(o)) {
        return bad(
            "backend option",
            o,
            "words of letters, digits, '-', '_' and '.'",
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        for ok in ["127.0.0.1:80", "[::1]:8080", "node-1.example:443", "a:1"] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:+80",
            "127.0.0.1:65536",
            "::1:80",
            "1.2.3.4:80; }",
            "1.2.3.4:80\n",
            "a b:80",
            "evil;server 6.6.6.6:80",
            "x#:80",
            ":80",
            "[1.2.3.4]:80",
        ] {
            assert!(!is_host_port(bad), "{bad:?}");
        }
        for ok in ["10.0.0.1", "fe80::1", "node-1", "10.0.0.1:7946"] {
            assert!(is_node_addr(ok), "{ok}");
        }
        for bad in ["", "10.0.0.1;", "a}b", "a\nb", "a b", "#", "-a", "[::1]"] {
            assert!(!is_node_addr(bad), "{bad:?}");
        }
        assert_eq!(upstream_addr("::1", 80).as_deref(), Some("[::1]:80"));
        assert_eq!(
            upstream_addr("10.0.0.1", 80).as_deref(),
            Some("10.0.0.1:80")
        );
        assert_eq!(upstream_addr("node-1", 80).as_deref(), Some("node-1:80"));
        assert_eq!(upstream_addr("a;b", 80), None);
        assert_eq!(upstream_addr("10.0.0.1", 0), None);
    }
}

#[cfg(test)]
mod random {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Random strings over an alphabet rich in config syntax: whatever the checks accept is
    /// plain (no blank, `;`, brace, `#`, quote or control character), and never panics them.
    #[test]
    fn whatever_passes_is_plain() {
        const ALPHABET: &[char] = &[
            'a', 'z', '0', '9', '.', '-', ':', '[', ']', '/', ';', '{', '}', '#', ' ', '\n', '\t',
            '"', '\'', '$', '\\', '_', 'é', '\0',
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        let syntax = |s: &str| {
            s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || ";{}#\"'$\\".contains(c))
        };
        for _ in 0..20_000 {
            let len = rng.random_range(0..24);
            let s: String = (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect();
            if is_host_port(&s) || is_node_addr(&s) || is_dns_name(&s) {
                assert!(!syntax(&s), "{s:?} passed");
            }
            if is_plain_path(&s) {
                assert!(!syntax(&s) && s.starts_with('/'), "{s:?} passed as a path");
            }
            if let Some(addr) = upstream_addr(&s, rng.random()) {
                assert!(is_host_port(&addr), "{s:?} made {addr:?}");
            }
        }
    }
}
