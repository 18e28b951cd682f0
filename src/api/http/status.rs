//! What clients and monitoring probe: `/v1/status/*`, `/v1/agent/self`, `/v1/catalog/nodes`,
//! `/health` (Prometheus `/metrics` is `crate::metrics`). The catalog lists the managers only for now: agents
//! join the cluster (and this list) in a later issue.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;
use shoal_raft::MemberStatus;
use shoal_raft::NodeId;

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
