//! `shoal node ls|inspect|update|rm`: the Docker hosts as registered by their agents. An operator
//! writes only `availability` and `operator_labels`; status, agent labels and images belong to
//! the leader's dispatcher and are never written here.

use std::collections::{BTreeMap, BTreeSet};

use clap::Subcommand;

use super::objects::{self, Versioned};
use super::{out, spec, table, CliError, GlobalArgs};
use crate::model::{keys, Availability, Node, NodeStatus, Task};

/// `shoal node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List nodes: ID NAME ADDRESS STATUS AVAILABILITY TASKS ENGINE LABELS.
    Ls {
        /// A JSON array of the nodes.
        #[arg(long)]
        json: bool,
    },
    /// Print nodes as a JSON array.
    Inspect {
        /// Node names, ids or unique id prefixes.
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Accepted for symmetry: the output is always JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set a node's availability or operator labels.
    Update {
        /// active, or drain: no new tasks, and its tasks move elsewhere.
        #[arg(long, value_name = "active|drain")]
        availability: Option<String>,
        /// Add or replace an operator label (constraints see it; it wins over the agent's).
        #[arg(long = "label-add", value_name = "K=V")]
        label_add: Vec<String>,
        /// Remove an operator label.
        #[arg(long = "label-rm", value_name = "K")]
        label_rm: Vec<String>,
        /// Print the node as written instead of its id.
        #[arg(long)]
        json: bool,
        /// With --availability drain: return once no task runs on the node any more (each was
        /// replaced elsewhere first, then stopped).
        #[arg(long)]
        wait: bool,
        /// Node name, id or unique id prefix.
        node: String,
    },
    /// Remove a node: its certificate is refused from then on (its agent stops), its tasks are
    /// replaced elsewhere. A READY node needs --force.
    Rm {
        /// Node name, id or unique id prefix.
        node: String,
        #[arg(long)]
        force: bool,
    },
}

/// What `node update` changes, validated before anything is read or written.
#[derive(Debug, Default, PartialEq)]
struct Changes {
    availability: Option<Availability>,
    add: BTreeMap<String, String>,
    remove: BTreeSet<String>,
}

pub(super) async fn run(global: &GlobalArgs, command: NodeCommand) -> Result<(), CliError> {
    match command {
        NodeCommand::Ls { json } => {
            let client = &mut global.connect().await?;
            let nodes: Vec<Versioned<Node>> = objects::list(client, keys::NODES).await?;
            let nodes = by_name(nodes.into_iter().map(|n| n.value).collect());
            if json {
                return out(pretty(&nodes));
            }
            let tasks: Vec<Versioned<Task>> = objects::list(client, keys::TASKS).await?;
            let tasks: Vec<Task> = tasks.into_iter().map(|t| t.value).collect();
            out(ls_table(&nodes, &tasks))
        }
        NodeCommand::Rm { node, force } => {
            let client = &mut global.connect().await?;
            let nodes: Vec<Versioned<Node>> = objects::list(client, keys::NODES).await?;
            let id = objects::resolve(&nodes, &node)?.value.id.clone();
            client.remove_node(&id, force).await?;
            out(&id)
        }
        NodeCommand::Inspect { nodes: queries, .. } => {
            let client = &mut global.connect().await?;
            let nodes: Vec<Versioned<Node>> = objects::list(client, keys::NODES).await?;
            let found = queries
                .iter()
                .map(|q| objects::resolve(&nodes, q).map(|n| &n.value))
                .collect::<Result<Vec<_>, _>>()?;
            out(pretty(&found))
        }
        NodeCommand::Update {
            availability,
            label_add,
            label_rm,
            json,
            wait,
            node,
        } => {
            let changes = changes(availability.as_deref(), &label_add, &label_rm)?;
            if wait && changes.availability != Some(Availability::Drain) {
                return Err(CliError::Usage("--wait goes with --availability drain"));
            }
            let client = &mut global.connect().await?;
            let written: Node = objects::update(client, keys::NODES, &node, |n: &mut Node| {
                apply(&changes, n)
            })
            .await?;
            if wait {
                wait_drained(client, &written.id).await?;
            }
            if json {
                out(pretty(&written))
            } else {
                out(&written.id)
            }
        }
    }
}

