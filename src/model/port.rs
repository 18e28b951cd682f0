//! Published ports: as a service asks for them (`PortSpec`, spelled as `-p` spells them: `80`,
//! `8080:80`, `8080:80/udp`) and as the engine published them (`PublishedPort`). Only the engine
//! picks an ephemeral host port; a fixed one is a placement rule (one per node and protocol).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::ModelError;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A published port. No host port means an ephemeral one chosen by the engine (never conflicts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSpec {
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub host_port: Option<u16>,
}

/// A port the engine actually published for a task's container, as the agent observed it (an
/// ephemeral host port resolved): the observed side of a `PortSpec`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPort {
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub host_ip: String,
    pub host_port: u16,
}

impl FromStr for PortSpec {
    type Err = ModelError;

    /// `[HOST:]CONTAINER[/tcp|/udp]`.
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::Port(s.to_string());
        let (ports, protocol) = match s.split_once('/') {
            None => (s, Protocol::Tcp),
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad()),
        };
        let number = |p: &str| p.parse::<u16>().ok().filter(|&n| n != 0).ok_or_else(bad);
        let (host_port, container_port) = match ports.split_once(':') {
            None => (None, number(ports)?),
            Some((host, container)) => (Some(number(host)?), number(container)?),
        };
        Ok(PortSpec {
            container_port,
            protocol,
            host_port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_publish_syntax() {
        let p = |s: &str| s.parse::<PortSpec>();
        assert_eq!(
            p("80"),
            Ok(PortSpec {
                container_port: 80,
                protocol: Protocol::Tcp,
                host_port: None
            })
        );
        assert_eq!(
            p("8080:80/udp"),
            Ok(PortSpec {
                container_port: 80,
                protocol: Protocol::Udp,
                host_port: Some(8080)
            })
        );
        for bad in ["", "http", "0", "70000", "80/sctp", "a:80", "1:2:3", ":80"] {
            let err = p(bad).unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad}: {err}"
            );
        }
    }
}
