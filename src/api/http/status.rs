//! What clients and monitoring probe: `/v1/status/*`, `/v1/agent/self`, `/v1/catalog/nodes`,
//! `/health` and Prometheus `/metrics`. The catalog lists the managers only for now: agents
//! join the cluster (and this list) in a later issue.

use std::fmt::Write as _;

use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use serde_json::json;
use shoal_raft::MemberStatus;
use shoal_raft::NodeId;

use crate::api::conn::{ApiConns, ConnStats};

use super::error::ApiError;
use super::json;
use super::query::Query;
use super::query::DATACENTER;
use super::session::session_id;
use super::Api;

/// The Consul node name of a manager.
pub(crate) fn node_name(id: NodeId) -> String {
    format!("manager-{id}")
}

/// How Consul clients reach a member: its HTTP API if it serves one, else its gRPC address.
fn addr(m: &MemberStatus) -> String {
    if m.node.http.is_empty() {
        m.node.grpc.clone()
    } else {
        m.node.http.clone()
    }
}

fn host(addr: &str) -> String {
    addr.rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']')
        .to_string()
}

pub(crate) async fn leader(api: &Api, q: Option<&str>) -> Result<Response, ApiError> {
    Query::parse(q, &["stale", "consistent"])?;
    let s = api.store.status().await;
    let leader = s
        .members
        .iter()
        .find(|m| Some(m.id) == s.leader)
        .map(addr)
        .unwrap_or_default();
    Ok(json(StatusCode::OK, &leader))
}

pub(crate) async fn peers(api: &Api, q: Option<&str>) -> Result<Response, ApiError> {
    Query::parse(q, &["stale", "consistent"])?;
    let s = api.store.status().await;
    let voters: Vec<String> = s.members.iter().filter(|m| m.voter).map(addr).collect();
    Ok(json(StatusCode::OK, &voters))
}

pub(crate) async fn agent_self(api: &Api, q: Option<&str>) -> Result<Response, ApiError> {
    Query::parse(q, &[])?;
    let id = api.store.id();
    let s = api.store.status().await;
    let me = s.members.iter().find(|m| m.id == id);
    let a = me.map(addr).unwrap_or_default();
    let port: u16 = a
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    let body = json!({
        "Config": {
            "Datacenter": DATACENTER,
            "PrimaryDatacenter": DATACENTER,
            "NodeName": node_name(id),
            "NodeID": session_id(id),
            "Server": true,
            "Version": "1.15.0",
            "Revision": concat!("shoal-", env!("CARGO_PKG_VERSION")),
        },
        "Member": {
            "Name": node_name(id),
            "Addr": host(&a),
            "Port": port,
            "Tags": {
                "dc": DATACENTER,
                "role": "consul",
                "shoal_role": "manager",
                "build": concat!("shoal-", env!("CARGO_PKG_VERSION")),
            },
            "Status": 1,
        },
        "Meta": {},
        "Stats": {
            "raft": {
                "state": me.map_or("unknown", |m| m.role.as_str()),
                "term": s.term.to_string(),
                "commit_index": s.commit_index.to_string(),
                "applied_index": s.applied_index.to_string(),
            }
        },
    });
    Ok(json(StatusCode::OK, &body))
}

/// The members as the catalog shows them, to notice a change.
fn fingerprint(members: &[MemberStatus]) -> Vec<(NodeId, String, String)> {
    members
        .iter()
        .map(|m| (m.id, m.node.grpc.clone(), m.node.http.clone()))
        .collect()
}

pub(crate) async fn catalog_nodes(api: &Api, q: Option<&str>) -> Result<Response, ApiError> {
    let q = Query::parse(q, &["stale", "consistent", "index", "wait"])?;
    let mut s = api.store.status().await;
    // Membership changes are not store events: a blocking query polls for one, and answers
    // with the client's index if none comes (never at once, which would make clients spin).
    if let Some((index, wait)) = q.blocking()? {
        let before = fingerprint(&s.members);
        let deadline = tokio::time::Instant::now() + wait;
        let mut stopping = api.stopping.clone();
        loop {
            let step = deadline.saturating_duration_since(tokio::time::Instant::now());
            if step.is_zero() || *stopping.borrow() {
                return Ok(api.with_meta(json(StatusCode::OK, &nodes(&s.members)), index));
            }
            tokio::select! {
                _ = tokio::time::sleep(step.min(std::time::Duration::from_secs(1))) => {}
                _ = stopping.changed() => {}
            }
            s = api.store.status().await;
            if fingerprint(&s.members) != before {
                break;
            }
        }
    }
    Ok(api.with_meta(json(StatusCode::OK, &nodes(&s.members)), s.revision))
}

