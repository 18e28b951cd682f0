//! whoami: the test image's HTTP server. Every request gets a plain-text body naming the task, service,
//! node and container it reached; `GET /health` answers "ok". Invoked as `cat`, it is one. Std only, one
//! thread per connection, built statically so that the image can be `FROM scratch`. `whoami echo
//! WORDS` prints them and `whoami exit N` exits with N, for attached runs in tests; `whoami check`
//! asks the server in its own container for `/health` (exit 0 on a 200), a health check for an image
//! without a shell; `whoami check IP:PORT` asks another server (can this container reach it?).

mod http;
mod signal;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

/// Who answers: read once at startup from the environment shoal gives every task.
pub struct Identity {
    task: String,
    service: String,
    node: String,
    container: String,
}

impl Identity {
    fn from_env() -> Identity {
        let var = |name: &str| std::env::var(name).unwrap_or_else(|_| "-".to_string());
        Identity {
            task: var("SHOAL_TASK"),
            service: var("SHOAL_SERVICE"),
            node: var("SHOAL_NODE"),
            container: hostname(),
        }
    }

    /// The body of every answer but `/health`: one `key: value` line each, stable for tests to parse.
    pub fn body(&self) -> String {
        format!(
            "task: {}\nservice: {}\nnode: {}\ncontainer: {}\n",
            self.task, self.service, self.node, self.container
        )
    }
}

/// Docker sets the hostname to the (short) container id. The kernel's copy needs no libc call; `HOSTNAME`
/// is Docker's fallback for when /proc is missing.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "-".to_string())
}

fn port() -> u16 {
    match std::env::var("PORT") {
        Ok(p) => p.parse().unwrap_or_else(|_| {
            eprintln!("whoami: PORT={p:?} is not a port number");
            std::process::exit(2)
        }),
        Err(_) => 80,
    }
}

/// Run as `cat` (the image holds this binary at /bin/cat too): copies stdin to stdout, so that tests
/// can run `echo hi | docker exec -i C cat` in a FROM scratch image.
fn cat() -> ! {
    let copied = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::stdout().lock());
    match copied {
        Ok(_) => std::process::exit(0),
        Err(e) => {
            eprintln!("cat: {e}");
            std::process::exit(1)
        }
    }
}

/// `whoami check [IP:PORT]`: `GET /health` on this container's own server (or on `IP:PORT`); exit 0
/// on a 200, else 1 with why.
fn check(target: Option<&str>) -> ! {
    use std::io::{Read, Write};
    let addr = match target {
        Some(target) => target.parse().unwrap_or_else(|_| {
            println!("{target:?} is not IP:PORT");
            std::process::exit(2)
        }),
        None => SocketAddr::from(([127, 0, 0, 1], port())),
    };
    let attempt = || -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    };
    match attempt() {
        Ok(answer) if answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200") => {
            println!("ok");
            std::process::exit(0)
        }
        Ok(answer) => {
            println!("{}", answer.lines().next().unwrap_or("no answer"));
            std::process::exit(1)
        }
        Err(e) => {
            println!("{addr}: {e}");
            std::process::exit(1)
        }
    }
}

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some("cat".as_ref()) {
        cat();
    }
    // `whoami echo WORDS...` prints its words; `whoami exit N` exits with N: attached runs and
    // exit codes in tests, with no shell in the image.
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("echo") => {
            println!("{}", args[1..].join(" "));
            std::process::exit(0)
        }
        Some("exit") => std::process::exit(args.get(1).and_then(|c| c.parse().ok()).unwrap_or(1)),
        Some("check") => check(args.get(1).map(String::as_str)),
        _ => {}
    }
    signal::exit_on_term();
    let addr = SocketAddr::from(([0, 0, 0, 0], port()));
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| {
        eprintln!("whoami: cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    let identity = Arc::new(Identity::from_env());
    eprintln!("whoami: listening on {addr} as {}", identity.container);
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let identity = Arc::clone(&identity);
                let spawned = std::thread::Builder::new()
                    .stack_size(64 * 1024)
                    .spawn(move || http::serve(stream, &identity));
                if let Err(e) = spawned {
                    eprintln!("whoami: cannot start a connection thread: {e}");
                }
            }
            // Out of descriptors or a connection reset before accept: back off briefly, keep serving.
            Err(e) => {
                eprintln!("whoami: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
