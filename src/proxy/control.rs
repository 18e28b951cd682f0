//! The two things `shoal proxy` asks of the real proxy: validate a candidate config (`nginx -t`,
//! `haproxy -c`) and reload gracefully (a signal to the pid in a pid file, a signal to a container
//! through Docker, or an operator's command). Behind the `Control` trait so the apply logic can be
//! tested with a double. Every command runs with a time bound; nothing here touches the live file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::OnceCell;

use super::error::{one_line, ApplyError};
use super::render::ProxyKind;
use crate::engine::{DockerRuntime, RuntimeError};

/// Bound on `nginx -t` / `haproxy -c`.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a `--reload-cmd` and on a Docker signal.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(60);

/// Validation and reload of the proxy next to which `shoal proxy` runs.
pub(crate) trait Control {
    /// Checks the complete config in `candidate` (a file beside the live one). `live` is the
    /// live file's path, to name in errors instead of the short-lived candidate's.
    async fn validate(&self, candidate: &Path, live: &Path) -> Result<(), ApplyError>;

    /// Makes the proxy load the live file gracefully (old connections finish on old workers).
    async fn reload(&self) -> Result<(), ApplyError>;
}

/// How `shoal proxy` reloads the proxy (`--pid-file`, `--container`, `--reload-cmd`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadMethod {
    /// SIGHUP (nginx) or SIGUSR2 (haproxy in master-worker mode) to the pid in this file.
    PidFile(PathBuf),
    /// The same signal to this container through the local Docker engine, as Interlock did.
    Container(String),
    /// `sh -c CMD`; a non-zero exit is a failed reload.
    Command(String),
}

/// The real proxy on this host.
pub(crate) struct Local {
    kind: ProxyKind,
    /// nginx's `-p` prefix for validation (`--run-dir`).
    run_dir: Option<PathBuf>,
    reload: ReloadMethod,
    docker: OnceCell<DockerRuntime>,
}

impl Local {
    pub(crate) fn new(kind: ProxyKind, run_dir: Option<PathBuf>, reload: ReloadMethod) -> Self {
        Local {
            kind,
            run_dir,
            reload,
            docker: OnceCell::new(),
        }
    }

    /// The graceful-reload signal of this kind of proxy.
    fn signal(&self) -> Signal {
        match self.kind {
            ProxyKind::Nginx => Signal::SIGHUP,
            ProxyKind::Haproxy => Signal::SIGUSR2,
        }
    }

    async fn signal_pid_file(&self, pid_file: &Path) -> Result<(), ApplyError> {
        let not_running = |detail: String| ApplyError::NotRunning {
            kind: self.kind.to_string(),
            detail,
        };
        let text = std::fs::read_to_string(pid_file).unwrap_or_default();
        let pid = match text.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => Pid::from_raw(pid),
            _ => return Err(not_running(format!("no pid in {}", pid_file.display()))),
        };
        let signal = self.signal();
        match kill(pid, signal) {
            Ok(()) => Ok(()),
            Err(Errno::ESRCH) => Err(not_running(format!(
                "no pid in {}: pid {pid} is gone",
                pid_file.display()
            ))),
            Err(e) => Err(ApplyError::Reload {
                how: format!("{signal} to pid {pid} from {}", pid_file.display()),
                reason: e.desc().to_string(),
            }),
        }
    }

    async fn signal_container(&self, container: &str) -> Result<(), ApplyError> {
        let signal = self.signal();
        let how = format!("{signal} to container {container}");
        let failed = |reason: String| ApplyError::Reload {
            how: how.clone(),
            reason,
        };
        let docker = self
            .docker
            .get_or_try_init(|| DockerRuntime::connect(None))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let sent = tokio::time::timeout(RELOAD_TIMEOUT, docker.signal(container, signal.as_str()));
        match sent.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(RuntimeError::NotFound { .. })) => Err(ApplyError::NotRunning {
                kind: self.kind.to_string(),
                detail: format!("no container {container}"),
            }),
            Ok(Err(e)) => Err(failed(one_line(&e.to_string()))),
            Err(_) => Err(failed(format!("timed out after {RELOAD_TIMEOUT:?}"))),
        }
    }

    async fn reload_command(&self, command: &str) -> Result<(), ApplyError> {
        let failed = |reason: String| ApplyError::Reload {
            how: format!("sh -c {command:?}"),
            reason,
        };
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c").arg(command);
        match run(cmd, RELOAD_TIMEOUT).await {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => {
                let line = first_meaningful_line(&out.stderr, &out.stdout);
                let status = describe_exit(out.status);
                Err(failed(match line {
                    Some(line) => format!("{status}: {line}"),
                    None => status,
                }))
            }
            Err(e) => Err(failed(e)),
        }
    }
}

impl Control for Local {
    async fn validate(&self, candidate: &Path, live: &Path) -> Result<(), ApplyError> {
        let program_name = self.kind.to_string();
        let Some(program) = find_program(&program_name) else {
            return Err(ApplyError::NotInstalled {
                program: program_name,
                reason: "not found on PATH nor in /usr/sbin".into(),
            });
        };
        let mut cmd = tokio::process::Command::new(&program);
        match self.kind {
            ProxyKind::Nginx => {
                cmd.arg("-t").arg("-q").arg("-c").arg(candidate);
                if let Some(run_dir) = &self.run_dir {
                    // nginx wants the prefix to end with a slash.
                    cmd.arg("-p").arg(format!("{}/", run_dir.display()));
                }
            }
            ProxyKind::Haproxy => {
                cmd.arg("-c").arg("-f").arg(candidate);
            }
        }
        let out = run(cmd, VALIDATE_TIMEOUT)
            .await
            .map_err(|reason| ApplyError::NotInstalled {
                program: program_name.clone(),
                reason,
            })?;
        if out.status.success() {
            return Ok(());
        }
        let line = first_meaningful_line(&out.stderr, &out.stdout)
            .unwrap_or_else(|| describe_exit(out.status));
        // The candidate is gone by the time anyone reads this: name the file it would have become.
        let line = line.replace(
            &candidate.display().to_string(),
            &live.display().to_string(),
        );
        Err(ApplyError::Invalid {
            program: program_name,
            line,
        })
    }

