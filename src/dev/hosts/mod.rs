//! Several Docker hosts on one machine, for `shoal dev --hosts N` and the tests: each host is a
//! network namespace with a veth into one bridge in the root namespace (see `net`) and its own
//! `dockerd`, started with `nsenter --net=...` (`ip netns exec` remounts /sys and hides the cgroup
//! mounts), with its own config file, data root, exec root, socket, containerd namespaces and
//! bridge pool, and the main engine's storage driver. Each engine runs its own managed containerd
//! under its exec root. Images reach the hosts from the main engine without a registry (`images`).
//! Every name, rule and directory carries the run's prefix (`shh` + owner pid in hex + `g` + a
//! counter); dropping `Hosts` removes everything, and `Hosts::create` first sweeps what runs whose
//! owner is dead left behind (`sweep`).

mod images;
mod net;
mod sweep;

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bollard::Docker;

pub use images::LoadedImages;
pub use sweep::{sweep_stale, Swept};

/// The most hosts one run builds (each gets a /20 of 10.216.0.0/16 for its engine's networks).
pub const MAX_HOSTS: usize = 16;
/// Every name starts with this, then the owner's pid in hex.
const PREFIX: &str = "shh";
/// The hosts' sockets, pid files, config files and exec roots: `RUN_ROOT/PREFIX-hN/`.
pub const RUN_ROOT: &str = "/run/shoal-hosts";
/// The hosts' engine data roots: `DATA_ROOT/PREFIX-hN/`.
pub const DATA_ROOT: &str = "/var/lib/shoal-hosts";
/// How long an engine may take to answer `_ping`.
const ENGINE_START: Duration = Duration::from_secs(60);
/// How long an engine gets to stop its containers and exit after SIGTERM.
const ENGINE_STOP: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("{0}")]
    Preflight(String),

    #[error("`{command}` failed: {reason}")]
    Command { command: String, reason: String },

    #[error("no free 10.214.x.0/24 subnet for the hosts' bridge")]
    NoSubnet,

    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("the main Docker engine: {0}")]
    MainEngine(String),

    #[error("host {host}'s engine: {reason}")]
    Engine { host: String, reason: String },

    #[error("host {host}'s dockerd {what}; see {}{}", log.display(), last.as_ref().map(|l| format!(": {l}")).unwrap_or_default())]
    EngineStart {
        host: String,
        what: String,
        log: PathBuf,
        last: Option<String>,
    },
}

/// One host: its namespace, address and engine.
pub struct Host {
    /// `h1`, `h2`...
    pub name: String,
    /// The network namespace (`/var/run/netns/NS`).
    pub ns: String,
    /// Its address on the bridge, reachable from the root namespace and the other hosts.
    pub ip: Ipv4Addr,
    /// The engine's socket (`unix://` + this is its DOCKER_HOST).
    pub socket: PathBuf,
    /// The engine's log.
    pub log: PathBuf,
    veth: String,
    run_dir: PathBuf,
    data_dir: PathBuf,
    dockerd: Option<Child>,
}

impl Host {
    /// The engine's endpoint as DOCKER_HOST and `shoal agent --docker` take it.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn dockerd_pid(&self) -> Option<u32> {
        self.dockerd.as_ref().map(Child::id)
    }

    /// A client of this host's engine.
    pub fn docker(&self) -> Result<Docker, HostsError> {
        Docker::connect_with_host(&self.docker_host()).map_err(|e| HostsError::Engine {
            host: self.name.clone(),
            reason: e.to_string(),
        })
    }

    /// Stops the engine (SIGTERM, SIGKILL after `ENGINE_STOP`), kills whatever still runs in the
    /// namespace (shims, containers), unmounts and removes the directories, the namespace and veth.
    fn teardown(&mut self) {
        if let Some(mut child) = self.dockerd.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            let deadline = std::time::Instant::now() + ENGINE_STOP;
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        sweep::remove_host(&self.ns, &self.veth, &[&self.run_dir, &self.data_dir]);
    }
}

/// A set of hosts; dropping it removes every one and the bridge.
pub struct Hosts {
    prefix: String,
    hosts: Vec<Host>,
    // Declared after `hosts`: the bridge (and its rules) goes last.
    bridge: net::Bridge,
}

