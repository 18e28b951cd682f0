//! The Consul-compatible HTTP API against three real managers started with `--http`: raw HTTP
//! for every verb and bad input, then the same core flow with a real Consul client library
//! (py-consul, from PyPI) driven by `consul_client.py`; both again after kill -9 of the leader.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::sleep;
use tokio::time::Instant;

use crate::cluster::free_port;
use crate::cluster::serial;
use crate::cluster::tail;
use crate::cluster::Manager;
use crate::cluster::WAIT;

/// Three managers, each serving the HTTP API (the shared harness starts them without it).
struct HttpCluster {
    _root: tempfile::TempDir,
    managers: Vec<Manager>,
    http: Vec<String>,
}

impl HttpCluster {
    async fn start(n: usize) -> HttpCluster {
        HttpCluster::start_with(n, &[]).await
    }

    /// `n` managers, each started with `extra` flags too.
    async fn start_with(n: usize, extra: &[&str]) -> HttpCluster {
        let root = tempfile::Builder::new()
            .prefix("shoal-consul-")
            .tempdir()
            .unwrap();
        let mut c = HttpCluster {
            managers: Vec::new(),
            http: Vec::new(),
            _root: root,
        };
        let mut token = String::new();
        for i in 0..n {
            let mut m = Manager::new(c._root.path(), &format!("m{}", i + 1));
            let http = format!("127.0.0.1:{}", free_port());
            if i == 0 {
                let mut args = vec!["--http", &http];
                args.extend_from_slice(extra);
                m.spawn(&args);
                token = m.wait_token().await;
            } else {
                let join: Vec<String> = c.managers.iter().map(|m| m.grpc.clone()).collect();
                let join = join.join(",");
                let mut args = vec!["--join", &join, "--token", &token, "--http", &http];
                args.extend_from_slice(extra);
                m.spawn(&args);
            }
            c.managers.push(m);
            c.http.push(http);
            c.wait_voters(i + 1).await;
        }
        c
    }

