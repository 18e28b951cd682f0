//! Where `shoal dev` puts things: `DIR/mN` manager and `DIR/aN` agent data dirs, `DIR/logs/mN.log`
//! and `DIR/logs/node-N.log`, and `DIR/cluster.json` (written atomically: a reader sees the old
//! file or the new one, never half of one).

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::DevError;

/// `DIR/cluster.json`: every process with its pid and addresses, plus the join token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterFile {
    /// The manager join token (it joins any node role).
    pub token: String,
    /// The credentials the CLI can use (the first manager's `DATA_DIR/tls`).
    #[serde(default)]
    pub tls_dir: PathBuf,
    pub managers: Vec<ManagerEntry>,
    #[serde(default)]
    pub agents: Vec<AgentEntry>,
    /// With `--hosts N`: the hosts (namespaces with their own engine); their agents are in `agents`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<HostEntry>,
    pub proxy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManagerEntry {
    pub id: u64,
    pub pid: u32,
    pub grpc: String,
    pub docker_api: String,
    pub http: String,
    pub data_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentEntry {
    /// The node's name: `node-1`...
    pub name: String,
    pub pid: u32,
    /// The IP the agent advertises and publishes its tasks' ports on (`127.0.0.2`...).
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

/// One host of `--hosts N`: a network namespace with its own Docker engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// `h1`...; its agent's node is `host-1`..., labelled `host=h1`.
    pub name: String,
    /// The host's engine as DOCKER_HOST takes it (`unix:///run/shoal-hosts/.../docker.sock`).
    pub docker_host: String,
    /// The host's address (its namespace's IP on the hosts' bridge).
    pub addr: String,
    /// The network namespace (`ip netns exec NS ...`, `nsenter --net=/var/run/netns/NS`).
    pub netns: String,
    pub dockerd_pid: u32,
    pub dockerd_log: PathBuf,
}

/// The most agents `shoal dev` runs: each needs its own 127.0.0.x address, from 127.0.0.2.
pub const MAX_AGENTS: u32 = 253;

/// One agent `shoal dev` runs: `node-I` on 127.0.0.(I+1), node-1 labelled `storage=ssd` as the
/// seed's first host. Derived from the index alone, so a restarted `shoal dev` finds the same
/// data dirs (and so the same node ids) again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AgentSlot {
    pub(crate) name: String,
    pub(crate) addr: Ipv4Addr,
    pub(crate) labels: Vec<String>,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: PathBuf,
    /// Another engine than the local one (`--docker`), and where to serve it to the managers.
    pub(crate) engine: Option<(String, String)>,
}

impl AgentSlot {
    pub(crate) fn agent_args(&self, join: &[String], token: &str) -> Vec<String> {
        let mut args = vec![
            "agent".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--join".into(),
            join.join(","),
            "--token".into(),
            token.to_string(),
            "--name".into(),
            self.name.clone(),
            "--advertise-addr".into(),
            self.addr.to_string(),
        ];
        for label in &self.labels {
            args.extend(["--label".into(), label.clone()]);
        }
        if let Some((docker, listen)) = &self.engine {
            args.extend([
                "--docker".into(),
                docker.clone(),
                "--engine-listen".into(),
                listen.clone(),
            ]);
        }
        args
    }
}

/// Agents `node-1..=node-count`, at most `MAX_AGENTS`.
pub(crate) fn agent_slots(dir: &Path, count: u32) -> Vec<AgentSlot> {
    (1..=count.min(MAX_AGENTS))
        .map(|i| {
            let name = format!("node-{i}");
            AgentSlot {
                addr: Ipv4Addr::new(127, 0, 0, (i + 1) as u8),
                labels: if i == 1 {
                    vec!["storage=ssd".into()]
                } else {
                    Vec::new()
                },
                data_dir: dir.join(format!("a{i}")),
                log: dir.join("logs").join(format!("{name}.log")),
                name,
                engine: None,
            }
        })
        .collect()
}

