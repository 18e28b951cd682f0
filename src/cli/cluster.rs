//! `shoal cluster status|token|client-cert|client-certs|revoke-client|ca` and `shoal manager
//! remove ID`. The status also names every proxy whose last config did not go live.

use serde::Serialize;
use shoal_proto::v1 as pb;
use shoal_raft::human_bytes;

use super::{out, CliError, ClusterCommand};
use crate::client::Client;
use crate::model::ProxyStatus;

#[derive(Serialize)]
struct JsonStatus<'a> {
    cluster_id: &'a str,
    /// The manager that answered.
    member_id: u64,
    leader_id: u64,
    leader_addr: &'a str,
    term: u64,
    commit_index: u64,
    applied_index: u64,
    revision: u64,
    snapshot_index: u64,
    purged_index: u64,
    /// The storage quota in force (0: none recorded yet) and the bytes it counts.
    quota_bytes: u64,
    used_bytes: u64,
    /// Raised alarms (`NOSPACE ...`); empty when all is well.
    alarms: &'a [String],
    members: Vec<JsonMember<'a>>,
    /// Every running `shoal proxy`'s status.
    proxies: &'a [ProxyStatus],
}

#[derive(Serialize)]
struct JsonMember<'a> {
    id: u64,
    addr: &'a str,
    role: &'a str,
    voter: bool,
    healthy: bool,
    applied_index: u64,
    http: &'a str,
    docker_api: &'a str,
}

pub(super) async fn run(mut client: Client, command: ClusterCommand) -> Result<(), CliError> {
    match command {
        ClusterCommand::Status { json } => {
            let status = client.status().await?;
            let proxies = super::proxy::statuses_for_cluster(&mut client).await;
            if json {
                let doc = json_status(&status, &proxies);
                out(serde_json::to_string_pretty(&doc).expect("plain data"))
            } else {
                out(table(&status))?;
                proxy_errors(&proxies).try_for_each(out)
            }
        }
        ClusterCommand::Token { role, rotate } => out(client.token(&role, rotate).await?),
        ClusterCommand::ClientCert { dir, name } => client_cert(&mut client, &dir, &name).await,
        ClusterCommand::ClientCerts { json } => client_certs(&mut client, json).await,
        ClusterCommand::RevokeClient { name } => {
            let known = client.revoke_client(&name).await?;
            out(format_args!(
                "revoked client certificate name {name}{}: managers refuse its certificates from the next second on",
                if known { "" } else { " (issued before the CA kept records, or never)" }
            ))
        }
        ClusterCommand::Ca { rotate, json } => {
            if rotate {
                let r = client.rotate_ca().await?;
                out(format_args!(
                    "root CA rotation started (generation {}): nodes trust the new root, then renew their certificates, then the old root is dropped",
                    r.generation
                ))?;
            }
            let info = client.ca_info().await?;
            let digests: Vec<String> = shoal_tls::pki::certs_from_pem(&info.roots_pem)
                .map(|certs| {
                    certs
                        .iter()
                        .map(|c| shoal_tls::pki::digest_der(c))
                        .collect()
                })
                .unwrap_or_default();
            if json {
                let doc = serde_json::json!({
                    "cluster_id": info.cluster_id,
                    "generation": info.generation,
                    "phase": info.phase,
                    "roots_sha256": digests,
                    "cert_lifetime_secs": info.cert_lifetime_secs,
                });
                out(serde_json::to_string_pretty(&doc).expect("plain data"))
            } else {
                out(format_args!(
                    "cluster {} CA generation {} phase {} certificate lifetime {}s roots (sha256) {}",
                    info.cluster_id,
                    info.generation,
                    info.phase,
                    info.cert_lifetime_secs,
                    digests.join(",")
                ))
            }
        }
    }
}

/// `cluster client-cert DIR`: the key never leaves this machine; the CA signs a request for it.
async fn client_cert(
    client: &mut Client,
    dir: &std::path::Path,
    name: &str,
) -> Result<(), CliError> {
    let tls = |e: shoal_tls::TlsError| CliError::Tls(e.to_string());
    let (key_pem, csr_pem) = shoal_tls::pki::signing_request().map_err(tls)?;
    let issued = client.issue_client(name, &csr_pem).await?;
    let creds = shoal_tls::Credentials::with_cert(&issued.roots_pem, &issued.cert_pem, &key_pem)
        .map_err(tls)?;
    creds.save_dir(dir).map_err(tls)?;
    out(format_args!(
        "wrote {}/{{ca,cert,key}}.pem: use `shoal --tls-dir {0}`, or `docker --tlsverify` with DOCKER_CERT_PATH={0}",
        dir.display()
    ))
}

/// `cluster client-certs [--json]`.
async fn client_certs(client: &mut Client, json: bool) -> Result<(), CliError> {
    let certs = client.clients().await?;
    if json {
        let doc: Vec<serde_json::Value> = certs
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "issued_by": c.issued_by,
                    "issued_ms": c.issued_ms,
                    "expires_ms": c.expires_ms,
                    "count": c.count,
                    "revoked": c.revoked,
                })
            })
            .collect();
        return out(serde_json::to_string_pretty(&doc).expect("plain data"));
    }
    let now = crate::host::now_ms();
    let rows: Vec<Vec<String>> = certs
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.issued_by.clone(),
                since(c.issued_ms, now).map_or(String::new(), |d| format!("{d} ago")),
                since(now, c.expires_ms).map_or(String::new(), |d| format!("in {d}")),
                c.count.to_string(),
                if c.revoked { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    let header = ["NAME", "ISSUED BY", "ISSUED", "EXPIRES", "COUNT", "REVOKED"];
    out(super::table::render(&header, &rows))
}

