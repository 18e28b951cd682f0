//! The proxy of `shoal dev --proxy`: a real nginx on a free port, unprivileged paths under
//! `DIR/proxy/` (`nginx.conf`, `conf.d/`, `run/` for its pid, logs and temp files), started with an
//! empty but valid config, and a `shoal proxy` beside it that applies the cluster's config and
//! reloads nginx through its pid file. Both run in their own process groups like every child.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::procs::{self, Group};
use super::DevError;
use crate::client::{Client, ClientConfig};
use crate::model::{keys, ProxyConfig, ProxyModel, ProxyStatus};
use crate::proxy::render::{render, ProxyKind, RenderOptions};

/// How long nginx and `shoal proxy` may take to come up.
const PROXY_START_TIMEOUT: Duration = Duration::from_secs(30);
/// The name `shoal proxy` reports its status under.
const NAME: &str = "proxy-1";

/// cluster.json's `proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyEntry {
    /// `shoal proxy`'s pid.
    pub pid: u32,
    /// nginx's master process.
    pub nginx_pid: u32,
    /// The HTTP port nginx listens on (every address).
    pub port: u16,
    pub https_port: u16,
    /// The config file nginx runs from and `shoal proxy` rewrites.
    pub config: PathBuf,
    /// `shoal proxy`'s log.
    pub log: PathBuf,
    pub nginx_log: PathBuf,
    /// The name of its status at `/shoal/proxy/status/<name>`.
    pub name: String,
}

/// Where the proxy of a `shoal dev` in `dir` lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProxySlot {
    pub(crate) prefix: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) run_dir: PathBuf,
    pub(crate) pid_file: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) nginx_log: PathBuf,
    pub(crate) port: u16,
    pub(crate) https_port: u16,
}

impl ProxySlot {
    /// The same ports as the previous run when they are still free, else fresh ones.
    pub(crate) fn new(dir: &Path, previous: Option<&serde_json::Value>) -> Result<Self, DevError> {
        let previous: Option<ProxyEntry> =
            previous.and_then(|v| serde_json::from_value(v.clone()).ok());
        let mut held = Vec::new();
        let mut pick = |wanted: Option<u16>| -> Result<u16, DevError> {
            let listener = wanted
                .and_then(|port| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).ok())
                .map_or_else(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)), Ok)
                .map_err(DevError::io("picking a free port on", "0.0.0.0"))?;
            let port = listener
                .local_addr()
                .map_err(DevError::io("picking a free port on", "0.0.0.0"))?
                .port();
            held.push(listener);
            Ok(port)
        };
        let port = pick(previous.as_ref().map(|p| p.port))?;
        let https_port = pick(previous.as_ref().map(|p| p.https_port))?;
        let prefix = dir.join("proxy");
        let run_dir = prefix.join("run");
        Ok(ProxySlot {
            config: prefix.join("nginx.conf"),
            pid_file: run_dir.join("nginx.pid"),
            log: dir.join("logs").join("proxy.log"),
            nginx_log: dir.join("logs").join("nginx.log"),
            prefix,
            run_dir,
            port,
            https_port,
        })
    }

    /// nginx in the foreground, its prefix (relative paths, `conf.d`) under `DIR/proxy/`.
    pub(crate) fn nginx_args(&self) -> Vec<String> {
        vec![
            "-c".into(),
            self.config.display().to_string(),
            "-p".into(),
            format!("{}/", self.prefix.display()),
            "-g".into(),
            "daemon off;".into(),
        ]
    }

    pub(crate) fn proxy_args(&self, join: &[String], token: &str) -> Vec<String> {
        vec![
            "proxy".into(),
            "--join".into(),
            join.join(","),
            "--token".into(),
            token.to_string(),
            "--kind".into(),
            "nginx".into(),
            "--config".into(),
            self.config.display().to_string(),
            "--pid-file".into(),
            self.pid_file.display().to_string(),
            "--listen-port".into(),
            self.port.to_string(),
            "--https-port".into(),
            self.https_port.to_string(),
            "--run-dir".into(),
            self.run_dir.display().to_string(),
            "--name".into(),
            NAME.into(),
        ]
    }

    /// `DIR/proxy/{conf.d,run}` and a valid config with no hosts (every request answers 503).
    pub(crate) fn prepare(&self) -> Result<(), DevError> {
        for dir in [self.prefix.join("conf.d"), self.run_dir.clone()] {
            std::fs::create_dir_all(&dir).map_err(DevError::io("creating", &dir))?;
        }
        let options = RenderOptions {
            http_port: self.port,
            https_port: self.https_port,
            run_dir: Some(self.run_dir.display().to_string()),
        };
        let text = render(ProxyKind::Nginx, &ProxyModel::default(), 0, &options, None)
            .expect("the built-in template renders an empty model");
        let tmp = self.prefix.join(".nginx.conf.dev-tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &self.config))
            .map_err(DevError::io("writing", &self.config))
    }
}

