//! nginx and `shoal proxy` started next to it for the bench, and the reading of `shoal proxy`'s
//! log for when each generation went live.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::time::{sleep, Instant};

use super::load::request;

/// nginx and `shoal proxy` next to it, each in its own process group, SIGKILLed on drop.
pub(super) struct Nginx {
    pub(super) port: u16,
    pub(super) dir: PathBuf,
    children: Vec<Child>,
}

impl Nginx {
    pub(super) async fn start(exe: &Path, dir: &Path, join: &str, token: &str) -> Result<Nginx> {
        let run = dir.join("run");
        std::fs::create_dir_all(&run)?;
        std::fs::create_dir_all(dir.join("conf.d"))?;
        let port = std::net::TcpListener::bind("0.0.0.0:0")?
            .local_addr()?
            .port();
        let config = dir.join("nginx.conf");
        std::fs::write(&config, initial_config(port, &run))?;
        let log = |file: &str| std::fs::File::create(dir.join(file));
        let mut me = Nginx {
            port,
            dir: dir.to_path_buf(),
            children: Vec::new(),
        };
        me.children.push(
            std::process::Command::new("nginx")
                .arg("-c")
                .arg(&config)
                .arg("-p")
                .arg(dir)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(log("nginx.out")?)
                .stderr(log("nginx.err")?)
                .process_group(0)
                .spawn()
                .context("starting nginx (apt-get install nginx-light)")?,
        );
        // nginx answers (503) before shoal proxy is started: its pid file is written.
        let deadline = Instant::now() + Duration::from_secs(10);
        while request(me.addr()).await != Err("status 503".into()) {
            if let Some(status) = me.children[0].try_wait()? {
                bail!("nginx exited ({status}):\n{}", me.logs());
            }
            if Instant::now() > deadline {
                bail!("nginx did not answer on port {port}:\n{}", me.logs());
            }
            sleep(Duration::from_millis(50)).await;
        }
        let out = log("proxy.log")?;
        me.children.push(
            std::process::Command::new(exe)
                .arg("proxy")
                .args(["--join", join, "--token", token, "--kind", "nginx"])
                .args(["--name", "bench"])
                .arg("--config")
                .arg(&config)
                .arg("--pid-file")
                .arg(run.join("nginx.pid"))
                .args(["--listen-port", &port.to_string()])
                .arg("--run-dir")
                .arg(&run)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .process_group(0)
                .spawn()
                .context("starting shoal proxy")?,
        );
        Ok(me)
    }

    pub(super) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(super) fn logs(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        format!(
            "---- nginx.err ----\n{}\n---- run/error.log ----\n{}\n---- proxy.log ----\n{}",
            read("nginx.err"),
            read("run/error.log"),
            read("proxy.log")
        )
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// A minimal config that serves 503 on `port`, with every path nginx writes under `run`;
/// `shoal proxy` replaces it at its first apply.
fn initial_config(port: u16, run: &Path) -> String {
    let run = run.display();
    format!(
        "# Written by shoal-bench; shoal proxy replaces it at its first apply.
worker_processes auto;
pid {run}/nginx.pid;
error_log {run}/error.log;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    client_body_temp_path {run}/client_body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;

    server {{
        listen {port} default_server;
        server_name _;
        return 503;
    }}
}}
"
    )
}

/// `(generation, wall ms)` of every "generation G (revision R) is live" line of `shoal proxy`'s
/// log, in order.
pub(super) fn live_generations(log: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains(") is live"))
        .filter_map(|l| {
            let at = parse_utc_ms(l.split_whitespace().next()?)?;
            let generation = l
                .split("generation ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((generation, at))
        })
        .collect()
}

/// `2026-11-21T11:10:02.737167Z` (tracing's timestamps) → ms since the epoch.
fn parse_utc_ms(ts: &str) -> Option<u64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|x| x.parse::<i64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let frac_ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from 1970-01-01 to y-m-d (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(((days * 24 + h) * 60 + min) * 60_000 + sec * 1000 + frac_ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracing_timestamps_parse() {
        assert_eq!(parse_utc_ms("1970-01-01T00:00:01.5Z"), Some(1500));
        // date -u -d 2026-11-21T11:10:02.737Z +%s%3N
        assert_eq!(
            parse_utc_ms("2026-11-21T11:10:02.737167Z"),
            Some(1_795_259_402_737)
        );
        assert_eq!(parse_utc_ms("not a time"), None);
    }
}