    async fn reload(&self) -> Result<(), ApplyError> {
        match &self.reload {
            ReloadMethod::PidFile(path) => self.signal_pid_file(path).await,
            ReloadMethod::Container(name) => self.signal_container(name).await,
            ReloadMethod::Command(command) => self.reload_command(command).await,
        }
    }
}

/// Runs `cmd` to completion within `timeout` (killed when it overruns); the error is one line.
async fn run(
    mut cmd: tokio::process::Command,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(out),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {timeout:?}")),
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        _ => status.to_string(),
    }
}

/// The line of a validator's or command's output that says what is wrong: nginx's first
/// `[emerg]`, haproxy's first `[ALERT]`, else the first non-empty line that is not about the
/// default error log (an unprivileged `nginx -t` complains about it before reading anything).
/// nginx's timestamp and `pid#tid:` are dropped: `[emerg] unknown directive "x" in FILE:3`.
pub(crate) fn first_meaningful_line(stderr: &[u8], stdout: &[u8]) -> Option<String> {
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(stderr),
        String::from_utf8_lossy(stdout)
    );
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let pick = lines
        .iter()
        .find(|l| l.contains("[emerg]") || l.contains("[ALERT]"))
        .or_else(|| {
            lines
                .iter()
                .find(|l| !l.contains("could not open error log file"))
        })
        .or_else(|| lines.first())?;
    Some(one_line(&strip_nginx_prefix(pick)))
}

/// `nginx: 2026/01/02 10:00:00 [emerg] 12#12: text` → `[emerg] text`.
fn strip_nginx_prefix(line: &str) -> String {
    let line = line.strip_prefix("nginx: ").unwrap_or(line);
    let levels = ["[emerg] ", "[alert] ", "[crit] ", "[error] "];
    let Some((at, level)) = levels
        .iter()
        .filter_map(|level| line.find(level).map(|at| (at, *level)))
        .min()
    else {
        return line.to_string();
    };
    let rest = &line[at + level.len()..];
    let rest = match rest.split_once(": ") {
        Some((ids, text))
            if ids
                .split('#')
                .all(|n| n.bytes().all(|b| b.is_ascii_digit())) =>
        {
            text
        }
        _ => rest,
    };
    format!("{level}{rest}")
}

/// `name` on PATH, else in the sbin directories an unprivileged PATH often lacks.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emerg_line_is_picked_and_nginx_prefix_dropped() {
        let stderr = b"nginx: [alert] could not open error log file: open() \"/var/log/nginx/error.log\" failed (13: Permission denied)\n\
nginx: [emerg] unknown directive \"bogus\" in /etc/x/.nginx.conf.tmp:3\n\
nginx: configuration file /etc/x/.nginx.conf.tmp test failed\n";
        assert_eq!(
            first_meaningful_line(stderr, b"").unwrap(),
            "[emerg] unknown directive \"bogus\" in /etc/x/.nginx.conf.tmp:3"
        );
        assert_eq!(
            first_meaningful_line(b"\n  \n", b"oops\nmore").unwrap(),
            "oops"
        );
        assert_eq!(first_meaningful_line(b"", b""), None);
        // With an error_log of its own, nginx -t prints a timestamp and pid#tid.
        assert_eq!(
            first_meaningful_line(
                b"nginx: 2026/11/21 10:58:02 [emerg] 19003#19003: unknown directive \"x\" in /p/nginx.conf:3\n",
                b""
            )
            .unwrap(),
            "[emerg] unknown directive \"x\" in /p/nginx.conf:3"
        );
        assert_eq!(
            first_meaningful_line(b"[ALERT]    (77) : config : parsing [/p/h.cfg:3]", b"").unwrap(),
            "[ALERT] (77) : config : parsing [/p/h.cfg:3]"
        );
    }

    #[tokio::test]
    async fn a_missing_pid_file_says_nginx_is_not_running() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("nginx.pid");
        let local = Local::new(
            ProxyKind::Nginx,
            None,
            ReloadMethod::PidFile(pid_file.clone()),
        );
        let err = local.reload().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("nginx is not running (no pid in {})", pid_file.display())
        );
        // A pid that no longer exists (pid_max is at most 2^22).
        std::fs::write(&pid_file, "99999999\n").unwrap();
        let err = local.reload().await.unwrap_err();
        assert!(
            err.to_string()
                .starts_with("nginx is not running (no pid in"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failing_reload_command_is_reported_on_one_line() {
        let local = Local::new(
            ProxyKind::Nginx,
            None,
            ReloadMethod::Command("echo first >&2; echo second >&2; exit 3".into()),
        );
        let err = local.reload().await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "reload (sh -c \"echo first >&2; echo second >&2; exit 3\") failed: exit code 3: first"
        );
        let ok = Local::new(ProxyKind::Nginx, None, ReloadMethod::Command("true".into()));
        ok.reload().await.unwrap();
    }
}