/// Root, and the programs the hosts need on the PATH; returns dockerd's path.
fn preflight() -> Result<PathBuf, HostsError> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(HostsError::Preflight(
            "hosts are network namespaces with their own dockerd: run as root".into(),
        ));
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("nsenter", "util-linux"),
        ("dockerd", "docker.io"),
    ] {
        if crate::proxy::find_program(tool).is_none() {
            return Err(HostsError::Preflight(format!(
                "`{tool}` not found: apt-get install {package}"
            )));
        }
    }
    Ok(crate::proxy::find_program("dockerd").expect("checked above"))
}

/// The main engine's storage driver (`docker info`), which the hosts' engines use too.
async fn main_storage_driver(main: &Docker) -> Result<String, HostsError> {
    let info = main
        .info()
        .await
        .map_err(|e| HostsError::MainEngine(e.to_string()))?;
    info.driver
        .filter(|d| !d.is_empty())
        .ok_or_else(|| HostsError::MainEngine("reports no storage driver".into()))
}

/// The main engine, as DOCKER_HOST or the local socket names it.
pub fn main_engine() -> Result<Docker, HostsError> {
    Docker::connect_with_defaults().map_err(|e| HostsError::MainEngine(e.to_string()))
}

static RUNS: AtomicU32 = AtomicU32::new(0);

impl Hosts {
    /// Sweeps the leftovers of dead runs, then builds `count` hosts (at most `MAX_HOSTS`), their
    /// engines logging to `log_dir/dockerd-hN.log`, and waits until every engine answers.
    pub async fn create(count: usize, log_dir: &Path) -> Result<Hosts, HostsError> {
        let dockerd = preflight()?;
        if count == 0 || count > MAX_HOSTS {
            return Err(HostsError::Preflight(format!(
                "between 1 and {MAX_HOSTS} hosts, not {count}"
            )));
        }
        sweep::sweep_stale();
        let main = main_engine()?;
        let driver = main_storage_driver(&main).await?;
        let pid = std::process::id();
        let run = RUNS.fetch_add(1, Ordering::Relaxed) % 100;
        let prefix = format!("{PREFIX}{pid:x}g{run}");
        let bridge = net::Bridge::create(&prefix, pid.wrapping_add(run))?;
        let mut hosts = Hosts {
            prefix,
            hosts: Vec::new(),
            bridge,
        };
        std::fs::create_dir_all(log_dir).map_err(io("creating", log_dir))?;
        for i in 1..=count {
            hosts.add_host(i, &dockerd, &driver, log_dir)?;
        }
        let waits = hosts.hosts.iter_mut().map(wait_for_engine);
        futures::future::try_join_all(waits).await?;
        Ok(hosts)
    }

    fn add_host(
        &mut self,
        i: usize,
        dockerd: &Path,
        driver: &str,
        log_dir: &Path,
    ) -> Result<(), HostsError> {
        let ns = format!("{}-h{i}", self.prefix);
        let veth = format!("{}v{i}", self.prefix);
        let peer = format!("{}p{i}", self.prefix);
        let ip = self.bridge.host_ip(i);
        let run_dir = Path::new(RUN_ROOT).join(&ns);
        let data_dir = Path::new(DATA_ROOT).join(&ns);
        let log = log_dir.join(format!("dockerd-h{i}.log"));
        // Pushed first: whatever follows fails, Drop removes it.
        self.hosts.push(Host {
            name: format!("h{i}"),
            ns: ns.clone(),
            ip,
            socket: run_dir.join("docker.sock"),
            log: log.clone(),
            veth: veth.clone(),
            run_dir: run_dir.clone(),
            data_dir: data_dir.clone(),
            dockerd: None,
        });
        self.bridge.add_namespace(&ns, &veth, &peer, ip)?;
        std::fs::create_dir_all(&run_dir).map_err(io("creating", &run_dir))?;
        std::fs::create_dir_all(&data_dir).map_err(io("creating", &data_dir))?;
        // Its own, empty config: the machine's daemon.json (data-root...) conflicts with the flags.
        let config = run_dir.join("daemon.json");
        std::fs::write(&config, "{}\n").map_err(io("writing", &config))?;
        let file = std::fs::File::create(&log).map_err(io("creating", &log))?;
        let stderr = file.try_clone().map_err(io("opening", &log))?;
        let args = engine_args(&ns, i, driver, self.bridge.mtu, &run_dir, &data_dir);
        let child = std::process::Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{ns}"))
            .arg(dockerd)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| HostsError::EngineStart {
                host: format!("h{i}"),
                what: format!("could not be started ({e})"),
                log: log.clone(),
                last: None,
            })?;
        self.hosts.last_mut().expect("pushed above").dockerd = Some(child);
        Ok(())
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The run's prefix: every namespace, link, rule and directory of this run starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The bridge's name and the hosts' gateway (the bridge's address in the root namespace).
    pub fn bridge(&self) -> (&str, Ipv4Addr) {
        (&self.bridge.name, self.bridge.gateway)
    }

    /// Copies `images` from `main` into every host's engine that lacks them (or has another image
    /// under the same name): `docker save` streamed into `docker load`, hosts in parallel.
    pub async fn load_images(
        &self,
        main: &Docker,
        images: &[String],
    ) -> Result<Vec<LoadedImages>, HostsError> {
        images::fan_out(main, &self.hosts, images).await
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Every engine gets SIGTERM at once, so their containers stop in parallel.
        for host in &self.hosts {
            if let Some(pid) = host.dockerd_pid().and_then(|p| i32::try_from(p).ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
        }
        for host in &mut self.hosts {
            host.teardown();
        }
    }
}