/// `from` to `to` in its largest whole unit (`3d`, `5h`, `12m`, `40s`); None when either is
/// unknown (0) or `to` is before `from`.
fn since(from: u64, to: u64) -> Option<String> {
    if from == 0 || to == 0 || to < from {
        return None;
    }
    let secs = (to - from) / 1000;
    Some(match secs {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    })
}

pub(super) async fn remove(mut client: Client, id: u64) -> Result<(), CliError> {
    let resp = client.remove_manager(id).await?;
    let voters: Vec<String> = resp.voters.iter().map(u64::to_string).collect();
    out(format_args!(
        "removed manager {id}; voters now: {}",
        voters.join(", ")
    ))
}

fn json_status<'a>(s: &'a pb::StatusResponse, proxies: &'a [ProxyStatus]) -> JsonStatus<'a> {
    JsonStatus {
        cluster_id: &s.cluster_id,
        member_id: s.member_id,
        leader_id: s.leader_id,
        leader_addr: &s.leader_addr,
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        revision: s.revision,
        snapshot_index: s.snapshot_index,
        purged_index: s.purged_index,
        quota_bytes: s.quota_bytes,
        used_bytes: s.used_bytes,
        alarms: &s.alarms,
        members: s
            .members
            .iter()
            .map(|m| JsonMember {
                id: m.id,
                addr: &m.addr,
                role: &m.role,
                voter: m.voter,
                healthy: m.healthy,
                applied_index: m.applied_index,
                http: &m.http,
                docker_api: &m.docker_api,
            })
            .collect(),
        proxies,
    }
}

/// One line per proxy whose last config did not go live.
fn proxy_errors(proxies: &[ProxyStatus]) -> impl Iterator<Item = String> + '_ {
    proxies.iter().filter_map(|p| {
        let error = p.error.as_deref()?;
        Some(format!(
            "proxy {} ({}, live generation {}): {error}",
            p.name, p.kind, p.applied_generation
        ))
    })
}

/// The human view: a summary, then one row per manager.
fn table(s: &pb::StatusResponse) -> String {
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_addr)
    };
    let storage = if s.quota_bytes == 0 {
        format!("{} used, no quota recorded yet", human_bytes(s.used_bytes))
    } else {
        format!(
            "{} used of a {} quota",
            human_bytes(s.used_bytes),
            human_bytes(s.quota_bytes)
        )
    };
    let mut text = format!(
        "cluster   {}\nleader    {leader}\nterm      {}\ncommit    {}\nrevision  {}\nstorage   {storage}\n",
        s.cluster_id, s.term, s.commit_index, s.revision,
    );
    for alarm in &s.alarms {
        text.push_str(&format!("alarm     {alarm}\n"));
    }
    text.push_str(&format!(
        "answered  by {} (applied {}, snapshot {}, purged {})\n\n",
        s.member_id, s.applied_index, s.snapshot_index, s.purged_index,
    ));
    let mut rows = vec![["ID", "ADDRESS", "ROLE", "VOTER", "HEALTH", "APPLIED"].map(String::from)];
    for m in &s.members {
        rows.push([
            m.id.to_string(),
            m.addr.clone(),
            m.role.clone(),
            if m.voter { "yes" } else { "no" }.to_string(),
            if m.healthy { "healthy" } else { "unhealthy" }.to_string(),
            m.applied_index.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let lines: Vec<String> = rows
        .iter()
        .map(|r| {
            let cells: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            cells.join("  ").trim_end().to_string()
        })
        .collect();
    text.push_str(&lines.join("\n"));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_lists_every_member() {
        let status = pb::StatusResponse {
            cluster_id: "c1".into(),
            leader_id: 2,
            leader_addr: "127.0.0.1:7002".into(),
            term: 3,
            commit_index: 40,
            members: vec![
                pb::Member {
                    id: 1,
                    addr: "127.0.0.1:7001".into(),
                    role: "follower".into(),
                    healthy: true,
                    applied_index: 40,
                    voter: true,
                    ..Default::default()
                },
                pb::Member {
                    id: 2,
                    addr: "127.0.0.1:7002".into(),
                    role: "leader".into(),
                    healthy: true,
                    applied_index: 40,
                    voter: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let text = table(&status);
        assert!(text.contains("leader    2 (127.0.0.1:7002)"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("1   127.0.0.1:7001  follower  yes    healthy  40")),
            "{text}"
        );
    }

    #[test]
    fn only_proxies_with_an_error_get_a_line_and_json_lists_them_all() {
        let proxy = |name: &str, error: Option<&str>| ProxyStatus {
            name: name.into(),
            kind: "nginx".into(),
            applied_generation: 4,
            applied_revision: 30,
            error: error.map(String::from),
            updated_ms: 1,
            reloads: 0,
            failures: 0,
            applied_ms: 0,
        };
        let proxies = [
            proxy("edge-1", None),
            proxy(
                "edge-2",
                Some("generation 5: nginx is not running (no pid in /run/nginx.pid)"),
            ),
        ];
        let lines: Vec<String> = proxy_errors(&proxies).collect();
        assert_eq!(
            lines,
            ["proxy edge-2 (nginx, live generation 4): generation 5: nginx is not running (no pid in /run/nginx.pid)"]
        );
        let status = pb::StatusResponse::default();
        let json = serde_json::to_value(json_status(&status, &proxies)).unwrap();
        assert_eq!(json["proxies"].as_array().unwrap().len(), 2);
        assert_eq!(json["proxies"][1]["name"], "edge-2");
    }
}
