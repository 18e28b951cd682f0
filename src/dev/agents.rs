//! The agents of `shoal dev`: `node-I` processes of the same binary against the local Docker
//! engine, each advertising its own 127.0.0.x address, started once the managers are voters and
//! waited for until the leader has them as READY nodes.

use std::path::Path;
use std::time::Duration;

use super::layout::{AgentEntry, AgentSlot};
use super::procs::{self, Group};
use super::{DevError, START_TIMEOUT};
use crate::client::{Client, ClientConfig};
use crate::model::{keys, Node, NodeStatus};

/// Starts every agent, joined to all `managers`; returns their cluster.json entries once each
/// is a READY node.
pub(crate) async fn start(
    exe: &Path,
    slots: &[AgentSlot],
    managers: &[String],
    token: &str,
    tls_dir: &std::path::Path,
    group: &mut Group,
) -> Result<Vec<AgentEntry>, DevError> {
    let mut started = Vec::with_capacity(slots.len());
    for slot in slots {
        let args = slot.agent_args(managers, token);
        let index = group.spawn("agent", &slot.name, exe, &args, &slot.log)?;
        started.push((slot, index));
    }
    wait_ready(&started, managers, tls_dir, group).await?;
    Ok(started
        .iter()
        .map(|(slot, index)| AgentEntry {
            name: slot.name.clone(),
            pid: group.get(*index).pid,
            addr: slot.addr.to_string(),
            data_dir: slot.data_dir.clone(),
            log: slot.log.clone(),
        })
        .collect())
}

/// Waits until every agent's node is READY in the store, failing as soon as one exits.
async fn wait_ready(
    started: &[(&AgentSlot, usize)],
    managers: &[String],
    tls_dir: &std::path::Path,
    group: &mut Group,
) -> Result<(), DevError> {
    let config = super::client_config(managers.to_vec(), tls_dir);
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        for (slot, index) in started {
            if let Some(status) = group.exited(*index) {
                return Err(DevError::ExitedEarly {
                    kind: "agent",
                    name: slot.name.clone(),
                    status,
                    last_log_line: procs::last_log_line(&slot.log),
                    log: slot.log.clone(),
                });
            }
        }
        let ready = ready_names(&config).await;
        let waiting = started.iter().find(|(slot, _)| !ready.contains(&slot.name));
        let Some((slot, _)) = waiting else {
            return Ok(());
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(DevError::StartTimeout {
                kind: "agent",
                name: slot.name.clone(),
                what: "register as a READY node (is the Docker engine running?)",
                waited: START_TIMEOUT,
                log: slot.log.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Names of the READY nodes; empty while no manager answers.
async fn ready_names(config: &ClientConfig) -> Vec<String> {
    let Ok(mut client) = Client::connect(config.clone()).await else {
        return Vec::new();
    };
    let req = shoal_proto::v1::RangeRequest {
        key: keys::NODES.as_bytes().to_vec(),
        prefix: true,
        ..Default::default()
    };
    let Ok(resp) = client.range(req).await else {
        return Vec::new();
    };
    resp.kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Node>(&kv.value).ok())
        .filter(|n| n.status == NodeStatus::Ready)
        .map(|n| n.name)
        .collect()
}