    async fn wait_voters(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            for m in &self.managers {
                if let Ok(s) = m.status().await {
                    if s.leader_id != 0 && s.members.iter().filter(|m| m.voter).count() == n {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "never {n} voters\n{}",
                self.logs()
            );
            sleep(Duration::from_millis(200)).await;
        }
    }

    /// The index of the manager that says it leads.
    async fn leader(&mut self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            for (i, m) in self.managers.iter_mut().enumerate() {
                if !m.is_running() {
                    continue;
                }
                if let Ok(s) = m.status().await {
                    if s.leader_id != 0 && s.leader_id == s.member_id {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader\n{}", self.logs());
            sleep(Duration::from_millis(200)).await;
        }
    }

    fn logs(&self) -> String {
        self.managers
            .iter()
            .map(|m| format!("---- {} ----\n{}", m.name, tail(&m.log_text())))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn index(&self) -> u64 {
        self.header("X-Consul-Index")
            .expect("X-Consul-Index header")
            .parse()
            .unwrap()
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 exchange on a fresh connection (`Connection: close`), bounded by 60 s.
pub(crate) async fn http(
    addr: &str,
    method: &str,
    target: &str,
    body: &[u8],
) -> Result<Reply, String> {
    http_with(addr, method, target, &[], body).await
}

/// [`http`] with extra request headers.
pub(crate) async fn http_with(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(body).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| format!("{method} {target}: no answer within 60 s"))??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("{method} {target}: no header end in {buf:?}"))?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    assert!(
        !headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")),
        "the test client does not decode chunked bodies"
    );
    Ok(Reply {
        status,
        headers,
        body: buf[split + 4..].to_vec(),
    })
}

async fn call(addr: &str, method: &str, target: &str, body: &[u8]) -> Reply {
    http(addr, method, target, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {target} on {addr}: {e}"))
}

/// A call expected to answer `status`, with its body in the failure message.
async fn expect(addr: &str, method: &str, target: &str, body: &[u8], status: u16) -> Reply {
    let r = call(addr, method, target, body).await;
    assert_eq!(r.status, status, "{method} {target}: {}", r.text());
    r
}

/// A request Consul answers with a bare `true` or `false` body (PUT, DELETE, session calls).
async fn expect_bool(addr: &str, method: &str, target: &str, body: &[u8], want: bool) {
    let r = expect(addr, method, target, body, 200).await;
    assert_eq!(r.text(), want.to_string(), "{method} {target}");
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(v: &Value) -> String {
    use base64::Engine as _;
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().expect("base64 string"))
            .unwrap(),
    )
    .unwrap()
}

/// Retries a request until it succeeds: for the first (idempotent) write after a kill -9,
/// while a new leader is elected.
async fn until_ok(addr: &str, method: &str, target: &str, body: &[u8]) -> Reply {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = http(addr, method, target, body).await {
            if r.status == 200 {
                return r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{method} {target} never succeeded"
        );
        sleep(Duration::from_millis(300)).await;
    }
}

/// Everything the issue asks of the raw API, writing through `w` and reading through `r`
/// (different managers). `p` prefixes every key so runs do not interfere.
async fn core_flow(w: &str, r: &str, p: &str, wait_ttl: bool) {
    // put, get, flags
    let put = expect(w, "PUT", &format!("/v1/kv/{p}a"), b"1", 200).await;
    assert_eq!(put.text(), "true");
    expect(w, "PUT", &format!("/v1/kv/{p}b?flags=42"), b"2", 200).await;
    expect(w, "PUT", &format!("/v1/kv/{p}dir/c"), b"3", 200).await;
    let got = expect(r, "GET", &format!("/v1/kv/{p}a"), b"", 200).await;
    assert_eq!(got.header("X-Consul-KnownLeader"), Some("true"));
    assert!(got.header("X-Consul-LastContact").is_some());
    let e = &got.json()[0];
    assert_eq!(
        (e["Key"].as_str().unwrap(), unb64(&e["Value"])),
        (format!("{p}a").as_str(), "1".into())
    );
    assert_eq!(got.index(), e["ModifyIndex"].as_u64().unwrap());
    let b = expect(r, "GET", &format!("/v1/kv/{p}b"), b"", 200)
        .await
        .json();
    assert_eq!(b[0]["Flags"], 42);
    // raw, recurse, keys, separator, missing
    assert_eq!(
        expect(r, "GET", &format!("/v1/kv/{p}a?raw"), b"", 200)
            .await
            .text(),
        "1"
    );
    let all = expect(r, "GET", &format!("/v1/kv/{p}?recurse"), b"", 200)
        .await
        .json();
    let keys: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        [format!("{p}a"), format!("{p}b"), format!("{p}dir/c")]
    );
    let listed = expect(r, "GET", &format!("/v1/kv/{p}?keys&separator=/"), b"", 200)
        .await
        .json();
    assert_eq!(
        listed,
        serde_json::json!([format!("{p}a"), format!("{p}b"), format!("{p}dir/")])
    );
    let missing = expect(r, "GET", &format!("/v1/kv/{p}nope"), b"", 404).await;
    assert!(missing.index() > 0);
    expect(r, "GET", &format!("/v1/kv/{p}a?stale"), b"", 200).await;
    expect(r, "GET", &format!("/v1/kv/{p}a?consistent"), b"", 200).await;

    // cas
    let mi = e["ModifyIndex"].as_u64().unwrap();
    assert_eq!(
        expect(
            w,
            "PUT",
            &format!("/v1/kv/{p}a?cas={}", mi + 1000),
            b"x",
            200
        )
        .await
        .text(),
        "false"
    );
    expect_bool(w, "PUT", &format!("/v1/kv/{p}a?cas={mi}"), b"4", true).await;
    expect_bool(w, "PUT", &format!("/v1/kv/{p}a?cas=0"), b"5", false).await;
    expect_bool(w, "PUT", &format!("/v1/kv/{p}new?cas=0"), b"n", true).await;
    assert_eq!(
        expect(r, "GET", &format!("/v1/kv/{p}a?raw"), b"", 200)
            .await
            .text(),
        "4"
    );
    expect_bool(w, "DELETE", &format!("/v1/kv/{p}new?cas=1"), b"", false).await;
    expect_bool(w, "DELETE", &format!("/v1/kv/{p}new"), b"", true).await;
    expect(r, "GET", &format!("/v1/kv/{p}new"), b"", 404).await;

    // a blocking query on `r` woken by a write on `w`
    let idx = expect(r, "GET", &format!("/v1/kv/{p}watched"), b"", 404)
        .await
        .index();
    let (raddr, target) = (
        r.to_string(),
        format!("/v1/kv/{p}watched?index={idx}&wait=30s"),
    );
    let started = Instant::now();
    let blocked = tokio::spawn(async move { call(&raddr, "GET", &target, b"").await });
    sleep(Duration::from_millis(800)).await;
    assert!(
        !blocked.is_finished(),
        "the blocking query answered before any change"
    );
    expect(w, "PUT", &format!("/v1/kv/{p}watched"), b"woken", 200).await;
    let woken = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("blocking query woken within 10 s of the write")
        .unwrap();
    assert_eq!(woken.status, 200, "{}", woken.text());
    assert_eq!(unb64(&woken.json()[0]["Value"]), "woken");
    assert!(woken.index() > idx && started.elapsed() < Duration::from_secs(10));
    // ... and one that times out answers with the same index.
    let idx = woken.index();
    let started = Instant::now();
    let same = expect(
        r,
        "GET",
        &format!("/v1/kv/{p}watched?index={idx}&wait=1s"),
        b"",
        200,
    )
    .await;
    assert_eq!(same.index(), idx);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // sessions and locks
    let s1 = expect(
        w,
        "PUT",
        "/v1/session/create",
        br#"{"Name":"holder","TTL":"10s","LockDelay":"0s"}"#,
        200,
    )
    .await
    .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let s2 = expect(
        r,
        "PUT",
        "/v1/session/create",
        br#"{"name":"waiter","ttl":"60s","lockdelay":0}"#,
        200,
    )
    .await
    .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(s1.len(), 36);
    let lock = format!("/v1/kv/{p}lock");
    expect_bool(w, "PUT", &format!("{lock}?acquire={s1}"), b"one", true).await;
    expect_bool(r, "PUT", &format!("{lock}?acquire={s2}"), b"two", false).await;
    expect_bool(r, "PUT", &format!("{lock}?release={s2}"), b"two", false).await;
    let held = expect(r, "GET", &lock, b"", 200).await.json();
    assert_eq!(
        (held[0]["Session"].as_str(), held[0]["LockIndex"].as_u64()),
        (Some(s1.as_str()), Some(1))
    );
    let info = expect(r, "GET", &format!("/v1/session/info/{s1}"), b"", 200)
        .await
        .json();
    assert_eq!(
        (info[0]["ID"].as_str(), info[0]["TTL"].as_str()),
        (Some(s1.as_str()), Some("10s"))
    );
    let list = expect(r, "GET", "/v1/session/list", b"", 200).await.json();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|s| s["ID"] == s1 || s["ID"] == s2)
            .count()
            == 2
    );
    let renewed = expect(w, "PUT", &format!("/v1/session/renew/{s2}"), b"", 200)
        .await
        .json();
    assert_eq!(renewed[0]["ID"].as_str(), Some(s2.as_str()));
    if wait_ttl {
        // s1 is never renewed: its 10 s TTL lapses and the lock is released, the key kept.
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            expect(r, "PUT", &format!("/v1/session/renew/{s2}"), b"", 200).await;
            let v = expect(r, "GET", &lock, b"", 200).await.json();
            if v[0].get("Session").is_none() {
                assert_eq!(unb64(&v[0]["Value"]), "one");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the lock outlived its session's TTL: {v}"
            );
            sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(
            expect(r, "GET", &format!("/v1/session/info/{s1}"), b"", 200)
                .await
                .json(),
            serde_json::json!([])
        );
        expect(r, "PUT", &format!("/v1/session/renew/{s1}"), b"", 404).await;
    } else {
        expect_bool(w, "PUT", &format!("{lock}?release={s1}"), b"one", true).await;
    }
    expect_bool(r, "PUT", &format!("{lock}?acquire={s2}"), b"two", true).await;
    let v = expect(w, "GET", &lock, b"", 200).await.json();
    assert_eq!(
        (v[0]["Session"].as_str(), v[0]["LockIndex"].as_u64()),
        (Some(s2.as_str()), Some(2))
    );
    // Behavior "delete": destroying the session deletes the key it holds.
    let s3 = expect(
        w,
        "PUT",
        "/v1/session/create",
        br#"{"Behavior":"delete","LockDelay":"0s"}"#,
        200,
    )
    .await
    .json()["ID"]
        .as_str()
        .unwrap()
        .to_string();
    expect_bool(w, "PUT", &format!("/v1/kv/{p}eph?acquire={s3}"), b"e", true).await;
    expect_bool(w, "PUT", &format!("/v1/session/destroy/{s3}"), b"", true).await;
    expect(r, "GET", &format!("/v1/kv/{p}eph"), b"", 404).await;
    expect_bool(w, "PUT", &format!("/v1/session/destroy/{s2}"), b"", true).await;
    let v = expect(r, "GET", &lock, b"", 200).await.json();
    assert!(v[0].get("Session").is_none(), "destroy releases: {v}");

    // a transaction that fails as a whole applies nothing; then one that succeeds
    let a = expect(r, "GET", &format!("/v1/kv/{p}a"), b"", 200)
        .await
        .json();
    let mi = a[0]["ModifyIndex"].as_u64().unwrap();
    let failing = serde_json::json!([
        {"KV": {"Verb": "set", "Key": format!("{p}t1"), "Value": b64("t")}},
        {"KV": {"Verb": "cas", "Key": format!("{p}a"), "Index": mi + 1000, "Value": b64("y")}},
    ]);
    let f = expect(w, "PUT", "/v1/txn", failing.to_string().as_bytes(), 409)
        .await
        .json();
    assert_eq!(f["Errors"][0]["OpIndex"], 1, "{f}");
    expect(r, "GET", &format!("/v1/kv/{p}t1"), b"", 404).await;
    let ok = serde_json::json!([
        {"KV": {"Verb": "set", "Key": format!("{p}t1"), "Value": b64("t"), "Flags": 9}},
        {"KV": {"Verb": "cas", "Key": format!("{p}a"), "Index": mi, "Value": b64("y")}},
        {"KV": {"Verb": "get", "Key": format!("{p}b")}},
        {"KV": {"Verb": "check-not-exists", "Key": format!("{p}zzz")}},
        {"KV": {"Verb": "delete", "Key": format!("{p}dir/c")}},
    ]);
    let t = expect(w, "PUT", "/v1/txn", ok.to_string().as_bytes(), 200)
        .await
        .json();
    let results = t["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{t}");
    assert_eq!(results[0]["KV"]["Flags"], 9);
    assert_eq!(unb64(&results[2]["KV"]["Value"]), "2");
    assert_eq!(
        expect(r, "GET", &format!("/v1/kv/{p}a?raw"), b"", 200)
            .await
            .text(),
        "y"
    );
    expect(r, "GET", &format!("/v1/kv/{p}dir/c"), b"", 404).await;

    // recursive delete
    expect_bool(w, "DELETE", &format!("/v1/kv/{p}?recurse"), b"", true).await;
    expect(r, "GET", &format!("/v1/kv/{p}?recurse"), b"", 404).await;
}

/// Bad input answers Consul's status codes with a message.
async fn bad_input(a: &str) {
    let cases: &[(&str, &str, &[u8], u16)] = &[
        ("PUT", "/v1/kv/bad?flags=x", b"v", 400),
        ("PUT", "/v1/kv/bad?cas=-1", b"v", 400),
        ("PUT", "/v1/kv/bad?recurce", b"v", 400),
        ("GET", "/v1/kv/bad?index=1&wait=soon", b"", 400),
        (
            "GET",
            "/v1/kv/bad?index=1&wait=99999999999999999999999999999999999999h",
            b"",
            400,
        ),
        ("GET", "/v1/kv/bad?index=18446744073709551616", b"", 400),
        ("PUT", "/v1/kv/bad?cas=18446744073709551616", b"v", 400),
        ("GET", "/v1/kv/bad?stale&consistent", b"", 400),
        ("PUT", "/v1/kv/", b"v", 400),
        ("PUT", "/v1/kv/bad?acquire=not-a-session", b"v", 400),
        (
            "PUT",
            "/v1/kv/bad?acquire=00000000-0000-0fff-0000-000000000000",
            b"v",
            500,
        ),
        ("GET", "/v1/session/info/xyz", b"", 400),
        ("PUT", "/v1/session/create", br#"{"TTL":"5s"}"#, 400),
        (
            "PUT",
            "/v1/session/create",
            br#"{"Behavior":"explode"}"#,
            400,
        ),
        ("PUT", "/v1/session/create", b"{", 400),
        (
            "PUT",
            "/v1/txn",
            br#"[{"KV":{"Verb":"set","Key":"k","Value":"%%%"}}]"#,
            400,
        ),
        (
            "PUT",
            "/v1/txn",
            br#"[{"KV":{"Verb":"frob","Key":"k"}}]"#,
            400,
        ),
        ("GET", "/v1/kv/bad?dc=elsewhere", b"", 500),
        ("GET", "/v1/nothing/here", b"", 404),
        ("GET", "/v1/session/frob", b"", 404),
        ("DELETE", "/v1/status/leader", b"", 405),
    ];
    for (method, target, body, status) in cases {
        let r = expect(a, method, target, body, *status).await;
        assert!(!r.body.is_empty(), "{method} {target}: an error says why");
    }
    // An index beyond any revision (u64::MAX) waits out its wait and answers with it: never
    // an overflow that drops the connection.
    let target = "/v1/kv/bad?index=18446744073709551615&wait=1s";
    let r = expect(a, "GET", target, b"", 404).await;
    assert_eq!(r.index(), u64::MAX);
    let foreign = "/v1/session/info/adf4238a-882b-9ddc-4a9d-5b6758e4159e";
    assert_eq!(expect(a, "GET", foreign, b"", 200).await.text(), "[]");
    let big = vec![b'x'; 512 * 1024 + 1];
    let r = expect(a, "PUT", "/v1/kv/big", &big, 413).await;
    assert!(r.text().contains("too large"), "{}", r.text());
    expect(a, "PUT", "/v1/kv/big", &big[1..], 200).await;
    expect(a, "DELETE", "/v1/kv/big", b"", 200).await;
}

/// Status, agent, catalog, health and metrics as seen from manager `a`.
async fn probes(a: &str, http: &[String]) {
    let leader = expect(a, "GET", "/v1/status/leader", b"", 200).await.json();
    assert!(
        http.iter().any(|h| leader == *h),
        "leader {leader} is one of {http:?}"
    );
    let peers = expect(a, "GET", "/v1/status/peers", b"", 200).await.json();
    let mut peers: Vec<String> = serde_json::from_value(peers).unwrap();
    peers.sort();
    let mut want = http.to_vec();
    want.sort();
    assert_eq!(peers, want);
    let me = expect(a, "GET", "/v1/agent/self", b"", 200).await.json();
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert!(me["Config"]["NodeName"]
        .as_str()
        .unwrap()
        .starts_with("manager-"));
    let nodes = expect(a, "GET", "/v1/catalog/nodes", b"", 200).await;
    assert_eq!(nodes.json().as_array().unwrap().len(), http.len());
    // Unchanged membership: a blocking query answers at its wait with the same index.
    let target = format!("/v1/catalog/nodes?index={}&wait=1s", nodes.index());
    let again = expect(a, "GET", &target, b"", 200).await;
    assert_eq!(again.index(), nodes.index());
    assert_eq!(
        expect(a, "GET", "/health", b"", 200).await.json()["status"],
        "ok"
    );
    let metrics = expect(a, "GET", "/metrics", b"", 200).await.text();
    for m in [
        "shoal_is_leader",
        "shoal_raft_term",
        "shoal_raft_commit_index",
        "shoal_raft_applied_index",
        "shoal_store_revision",
    ] {
        assert!(metrics.contains(&format!("\n{m} ")), "{m} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_http_api_across_managers_and_after_leader_kill() {
    let _serial = serial().await;
    let mut c = HttpCluster::start(3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    probes(&c.http[follower], &c.http).await;
    bad_input(&c.http[follower]).await;
    // Writes on a follower, reads on the leader, and the other way round.
    core_flow(&c.http[follower], &c.http[leader], "raw1/", true).await;

    c.managers[leader].kill();
    let (w, r) = (c.http[follower].clone(), c.http[other].clone());
    until_ok(&w, "PUT", "/v1/kv/after-kill", b"1").await;
    core_flow(&w, &r, "raw2/", false).await;
    let new_leader = expect(&r, "GET", "/v1/status/leader", b"", 200)
        .await
        .json();
    assert_ne!(new_leader, c.http[leader].as_str());
    assert!(new_leader == w.as_str() || new_leader == r.as_str());
}

/// Runs `shoal acl token ARGS` against `m` with its own (manager) certificate.
async fn acl(m: &Manager, args: &[&str]) -> crate::cluster::CliOutput {
    let tls = m.data_dir.join("tls");
    let mut all = vec!["--host", m.grpc.as_str(), "acl", "token"];
    all.extend_from_slice(args);
    crate::cluster::run_cli(&all, None, &[("SHOAL_TLS_DIR", tls.to_str().unwrap())]).await
}

/// The value of `Name:` in `acl token create`'s output.
fn field<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {name} in {out}"))
}

/// ACL tokens on two managers with `--http-acl-default-policy deny`: a token made with the CLI on
/// one is honoured on the other, by header, bearer and query; its key rules (longest prefix
/// wins), tree reads filtered, recursive deletes checked on every rule under the prefix, the
/// session level, transactions; `/shoal/` refused whatever the token; a deleted token is "ACL
/// not found".
#[tokio::test(flavor = "multi_thread")]
async fn acl_tokens_decide_what_each_request_may_do() {
    let _serial = serial().await;
    let c = HttpCluster::start_with(2, &["--http-acl-default-policy", "deny"]).await;
    let (a, b) = (&c.http[0], &c.http[1]);
    // Without a token: nothing of the KV, sessions or transactions; status still answers.
    let r = expect(a, "GET", "/v1/kv/app/x", b"", 403).await;
    assert!(
        r.text()
            .contains("anonymous token lacks permission 'key:read'"),
        "{}",
        r.text()
    );
    expect(a, "PUT", "/v1/session/create", b"{}", 403).await;
    let get = br#"[{"KV":{"Verb":"get","Key":"app/x"}}]"#;
    expect(a, "PUT", "/v1/txn", get, 403).await;
    expect(a, "GET", "/v1/status/leader", b"", 200).await;

    let made = acl(
        &c.managers[0],
        &[
            "create",
            "--description",
            "app deployer",
            "--write",
            "app/",
            "--deny",
            "app/secret/",
            "--read",
            "config/",
            "--session",
            "write",
        ],
    )
    .await;
    assert!(made.ok(), "{made:?}");
    let secret = field(&made.stdout, "SecretID").to_string();
    let accessor = field(&made.stdout, "AccessorID").to_string();
    assert_eq!(secret.len(), 36);
    let q = |path: &str| {
        format!(
            "{path}{}token={secret}",
            if path.contains('?') { "&" } else { "?" }
        )
    };

    // Honoured on the other manager (once it applied the write), by the query parameter...
    let deadline = Instant::now() + WAIT;
    while call(b, "PUT", &q("/v1/kv/app/x"), b"1").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the token never took effect on the other manager"
        );
        sleep(Duration::from_millis(100)).await;
    }
    // ...the header and a bearer.
    let with = |h: &'static str, v: String| async move {
        http_with(b, "PUT", "/v1/kv/app/y", &[(h, &v)], b"2")
            .await
            .unwrap()
    };
    assert_eq!(with("X-Consul-Token", secret.clone()).await.status, 200);
    assert_eq!(
        with("Authorization", format!("Bearer {secret}"))
            .await
            .status,
        200
    );
    // Rules: write under app/, nothing under app/secret/, read only under config/.
    let r = expect(b, "PUT", &q("/v1/kv/app/secret/k"), b"1", 403).await;
    assert!(
        r.text().contains(&format!(
            "AccessorID '{accessor}' lacks permission 'key:write'"
        )),
        "{}",
        r.text()
    );
    expect(b, "PUT", &q("/v1/kv/config/k"), b"1", 403).await;
    expect(b, "GET", &q("/v1/kv/config/k"), b"", 404).await;
    expect(b, "GET", &q("/v1/kv/other"), b"", 403).await;
    // A tree read leaves out what the token may not read, and says so.
    let r = expect(b, "GET", &q("/v1/kv/?recurse"), b"", 200).await;
    let keys: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["Key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(keys, ["app/x", "app/y"]);
    assert_eq!(r.header("X-Consul-Results-Filtered-By-ACLs"), Some("true"));
    // A recursive delete of app/ would reach app/secret/: refused; below it, allowed.
    expect(b, "DELETE", &q("/v1/kv/app/?recurse"), b"", 403).await;
    expect_bool(b, "DELETE", &q("/v1/kv/app/y?recurse"), b"", true).await;
    // The cluster's own records: refused whatever the token says, even one that may write
    // every key.
    let all = acl(&c.managers[0], &["create", "--write", ""]).await;
    assert!(all.ok(), "{all:?}");
    let root = field(&all.stdout, "SecretID").to_string();
    let deadline = Instant::now() + WAIT;
    while call(b, "PUT", &format!("/v1/kv/root-test?token={root}"), b"1")
        .await
        .status
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "the second token never took effect"
        );
        sleep(Duration::from_millis(100)).await;
    }
    let r = expect(
        b,
        "PUT",
        &format!("/v1/kv//shoal/leader/term?token={root}"),
        b"9",
        403,
    )
    .await;
    assert!(r.text().contains("/shoal/"), "{}", r.text());
    // Sessions (write) and a transaction within the rules; one op outside refuses it whole.
    let s = expect(b, "PUT", &q("/v1/session/create"), b"{}", 200)
        .await
        .json();
    assert!(s["ID"].as_str().is_some());
    let ok = br#"[{"KV":{"Verb":"set","Key":"app/t","Value":"MQ=="}},{"KV":{"Verb":"get","Key":"app/x"}}]"#;
    expect(b, "PUT", &q("/v1/txn"), ok, 200).await;
    let bad = br#"[{"KV":{"Verb":"set","Key":"app/t2","Value":"MQ=="}},{"KV":{"Verb":"set","Key":"config/k","Value":"MQ=="}}]"#;
    expect(b, "PUT", &q("/v1/txn"), bad, 403).await;
    expect(b, "GET", &q("/v1/kv/app/t2"), b"", 404).await;