/// Starts nginx, waits until it listens, then starts `shoal proxy` and waits until it reports.
pub(crate) async fn start(
    exe: &Path,
    nginx: &Path,
    slot: &ProxySlot,
    managers: &[String],
    token: &str,
    tls_dir: &Path,
    group: &mut Group,
) -> Result<ProxyEntry, DevError> {
    slot.prepare()?;
    // A pid file left by a killed nginx would be signalled by `shoal proxy` before the new one
    // writes its own.
    let _ = std::fs::remove_file(&slot.pid_file);
    let nginx_index = group.spawn("nginx", "nginx", nginx, &slot.nginx_args(), &slot.nginx_log)?;
    let deadline = tokio::time::Instant::now() + PROXY_START_TIMEOUT;
    loop {
        alive(group, nginx_index, "nginx", &slot.nginx_log)?;
        let listening = TcpStream::connect((Ipv4Addr::LOCALHOST, slot.port)).is_ok();
        if listening && std::fs::metadata(&slot.pid_file).is_ok_and(|m| m.len() > 0) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(timeout(
                "nginx",
                "nginx",
                "listen on its port",
                &slot.nginx_log,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let args = slot.proxy_args(managers, token);
    let proxy_index = group.spawn("proxy", NAME, exe, &args, &slot.log)?;
    let config = super::client_config(managers.to_vec(), tls_dir);
    loop {
        alive(group, proxy_index, NAME, &slot.log)?;
        if reported(&config).await {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(timeout("proxy", NAME, "report its status", &slot.log));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(ProxyEntry {
        pid: group.get(proxy_index).pid,
        nginx_pid: group.get(nginx_index).pid,
        port: slot.port,
        https_port: slot.https_port,
        config: slot.config.clone(),
        log: slot.log.clone(),
        nginx_log: slot.nginx_log.clone(),
        name: NAME.into(),
    })
}

/// Whether the proxy's status is in the store and has caught up with the stored config (if the
/// leader has written one yet) or says why it could not.
async fn reported(config: &ClientConfig) -> bool {
    let Ok(mut client) = Client::connect(config.clone()).await else {
        return false;
    };
    let status_key = format!("{}{NAME}", keys::PROXY_STATUS);
    let Ok(Some((status, _))) = read::<ProxyStatus>(&mut client, &status_key).await else {
        return false;
    };
    match read::<ProxyConfig>(&mut client, keys::PROXY_CONFIG).await {
        Ok(Some((_, revision))) => status.applied_revision >= revision || status.error.is_some(),
        // No config yet (or an unreadable one, which the proxy reports itself).
        Ok(None) | Err(()) => true,
    }
}

async fn read<T: serde::de::DeserializeOwned>(
    client: &mut Client,
    key: &str,
) -> Result<Option<(T, u64)>, ()> {
    let req = shoal_proto::v1::RangeRequest {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    };
    let resp = client.range(req).await.map_err(|_| ())?;
    let Some(kv) = resp.kvs.first() else {
        return Ok(None);
    };
    let value = serde_json::from_slice(&kv.value).map_err(|_| ())?;
    Ok(Some((value, kv.mod_revision)))
}

fn alive(group: &mut Group, index: usize, name: &str, log: &Path) -> Result<(), DevError> {
    match group.exited(index) {
        None => Ok(()),
        Some(status) => Err(DevError::ExitedEarly {
            kind: group.get(index).kind,
            name: name.to_string(),
            status,
            last_log_line: procs::last_log_line(log),
            log: log.to_path_buf(),
        }),
    }
}

fn timeout(kind: &'static str, name: &str, what: &'static str, log: &Path) -> DevError {
    DevError::StartTimeout {
        kind,
        name: name.to_string(),
        what,
        waited: PROXY_START_TIMEOUT,
        log: log.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_lays_out_dir_proxy_and_reuses_free_ports() {
        let dir = Path::new("/tmp/x");
        let slot = ProxySlot::new(dir, None).unwrap();
        assert_ne!(slot.port, slot.https_port);
        assert_eq!(slot.config, dir.join("proxy/nginx.conf"));
        assert_eq!(slot.pid_file, dir.join("proxy/run/nginx.pid"));
        assert_eq!(
            slot.nginx_args().join(" "),
            "-c /tmp/x/proxy/nginx.conf -p /tmp/x/proxy/ -g daemon off;"
        );
        let args = slot.proxy_args(&["127.0.0.1:1".into(), "127.0.0.1:2".into()], "tok");
        assert_eq!(
            args.join(" "),
            format!(
                "proxy --join 127.0.0.1:1,127.0.0.1:2 --token tok --kind nginx \
                 --config /tmp/x/proxy/nginx.conf --pid-file /tmp/x/proxy/run/nginx.pid \
                 --listen-port {} --https-port {} --run-dir /tmp/x/proxy/run --name proxy-1",
                slot.port, slot.https_port
            )
        );

        let entry = ProxyEntry {
            pid: 1,
            nginx_pid: 2,
            port: slot.port,
            https_port: slot.https_port,
            config: slot.config.clone(),
            log: slot.log.clone(),
            nginx_log: slot.nginx_log.clone(),
            name: NAME.into(),
        };
        let json = serde_json::to_value(&entry).unwrap();
        for field in ["pid", "nginx_pid", "port", "config", "log"] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        let again = ProxySlot::new(dir, Some(&json)).unwrap();
        assert_eq!((again.port, again.https_port), (slot.port, slot.https_port));
    }

    #[test]
    fn the_initial_config_is_written_and_valid() {
        let dir = tempfile::tempdir().unwrap();
        let slot = ProxySlot::new(dir.path(), None).unwrap();
        slot.prepare().unwrap();
        let text = std::fs::read_to_string(&slot.config).unwrap();
        assert!(
            text.contains(&format!("listen {} default_server", slot.port)),
            "{text}"
        );
        assert!(
            text.contains(&format!("pid {}", slot.pid_file.display())),
            "{text}"
        );
        assert!(slot.prefix.join("conf.d").is_dir() && slot.run_dir.is_dir());
        let Some(nginx) = crate::proxy::find_program("nginx") else {
            eprintln!("nginx is not installed: not validated");
            return;
        };
        let out = std::process::Command::new(nginx)
            .args(["-t", "-q", "-c"])
            .arg(&slot.config)
            .arg("-p")
            .arg(format!("{}/", slot.prefix.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}