/// The agents of `--hosts N`, one per host (`(name, address, DOCKER_HOST)`): `host-I` advertising
/// the host's address (its tasks' ports are published there, inside the namespace), driving the
/// host's engine and serving it to the managers on loopback; labelled `host=hI`, host-1 also
/// `storage=ssd` as the seed's first host. Data in `DIR/hI`, so a restart keeps the node ids.
pub(crate) fn host_agent_slots(dir: &Path, hosts: &[(String, Ipv4Addr, String)]) -> Vec<AgentSlot> {
    hosts
        .iter()
        .enumerate()
        .map(|(i, (host, addr, docker))| {
            let name = format!("host-{}", i + 1);
            let mut labels = vec![format!("host={host}")];
            if i == 0 {
                labels.push("storage=ssd".into());
            }
            AgentSlot {
                addr: *addr,
                labels,
                data_dir: dir.join(host),
                log: dir.join("logs").join(format!("{name}.log")),
                name,
                engine: Some((docker.clone(), "127.0.0.1:0".into())),
            }
        })
        .collect()
}

/// One manager `shoal dev` runs: its name (`m1`...) and where it lives.
#[derive(Debug, Clone)]
pub(crate) struct Slot {
    pub(crate) name: String,
    pub(crate) grpc: SocketAddr,
    pub(crate) http: SocketAddr,
    pub(crate) docker_api: SocketAddr,
    pub(crate) data_dir: PathBuf,
    pub(crate) log: PathBuf,
}

impl Slot {
    pub(crate) fn manager_args(&self) -> Vec<String> {
        vec![
            "manager".into(),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--listen".into(),
            self.grpc.to_string(),
            "--http".into(),
            self.http.to_string(),
            "--docker-api".into(),
            self.docker_api.to_string(),
        ]
    }
}

pub(crate) fn cluster_file_path(dir: &Path) -> PathBuf {
    dir.join("cluster.json")
}

/// Fresh slots on free loopback ports. All listeners stay open until every port is picked, so
/// no port is handed out twice.
pub(crate) fn fresh_slots(dir: &Path, managers: usize) -> Result<Vec<Slot>, DevError> {
    let mut held = Vec::new();
    let mut pick = || -> Result<SocketAddr, DevError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .map_err(DevError::io("picking a free port on", "127.0.0.1"))?;
        let addr = listener
            .local_addr()
            .map_err(DevError::io("picking a free port on", "127.0.0.1"))?;
        held.push(listener);
        Ok(addr)
    };
    let mut slots = Vec::new();
    for i in 1..=managers {
        let name = format!("m{i}");
        slots.push(Slot {
            grpc: pick()?,
            http: pick()?,
            docker_api: pick()?,
            data_dir: dir.join(&name),
            log: dir.join("logs").join(format!("{name}.log")),
            name,
        });
    }
    Ok(slots)
}

/// The slots of a cluster `shoal dev` ran before in `dir`: same ports, same data dirs, so the
/// managers find each other again without `--join`.
pub(crate) fn previous_slots(dir: &Path, file: &ClusterFile) -> Result<Vec<Slot>, DevError> {
    let bad = |reason: String| DevError::Existing {
        dir: cluster_file_path(dir),
        reason,
    };
    let parse = |what: &str, value: &str| -> Result<SocketAddr, DevError> {
        value
            .parse()
            .map_err(|e| bad(format!("bad {what} address {value:?}: {e}")))
    };
    file.managers
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let name = format!("m{}", i + 1);
            Ok(Slot {
                grpc: parse("grpc", &m.grpc)?,
                http: parse("http", &m.http)?,
                docker_api: parse("docker_api", &m.docker_api)?,
                data_dir: m.data_dir.clone(),
                log: dir.join("logs").join(format!("{name}.log")),
                name,
            })
        })
        .collect()
}