fn nodes(members: &[MemberStatus]) -> Vec<serde_json::Value> {
    members
        .iter()
        .map(|m| {
            let a = host(&addr(m));
            json!({
                "ID": session_id(m.id),
                "Node": node_name(m.id),
                "Address": a,
                "Datacenter": DATACENTER,
                "TaggedAddresses": { "lan": a, "wan": a },
                "Meta": {
                    "shoal-role": "manager",
                    "shoal-grpc": m.node.grpc,
                    "shoal-http": m.node.http,
                },
                "CreateIndex": 1,
                "ModifyIndex": 1,
            })
        })
        .collect()
}

/// 200 while this manager knows a leader, 503 otherwise.
pub(crate) async fn health(api: &Api) -> Result<Response, ApiError> {
    let leader = api.store.leader();
    let status = if leader.is_some() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if leader.is_some() { "ok" } else { "no leader" },
        "id": api.store.id(),
        "leader": leader,
        "revision": api.store.revision(),
    });
    Ok(json(status, &body))
}

/// Prometheus text exposition of this manager's replica and of the cluster as it sees it.
pub(crate) async fn metrics(api: &Api) -> Result<Response, ApiError> {
    let s = api.store.status().await;
    let id = api.store.id();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP shoal_{name} {help}");
        let _ = writeln!(out, "# TYPE shoal_{name} gauge");
        let _ = writeln!(out, "shoal_{name} {value}");
    };
    gauge(
        "is_leader",
        "1 if this manager is the Raft leader.",
        u64::from(s.leader == Some(id)),
    );
    gauge(
        "has_leader",
        "1 if this manager knows a leader.",
        u64::from(s.leader.is_some()),
    );
    gauge(
        "leader_id",
        "Id of the leader this manager knows (0: none).",
        s.leader.unwrap_or(0),
    );
    gauge("raft_term", "Current Raft term.", s.term);
    gauge(
        "raft_commit_index",
        "Highest log index known committed.",
        s.commit_index,
    );
    gauge(
        "raft_applied_index",
        "Highest log index applied by this manager.",
        s.applied_index,
    );
    gauge(
        "raft_snapshot_index",
        "Log index of this manager's latest snapshot.",
        s.snapshot_index,
    );
    gauge(
        "store_revision",
        "Store revision this manager has applied.",
        s.revision,
    );
    gauge(
        "store_used_bytes",
        "Bytes the store holds, as its quota counts them.",
        s.used_bytes,
    );
    gauge(
        "store_quota_bytes",
        "The storage quota in force (0: none recorded yet).",
        s.quota_bytes,
    );
    gauge(
        "store_alarm_nospace",
        "1 while the NOSPACE alarm is raised: writes that add data are refused.",
        u64::from(s.alarms.iter().any(|a| a.starts_with("NOSPACE"))),
    );
    gauge(
        "managers",
        "Managers in the membership.",
        s.members.len() as u64,
    );
    gauge(
        "voters",
        "Voting managers.",
        s.members.iter().filter(|m| m.voter).count() as u64,
    );
    connection_metrics(&mut out, &api.conns);
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response())
}

/// A metric's name, kind, help and reading.
type Metric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ConnStats) -> u64,
);

/// The HTTP surfaces' connection counters, labelled by surface (`api="docker"`, `api="http"`).
fn connection_metrics(out: &mut String, conns: &ApiConns) {
    let surfaces = [("docker", &conns.docker), ("http", &conns.http)];
    let metrics: [Metric; 3] = [
        (
            "api_connections_open",
            "gauge",
            "Connections open on a manager's HTTP surface (TLS handshakes and hijacked streams included).",
            ConnStats::open,
        ),
        (
            "api_connections_accepted_total",
            "counter",
            "Connections a manager's HTTP surface took.",
            ConnStats::accepted,
        ),
        (
            "api_connections_refused_total",
            "counter",
            "Connections closed at once because the surface had --api-max-connections open.",
            ConnStats::refused,
        ),
    ];
    for (name, kind, help, value) in metrics {
        let _ = writeln!(out, "# HELP shoal_{name} {help}");
        let _ = writeln!(out, "# TYPE shoal_{name} {kind}");
        for (api, stats) in surfaces {
            let _ = writeln!(out, "shoal_{name}{{api=\"{api}\"}} {}", value(stats));
        }
    }
}