/// dockerd's flags for host `i`: everything of its own, so that engines never share state.
fn engine_args(
    ns: &str,
    i: usize,
    driver: &str,
    mtu: u32,
    run_dir: &Path,
    data_dir: &Path,
) -> Vec<String> {
    let run = |f: &str| run_dir.join(f).display().to_string();
    vec![
        "--config-file".into(),
        run("daemon.json"),
        "--data-root".into(),
        data_dir.display().to_string(),
        "--exec-root".into(),
        run("exec"),
        "--pidfile".into(),
        run("docker.pid"),
        "-H".into(),
        format!("unix://{}", run("docker.sock")),
        "--containerd-namespace".into(),
        ns.to_string(),
        "--containerd-plugins-namespace".into(),
        format!("{ns}-plugins"),
        "--storage-driver".into(),
        driver.to_string(),
        "--bip".into(),
        format!("10.215.{i}.1/24"),
        "--default-address-pool".into(),
        format!("base=10.216.{}.0/20,size=24", (i - 1) * 16),
        "--mtu".into(),
        mtu.to_string(),
        "--shutdown-timeout".into(),
        "3".into(),
    ]
}

/// Waits until the host's engine answers `_ping`, failing as soon as its dockerd exits.
async fn wait_for_engine(host: &mut Host) -> Result<(), HostsError> {
    let deadline = tokio::time::Instant::now() + ENGINE_START;
    let failed = |host: &Host, what: String| HostsError::EngineStart {
        host: host.name.clone(),
        what,
        log: host.log.clone(),
        last: crate::dev::last_log_line(&host.log),
    };
    loop {
        if let Some(child) = host.dockerd.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(host, format!("exited during startup ({status})")));
            }
        }
        if host.socket.exists() {
            if let Ok(docker) = host.docker() {
                if docker.ping().await.is_ok() {
                    return Ok(());
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(failed(
                host,
                format!("did not answer within {ENGINE_START:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> HostsError {
    let path = path.into();
    move |source| HostsError::Io { what, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_has_its_own_state_and_pools() {
        let a = engine_args(
            "shh1g0-h1",
            1,
            "overlay2",
            1400,
            "/r/1".as_ref(),
            "/d/1".as_ref(),
        );
        let b = engine_args(
            "shh1g0-h2",
            2,
            "overlay2",
            1400,
            "/r/2".as_ref(),
            "/d/2".as_ref(),
        );
        let joined = a.join(" ");
        assert!(joined
            .contains("--config-file /r/1/daemon.json --data-root /d/1 --exec-root /r/1/exec"));
        assert!(joined.contains("-H unix:///r/1/docker.sock"));
        assert!(joined.contains(
            "--containerd-namespace shh1g0-h1 --containerd-plugins-namespace shh1g0-h1-plugins"
        ));
        assert!(joined.contains("--storage-driver overlay2"));
        let value = |args: &[String], flag: &str| {
            let at = args.iter().position(|a| a == flag).unwrap();
            args[at + 1].clone()
        };
        assert_ne!(value(&a, "--bip"), value(&b, "--bip"));
        assert_eq!(
            value(&a, "--default-address-pool"),
            "base=10.216.0.0/20,size=24"
        );
        assert_eq!(
            value(&b, "--default-address-pool"),
            "base=10.216.16.0/20,size=24"
        );
        let last = engine_args("x", MAX_HOSTS, "d", 1500, "/r".as_ref(), "/d".as_ref());
        assert_eq!(
            value(&last, "--default-address-pool"),
            "base=10.216.240.0/20,size=24"
        );
    }
}
