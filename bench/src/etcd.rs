//! A throwaway 3-member etcd cluster on loopback, the yardstick of `shoal-bench compare`, and the
//! load generator's driver for it (etcd's own gRPC API through the `etcd-client` crate). Each
//! member runs in its own process group and is SIGKILLed when the `EtcdCluster` is dropped.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use etcd_client::{Client, ConnectOptions, GetOptions, KvClient};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::load::KvDriver;

/// How long the members may take to elect a leader.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one request, as for shoal's driver.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `etcd` binary: `--etcd-bin`, else `etcd` on the PATH, installing Debian's `etcd-server`
/// when there is none (as root, or through sudo). Returns the binary and its version line.
pub(crate) fn etcd_exe(given: Option<&Path>) -> Result<(PathBuf, String)> {
    let exe = match given {
        Some(p) => p.to_path_buf(),
        None => match which("etcd") {
            Some(p) => p,
            None => {
                install_etcd()?;
                which("etcd").context("etcd-server is installed but no etcd is on the PATH")?
            }
        },
    };
    let out = Command::new(&exe)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("etcd Version:"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("{} --version printed no version", exe.display()))?;
    if !version.starts_with("3.4.") {
        eprintln!("warning: etcd {version}, not 3.4 as the comparison is meant to use");
    }
    Ok((exe, version))
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

fn install_etcd() -> Result<()> {
    eprintln!("etcd not found: installing Debian's etcd-server");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = if root {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        };
        let status = cmd
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "etcd-server",
    ])
}

struct Member {
    client: SocketAddr,
    child: Child,
}

pub(crate) struct EtcdCluster {
    members: Vec<Member>,
}

impl EtcdCluster {
    /// Starts `n` members with data dirs and logs under `dir` and waits until every one
    /// reports the same leader.
    pub(crate) async fn start(exe: &Path, dir: &Path, n: usize) -> Result<EtcdCluster> {
        // Every listener stays open until all ports are picked, so none is handed out twice.
        let listeners = (0..n * 2)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<Vec<_>, _>>()?;
        let ports = listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        drop(listeners);
        let initial = (0..n)
            .map(|i| format!("e{}=http://{}", i + 1, ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: Vec::with_capacity(n),
        };
        for i in 0..n {
            let name = format!("e{}", i + 1);
            let (client, peer) = (ports[2 * i], ports[2 * i + 1]);
            let log = dir.join(format!("{name}.log"));
            let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
            let err = out.try_clone()?;
            let child = Command::new(exe)
                .arg("--name")
                .arg(&name)
                .arg("--data-dir")
                .arg(dir.join(&name))
                .arg(format!("--listen-client-urls=http://{client}"))
                .arg(format!("--advertise-client-urls=http://{client}"))
                .arg(format!("--listen-peer-urls=http://{peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=shoal-bench")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .with_context(|| format!("starting {name} ({})", exe.display()))?;
            cluster.members.push(Member { client, child });
        }
        cluster.wait_for_leader(dir).await?;
        Ok(cluster)
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    async fn wait_for_leader(&mut self, dir: &Path) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::from("no answer yet");
        loop {
            for (i, m) in self.members.iter_mut().enumerate() {
                if let Some(status) = m.child.try_wait()? {
                    bail!(
                        "etcd member e{} exited during start-up ({status}); see {}",
                        i + 1,
                        dir.join(format!("e{}.log", i + 1)).display()
                    );
                }
            }
            let mut leaders = Vec::new();
            for addr in self.addrs() {
                match leader_of(addr).await {
                    Ok(l) => leaders.push(l),
                    Err(e) => last = format!("{addr}: {e:#}"),
                }
            }
            if leaders.len() == self.members.len()
                && leaders[0] != 0
                && leaders.iter().all(|l| *l == leaders[0])
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("etcd elected no leader within {START_TIMEOUT:?} (last: {last})");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Ok(pid) = i32::try_from(m.child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = m.child.wait();
        }
    }
}

async fn leader_of(addr: SocketAddr) -> Result<u64> {
    let mut client = connect(addr).await?;
    Ok(client.status().await?.leader())
}

/// A client of its own (one connection) to the member at `addr`.
pub(crate) async fn connect(addr: SocketAddr) -> Result<Client> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(REQUEST_TIMEOUT);
    Client::connect([format!("http://{addr}")], Some(options))
        .await
        .with_context(|| format!("connecting to etcd at {addr}"))
}

/// The load generator's driver: linearizable reads are etcd's default ranges, stale reads its
/// `serializable` ones (served by the member asked, as shoal's `stale`).
pub(crate) struct EtcdDriver {
    kv: KvClient,
}

impl EtcdDriver {
    pub(crate) async fn connect(addr: SocketAddr) -> Result<EtcdDriver> {
        Ok(EtcdDriver {
            kv: connect(addr).await?.kv_client(),
        })
    }
}

impl KvDriver for EtcdDriver {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.kv.put(key, value, None).await?;
        Ok(())
    }

    async fn get(&mut self, key: Vec<u8>, stale: bool) -> Result<Option<Vec<u8>>> {
        let options = stale.then(|| GetOptions::new().with_serializable());
        let resp = self.kv.get(key, options).await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }
}