    // Listed without its secret; deleted, it is not found anywhere.
    let ls = acl(&c.managers[1], &["ls"]).await;
    assert!(
        ls.ok() && ls.stdout.contains(&accessor) && ls.stdout.contains("app deployer"),
        "{ls:?}"
    );
    assert!(!ls.stdout.contains(&secret), "{ls:?}");
    let rm = acl(&c.managers[1], &["rm", &accessor[..8]]).await;
    assert!(rm.ok() && rm.stdout.trim() == accessor, "{rm:?}");
    let deadline = Instant::now() + WAIT;
    loop {
        let r = call(a, "GET", &q("/v1/kv/app/x"), b"").await;
        if r.status == 403 && r.text().contains("ACL not found") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a deleted token still answers {}",
            r.status
        );
        sleep(Duration::from_millis(100)).await;
    }
    // Bad input: two rules for one prefix, an unknown accessor: one line, non-zero exit.
    let twice = acl(&c.managers[0], &["create", "--read", "a/", "--write", "a/"]).await;
    assert!(
        !twice.ok() && twice.stderr.trim().lines().count() == 1,
        "{twice:?}"
    );
    assert!(
        twice.stderr.contains("two rules for the key prefix"),
        "{twice:?}"
    );
    let unknown = acl(&c.managers[0], &["rm", "nope"]).await;
    assert!(
        !unknown.ok() && unknown.stderr.contains("no such ACL token"),
        "{unknown:?}"
    );
}

/// Installs py-consul if it is missing; fails (never skips) when that is impossible.
fn ensure_py_consul() {
    let have = |py: &str| {
        std::process::Command::new(py)
            .args(["-c", "import consul"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if have("python3") {
        return;
    }
    let out = std::process::Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "py-consul==1.8.0"])
        .output()
        .expect("python3 must be installed to run the Consul client test");
    assert!(
        out.status.success() && have("python3"),
        "could not install py-consul with `python3 -m pip install py-consul==1.8.0` (is pip available and PyPI reachable?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn run_python(phase: &str, w: &str, r: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/consul_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new("python3")
            .arg(&script)
            .args([phase, w, r])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("consul_client.py {phase} did not finish within 180 s"))
    .expect("running python3");
    assert!(
        out.status.success(),
        "consul_client.py {phase} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn consul_python_client_across_managers_and_after_leader_kill() {
    ensure_py_consul();
    let _serial = serial().await;
    let mut c = HttpCluster::start(3).await;
    let leader = c.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    run_python("full", &c.http[follower], &c.http[leader]).await;
    c.managers[leader].kill();
    until_ok(&c.http[follower], "PUT", "/v1/kv/after-kill", b"1").await;
    run_python("quick", &c.http[follower], &c.http[other]).await;
}