/// Polls until no task on node `id` is still live.
async fn wait_drained(client: &mut crate::client::Client, id: &str) -> Result<(), CliError> {
    loop {
        let tasks: Vec<Versioned<Task>> = objects::list(client, keys::TASKS).await?;
        let left = tasks
            .iter()
            .any(|t| t.value.node_id.as_deref() == Some(id) && !t.value.state.is_terminal());
        if !left {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn changes(
    availability: Option<&str>,
    add: &[String],
    remove: &[String],
) -> Result<Changes, CliError> {
    let mut changes = Changes {
        availability: availability.map(spec::availability).transpose()?,
        ..Changes::default()
    };
    for entry in add {
        let (k, v) = spec::key_value("--label-add", entry)?;
        changes.add.insert(k, v);
    }
    for key in remove {
        if key.trim().is_empty() || key.contains('=') {
            return Err(CliError::Invalid {
                what: "--label-rm",
                value: key.clone(),
                reason: "expected a label key".into(),
            });
        }
        if changes.add.contains_key(key) {
            return Err(CliError::Invalid {
                what: "--label-rm",
                value: key.clone(),
                reason: "the same label is also in --label-add".into(),
            });
        }
        changes.remove.insert(key.clone());
    }
    if changes == Changes::default() {
        return Err(CliError::Usage(
            "nothing to update: give --availability, --label-add or --label-rm",
        ));
    }
    Ok(changes)
}

/// Applies `changes` to the operator's fields of `node` only.
fn apply(changes: &Changes, node: &mut Node) -> Result<(), CliError> {
    for key in &changes.remove {
        if node.operator_labels.remove(key).is_none() {
            let reason = if node.labels.contains_key(key) {
                format!(
                    "node {} has it as an agent label (set by `shoal agent --label`), not an operator label",
                    node.name
                )
            } else {
                format!("node {} has no such operator label", node.name)
            };
            return Err(CliError::Invalid {
                what: "--label-rm",
                value: key.clone(),
                reason,
            });
        }
    }
    node.operator_labels
        .extend(changes.add.iter().map(|(k, v)| (k.clone(), v.clone())));
    if let Some(availability) = changes.availability {
        node.availability = availability;
    }
    Ok(())
}

fn by_name(mut nodes: Vec<Node>) -> Vec<Node> {
    nodes.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
    nodes
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("plain data")
}

fn ls_table(nodes: &[Node], tasks: &[Task]) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|n| {
            let on_node = tasks
                .iter()
                .filter(|t| t.node_id.as_deref() == Some(n.id.as_str()) && t.state.occupies_node())
                .count();
            vec![
                n.id.clone(),
                n.name.clone(),
                n.addr.clone(),
                match n.status {
                    NodeStatus::Ready => "ready",
                    NodeStatus::Down => "down",
                }
                .to_string(),
                match n.availability {
                    Availability::Active => "active",
                    Availability::Drain => "drain",
                }
                .to_string(),
                on_node.to_string(),
                n.engine_version.clone(),
                table::labels(&n.all_labels()),
            ]
        })
        .collect();
    table::render(
        &[
            "ID",
            "NAME",
            "ADDRESS",
            "STATUS",
            "AVAILABILITY",
            "TASKS",
            "ENGINE",
            "LABELS",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TaskState;

    fn node(id: &str, name: &str) -> Node {
        Node {
            id: id.into(),
            name: name.into(),
            addr: "127.0.0.2".into(),
            engine_addr: String::new(),
            labels: BTreeMap::from([("storage".into(), "ssd".into())]),
            operator_labels: BTreeMap::from([("zone".into(), "a".into())]),
            cpus: 2,
            memory_bytes: 1 << 30,
            engine_version: "27.0.1".into(),
            images: vec!["shoal/whoami:latest".into()],
            status: NodeStatus::Ready,
            availability: Availability::Active,
            heartbeat_ms: 500,
            message: String::new(),
        }
    }

    fn s(items: &[&str]) -> Vec<String> {
        items.iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn changes_are_validated_before_any_read() {
        let c = changes(Some("drain"), &s(&["zone=b", "rack=1"]), &s(&["old"])).unwrap();
        assert_eq!(c.availability, Some(Availability::Drain));
        assert_eq!(c.add["zone"], "b");
        assert!(c.remove.contains("old"));
        let err = |a: Option<&str>, add: &[&str], rm: &[&str]| {
            changes(a, &s(add), &s(rm)).unwrap_err().to_string()
        };
        assert!(err(Some("pause"), &[], &[]).starts_with("invalid --availability \"pause\""));
        assert!(err(None, &["=x"], &[]).starts_with("invalid --label-add \"=x\""));
        assert!(err(None, &[], &["a=b"]).starts_with("invalid --label-rm \"a=b\""));
        assert!(err(None, &["a=1"], &["a"]).contains("also in --label-add"));
        assert!(err(None, &[], &[]).starts_with("nothing to update"));
    }

    #[test]
    fn update_touches_only_operator_fields() {
        let before = node("n1", "node-1");
        let mut n = before.clone();
        let c = changes(Some("drain"), &s(&["rack=1"]), &s(&["zone"])).unwrap();
        apply(&c, &mut n).unwrap();
        assert_eq!(n.availability, Availability::Drain);
        assert_eq!(
            n.operator_labels,
            BTreeMap::from([("rack".into(), "1".into())])
        );
        assert_eq!(n.labels, before.labels);
        assert_eq!((n.status, &n.images), (before.status, &before.images));

        let mut n = before.clone();
        let c = changes(None, &[], &s(&["storage"])).unwrap();
        let err = apply(&c, &mut n).unwrap_err().to_string();
        assert!(err.contains("agent label"), "{err}");
        let c = changes(None, &[], &s(&["nope"])).unwrap();
        let err = apply(&c, &mut n).unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid --label-rm \"nope\": node node-1 has no such operator label"
        );
    }

    #[test]
    fn ls_counts_tasks_that_occupy_the_node() {
        let mut down = node("n2", "node-2");
        down.status = NodeStatus::Down;
        down.availability = Availability::Drain;
        down.labels.clear();
        down.operator_labels.clear();
        down.engine_version.clear();
        let nodes = by_name(vec![down, node("n1", "node-1")]);
        let mut tasks = Vec::new();
        for (i, state) in [
            TaskState::Assigned,
            TaskState::Running,
            TaskState::Failed,
            TaskState::Pending,
        ]
        .into_iter()
        .enumerate()
        {
            let mut t = Task::new(format!("t{i}"), "s".into(), 1, 1);
            t.state = state;
            t.node_id = Some("n1".into());
            tasks.push(t);
        }
        assert_eq!(
            ls_table(&nodes, &tasks),
            "ID  NAME    ADDRESS    STATUS  AVAILABILITY  TASKS  ENGINE  LABELS\n\
             n1  node-1  127.0.0.2  ready   active        2      27.0.1  storage=ssd,zone=a\n\
             n2  node-2  127.0.0.2  down    drain         0      -       -"
        );
    }
}
