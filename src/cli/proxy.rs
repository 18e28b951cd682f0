//! `shoal proxy config|status`: the config the leader rendered for the proxies, and what each
//! `shoal proxy` reports it applied. (`shoal proxy --join ...`, the process, is `crate::proxy`.)

use clap::Subcommand;
use serde::Serialize;
use shoal_proto::v1 as pb;

use super::objects::{self, Versioned};
use super::{out, table, CliError, GlobalArgs};
use crate::client::Client;
use crate::model::{keys, ProxyConfig, ProxyStatus};

/// `shoal proxy ...`
#[derive(Debug, Subcommand)]
pub enum ProxyCommand {
    /// Print the config the leader rendered (for port 80 and the standard paths).
    Config {
        /// Which rendering to print.
        #[arg(long, default_value = "nginx", value_parser = ["nginx", "haproxy"])]
        kind: String,
        /// The whole record (generation, model, nginx, haproxy) and its revision, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the running proxies: NAME KIND GENERATION REVISION ERROR.
    Status {
        /// A JSON array of the proxies' statuses.
        #[arg(long)]
        json: bool,
    },
}

/// `shoal proxy config --json`: the stored record with the revision it was written at.
#[derive(Serialize)]
struct JsonConfig<'a> {
    revision: u64,
    #[serde(flatten)]
    record: &'a ProxyConfig,
}

pub(super) async fn run(global: &GlobalArgs, command: ProxyCommand) -> Result<(), CliError> {
    let client = &mut global.connect().await?;
    match command {
        ProxyCommand::Config { kind, json } => {
            let Some(config) = objects::get::<ProxyConfig>(client, keys::PROXY_CONFIG).await?
            else {
                return Err(CliError::Usage(
                    "no proxy config yet: the leader has not written /shoal/proxy/config",
                ));
            };
            if json {
                let doc = JsonConfig {
                    revision: config.mod_revision,
                    record: &config.value,
                };
                return out(serde_json::to_string_pretty(&doc).expect("plain data"));
            }
            let text = match kind.as_str() {
                "haproxy" => &config.value.haproxy,
                _ => &config.value.nginx,
            };
            out(text.trim_end_matches('\n'))
        }
        ProxyCommand::Status { json } => {
            let statuses: Vec<Versioned<ProxyStatus>> =
                objects::list(client, keys::PROXY_STATUS).await?;
            let mut statuses: Vec<ProxyStatus> = statuses.into_iter().map(|s| s.value).collect();
            statuses.sort_by(|a, b| a.name.cmp(&b.name));
            if json {
                return out(serde_json::to_string_pretty(&statuses).expect("plain data"));
            }
            out(status_table(&statuses))
        }
    }
}

/// NAME KIND GENERATION REVISION ERROR, one row per proxy.
fn status_table(statuses: &[ProxyStatus]) -> String {
    let rows: Vec<Vec<String>> = statuses
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.kind.clone(),
                s.applied_generation.to_string(),
                s.applied_revision.to_string(),
                s.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(&["NAME", "KIND", "GENERATION", "REVISION", "ERROR"], &rows)
}

/// Every proxy's status for `cluster status`, from this manager's replica (it must answer even
/// without a leader); unreadable entries are left out. Empty if the read fails.
pub(super) async fn statuses_for_cluster(client: &mut Client) -> Vec<ProxyStatus> {
    let req = pb::RangeRequest {
        key: keys::PROXY_STATUS.as_bytes().to_vec(),
        prefix: true,
        stale: true,
        ..Default::default()
    };
    let Ok(resp) = client.range(req).await else {
        return Vec::new();
    };
    let mut statuses: Vec<ProxyStatus> = resp
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    statuses.sort_by(|a, b| a.name.cmp(&b.name));
    statuses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_has_one_row_per_proxy_and_a_dash_without_error() {
        let status = |name: &str, error: Option<&str>| ProxyStatus {
            name: name.into(),
            kind: "nginx".into(),
            applied_generation: 7,
            applied_revision: 120,
            error: error.map(String::from),
            updated_ms: 1,
            reloads: 0,
            failures: 0,
            applied_ms: 0,
        };
        let text = status_table(&[
            status("edge-1", None),
            status(
                "edge-2",
                Some("generation 8: nginx refused the config: [emerg] x"),
            ),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "NAME    KIND   GENERATION  REVISION  ERROR");
        assert_eq!(lines[1], "edge-1  nginx  7           120       -");
        assert!(lines[2].ends_with("120       generation 8: nginx refused the config: [emerg] x"));
    }

    #[test]
    fn the_json_config_is_the_record_with_its_revision() {
        let record = ProxyConfig {
            generation: 2,
            model: Default::default(),
            nginx: "n".into(),
            haproxy: "h".into(),
        };
        let json = serde_json::to_value(JsonConfig {
            revision: 9,
            record: &record,
        })
        .unwrap();
        assert_eq!(json["revision"], 9);
        assert_eq!(json["generation"], 2);
        assert_eq!(json["nginx"], "n");
        let back: ProxyConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }
}