pub(crate) fn read_cluster_file(dir: &Path) -> Result<Option<ClusterFile>, DevError> {
    let path = cluster_file_path(dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DevError::Io {
                what: "reading",
                path,
                source: e,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| DevError::Existing {
            dir: path,
            reason: format!("unreadable ({e}); remove it to start afresh"),
        })
}

/// Writes `DIR/cluster.json` through a temporary file and a rename.
pub(crate) fn write_cluster_file(dir: &Path, file: &ClusterFile) -> Result<PathBuf, DevError> {
    let path = cluster_file_path(dir);
    let tmp = dir.join(".cluster.json.tmp");
    let text = serde_json::to_string_pretty(file).expect("plain data");
    let write = || -> std::io::Result<()> {
        // It holds the join token: its user's only.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(DevError::io("writing", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_slots_have_distinct_ports() {
        let dir = Path::new("/tmp/x");
        let slots = fresh_slots(dir, 3).unwrap();
        let mut ports: Vec<u16> = slots
            .iter()
            .flat_map(|s| [s.grpc.port(), s.http.port(), s.docker_api.port()])
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 9);
        assert_eq!(slots[2].data_dir, dir.join("m3"));
    }

    #[test]
    fn cluster_file_round_trips_through_previous_slots() {
        let dir = tempfile::tempdir().unwrap();
        let slots = fresh_slots(dir.path(), 2).unwrap();
        let file = ClusterFile {
            token: "t".into(),
            tls_dir: PathBuf::from("/tmp/x/m1/tls"),
            managers: slots
                .iter()
                .enumerate()
                .map(|(i, s)| ManagerEntry {
                    id: i as u64 + 1,
                    pid: 1,
                    grpc: s.grpc.to_string(),
                    docker_api: s.docker_api.to_string(),
                    http: s.http.to_string(),
                    data_dir: s.data_dir.clone(),
                })
                .collect(),
            agents: vec![],
            hosts: vec![],
            proxy: None,
        };
        write_cluster_file(dir.path(), &file).unwrap();
        let read = read_cluster_file(dir.path()).unwrap().unwrap();
        let again = previous_slots(dir.path(), &read).unwrap();
        assert_eq!(again[1].grpc, slots[1].grpc);
        assert_eq!(again[1].name, "m2");
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("cluster.json")).unwrap(),
        )
        .unwrap();
        assert!(json["proxy"].is_null() && json["agents"].as_array().unwrap().is_empty());
    }

    #[test]
    fn agents_get_their_own_loopback_address_and_node_1_the_ssd_label() {
        let dir = Path::new("/tmp/x");
        let slots = agent_slots(dir, 3);
        assert_eq!(slots.len(), 3);
        assert_eq!(slots[0].name, "node-1");
        assert_eq!(slots[0].addr, Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(slots[2].addr, Ipv4Addr::new(127, 0, 0, 4));
        assert_eq!(slots[2].data_dir, dir.join("a3"));
        assert_eq!(slots[2].log, dir.join("logs/node-3.log"));
        let join = vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()];
        assert_eq!(
            slots[0].agent_args(&join, "tok").join(" "),
            "agent --data-dir /tmp/x/a1 --join 127.0.0.1:1,127.0.0.1:2 --token tok \
             --name node-1 --advertise-addr 127.0.0.2 --label storage=ssd"
        );
        assert!(!slots[1]
            .agent_args(&join, "tok")
            .contains(&"--label".to_string()));
        assert_eq!(
            agent_slots(dir, 1000).last().unwrap().addr,
            Ipv4Addr::new(127, 0, 0, 254)
        );
        assert!(agent_slots(dir, 0).is_empty());
    }

    #[test]
    fn host_agents_drive_their_host_engine_and_carry_its_label() {
        let dir = Path::new("/tmp/x");
        let hosts = vec![
            (
                "h1".to_string(),
                Ipv4Addr::new(10, 214, 3, 11),
                "unix:///r/1.sock".to_string(),
            ),
            (
                "h2".to_string(),
                Ipv4Addr::new(10, 214, 3, 12),
                "unix:///r/2.sock".to_string(),
            ),
        ];
        let slots = host_agent_slots(dir, &hosts);
        assert_eq!(slots[1].name, "host-2");
        assert_eq!(slots[1].data_dir, dir.join("h2"));
        assert_eq!(
            slots[1].agent_args(&["m:1".to_string()], "tok").join(" "),
            "agent --data-dir /tmp/x/h2 --join m:1 --token tok --name host-2 \
             --advertise-addr 10.214.3.12 --label host=h2 \
             --docker unix:///r/2.sock --engine-listen 127.0.0.1:0"
        );
        assert_eq!(slots[0].labels, ["host=h1", "storage=ssd"]);
    }

    #[test]
    fn agent_entries_have_the_documented_fields_and_old_files_still_read() {
        let entry = AgentEntry {
            name: "node-1".into(),
            pid: 42,
            addr: "127.0.0.2".into(),
            data_dir: "/d/a1".into(),
            log: "/d/logs/node-1.log".into(),
        };
        let json = serde_json::to_value(&entry).unwrap();
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["addr", "data_dir", "log", "name", "pid"]);
        let old: ClusterFile =
            serde_json::from_str(r#"{"token":"t","managers":[],"proxy":null}"#).unwrap();
        assert!(old.agents.is_empty());
    }
}
