//! `shoal cluster status|token` and `shoal manager remove ID`.

use serde::Serialize;
use shoal_proto::v1 as pb;

use super::{out, CliError, ClusterCommand};
use crate::client::Client;

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
    members: Vec<JsonMember<'a>>,
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
            if json {
                out(serde_json::to_string_pretty(&json_status(&status)).expect("plain data"))
            } else {
                out(table(&status))
            }
        }
        ClusterCommand::Token => out(client.token().await?),
    }
}

pub(super) async fn remove(mut client: Client, id: u64) -> Result<(), CliError> {
    let resp = client.remove_manager(id).await?;
    let voters: Vec<String> = resp.voters.iter().map(u64::to_string).collect();
    out(format_args!(
        "removed manager {id}; voters now: {}",
        voters.join(", ")
    ))
}

fn json_status(s: &pb::StatusResponse) -> JsonStatus<'_> {
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
    }
}

/// The human view: a summary, then one row per manager.
fn table(s: &pb::StatusResponse) -> String {
    let leader = if s.leader_id == 0 {
        "none".to_string()
    } else {
        format!("{} ({})", s.leader_id, s.leader_addr)
    };
    let mut text = format!(
        "cluster   {}\nleader    {leader}\nterm      {}\ncommit    {}\nrevision  {}\nanswered  by {} (applied {}, snapshot {}, purged {})\n\n",
        s.cluster_id, s.term, s.commit_index, s.revision, s.member_id, s.applied_index, s.snapshot_index, s.purged_index,
    );
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
}
