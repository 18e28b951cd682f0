//! `shoal service create|ls|ps|inspect|scale|update|rollback|rm`: services as the operator sees
//! them. This only writes the desired state (the service record and its name key); tasks are
//! created, replaced and shut down by the leader's orchestrator, never here.

mod view;

use clap::Subcommand;
use rand::Rng;
use serde::Serialize;

use self::view::{ls_json, ls_table, ps_json, ps_table, tasks_of};
use super::objects::{self, Versioned};
use super::spec::{self, CreateArgs, UpdateArgs};
use super::{out, CliError, GlobalArgs};
use crate::client::Client;
use crate::model::{keys, Node, Service, Task};

/// `shoal service ...`
#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Create a service: IMAGE [CMD...] run as --replicas tasks; prints its id.
    Create(Box<CreateArgs>),
    /// List services: ID NAME IMAGE REPLICAS (running/desired) PORTS.
    Ls {
        /// A JSON array: each service with its `running` count.
        #[arg(long)]
        json: bool,
    },
    /// List a service's tasks, finished ones included, by slot then newest first.
    Ps {
        /// Service name, id or unique id prefix.
        service: String,
        /// A JSON array of the tasks, each with its `node_name`.
        #[arg(long)]
        json: bool,
    },
    /// Services as JSON (a JSON array), with their update policy and where their latest update
    /// stands (`update.state`: updating, paused, completed, rollback_started, ...).
    Inspect {
        /// Service names, ids or unique id prefixes.
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Change a service; a change to what its tasks run rolls out slot by slot as its update
    /// policy says (`--update-*`), pausing or rolling back on failures.
    Update(Box<UpdateArgs>),
    /// Go back to the service's previous spec, slot by slot (the spec before the latest update
    /// becomes the previous one).
    Rollback {
        /// Service name, id or unique id prefix.
        service: String,
        /// Print the service as written, as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set services' replica counts: NAME=N...
    Scale {
        #[arg(required = true, value_name = "SERVICE=N")]
        targets: Vec<String>,
        /// A JSON array of the services as written.
        #[arg(long)]
        json: bool,
    },
    /// Remove services; the orchestrator shuts their tasks down.
    Rm {
        /// Service names, ids or unique id prefixes.
        #[arg(required = true)]
        services: Vec<String>,
        /// A JSON array of the services removed.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(global: &GlobalArgs, command: ServiceCommand) -> Result<(), CliError> {
    match command {
        ServiceCommand::Create(args) => {
            let mut service = spec::service(&args, new_id())?;
            service.created_ms = crate::host::now_ms();
            create(&mut global.connect().await?, service, args.json).await
        }
        ServiceCommand::Scale { targets, json } => {
            let targets = targets
                .iter()
                .map(|t| spec::scale_target(t))
                .collect::<Result<Vec<_>, _>>()?;
            scale(&mut global.connect().await?, targets, json).await
        }
        ServiceCommand::Rm { services, json } => {
            rm(&mut global.connect().await?, &services, json).await
        }
        ServiceCommand::Ls { json } => ls(&mut global.connect().await?, json).await,
        ServiceCommand::Inspect { services } => {
            inspect(&mut global.connect().await?, &services).await
        }
        ServiceCommand::Update(args) => update(&mut global.connect().await?, &args).await,
        ServiceCommand::Rollback { service, json } => {
            rollback(&mut global.connect().await?, &service, json).await
        }
        ServiceCommand::Ps { service, json } => {
            ps(&mut global.connect().await?, &service, json).await
        }
    }
}

async fn ls(client: &mut Client, json: bool) -> Result<(), CliError> {
    let services: Vec<Versioned<Service>> = objects::list(client, keys::SERVICES).await?;
    let tasks: Vec<Versioned<Task>> = objects::list(client, keys::TASKS).await?;
    let services: Vec<Service> = services.into_iter().map(|s| s.value).collect();
    let tasks: Vec<Task> = tasks.into_iter().map(|t| t.value).collect();
    if json {
        out(pretty(&ls_json(services, &tasks)))
    } else {
        out(ls_table(services, &tasks))
    }
}

async fn ps(client: &mut Client, query: &str, json: bool) -> Result<(), CliError> {
    let services: Vec<Versioned<Service>> = objects::list(client, keys::SERVICES).await?;
    let tasks: Vec<Versioned<Task>> = objects::list(client, keys::TASKS).await?;
    let nodes: Vec<Versioned<Node>> = objects::list(client, keys::NODES).await?;
    let tasks: Vec<Task> = tasks.into_iter().map(|t| t.value).collect();
    let service_id = match objects::resolve(&services, query) {
        Ok(found) => found.value.id.clone(),
        // A removed service's tasks linger until shut down: still show them by id.
        Err(CliError::NoSuch { .. }) if tasks.iter().any(|t| t.service_id == query) => {
            query.to_string()
        }
        Err(e) => return Err(e),
    };
    let nodes: Vec<Node> = nodes.into_iter().map(|n| n.value).collect();
    let tasks = tasks_of(tasks, &service_id);
    if json {
        out(pretty(&ps_json(tasks, &nodes)))
    } else {
        out(ps_table(&tasks, &nodes))
    }
}

/// Sets each service's replicas by a read-modify-write conditioned on the revision read.
async fn scale(
    client: &mut Client,
    targets: Vec<(String, u64)>,
    json: bool,
) -> Result<(), CliError> {
    // Every name must designate a service before any is scaled.
    let services: Vec<Versioned<Service>> = objects::list(client, keys::SERVICES).await?;
    for (name, _) in &targets {
        objects::resolve(&services, name)?;
    }
    let mut written = Vec::new();
    for (name, replicas) in targets {
        let service: Service = objects::update(client, keys::SERVICES, &name, |s: &mut Service| {
            s.replicas = replicas;
            Ok(())
        })
        .await?;
        if !json {
            out(format_args!("{name} scaled to {replicas}"))?;
        }
        written.push(service);
    }
    if json {
        out(pretty(&written))?;
    }
    Ok(())
}

async fn inspect(client: &mut Client, queries: &[String]) -> Result<(), CliError> {
    let services: Vec<Versioned<Service>> = objects::list(client, keys::SERVICES).await?;
    let found = queries
        .iter()
        .map(|q| objects::resolve(&services, q).map(|s| &s.value))
        .collect::<Result<Vec<_>, _>>()?;
    out(pretty(&found))
}

/// Edits the service; a new spec becomes a new version, whose rollout the orchestrator runs.
/// The update's start time is left to the leader (0 here), so that every time an update
/// compares comes from one clock.
async fn update(client: &mut Client, args: &UpdateArgs) -> Result<(), CliError> {
    let written: Service = objects::update(client, keys::SERVICES, &args.service, |s| {
        refuse_container(s)?;
        let edited = spec::edit(s, args)?;
        *s = s.edited(edited, args.force, 0);
        Ok(())
    })
    .await?;
    match args.json {
        true => out(pretty(&written)),
        false => out(&written.name),
    }
}

async fn rollback(client: &mut Client, query: &str, json: bool) -> Result<(), CliError> {
    let written: Service = objects::update(client, keys::SERVICES, query, |s: &mut Service| {
        refuse_container(s)?;
        *s = s
            .rolled_back(0, "rollback requested".into())
            .ok_or_else(|| CliError::Invalid {
                what: "service",
                value: s.name.clone(),
                reason: "it has no previous spec to roll back to".into(),
            })?;
        Ok(())
    })
    .await?;
    match json {
        true => out(pretty(&written)),
        false => out(&written.name),
    }
}

/// A plain container (`docker run`) is recreated, never updated in place.
fn refuse_container(service: &Service) -> Result<(), CliError> {
    match service.is_container() {
        true => Err(CliError::Invalid {
            what: "service",
            value: service.name.clone(),
            reason: "it is a plain container (docker run): recreate it instead".into(),
        }),
        false => Ok(()),
    }
}

/// Writes the service and its name key in one txn, only if the name is free.
async fn create(client: &mut Client, service: Service, json: bool) -> Result<(), CliError> {
    let name_key = keys::service_name(&service.name);
    let written = objects::commit(
        client,
        vec![objects::absent(&name_key)],
        vec![
            objects::put_raw(&name_key, service.id.clone().into_bytes()),
            objects::put_json(&keys::service(&service.id), &service),
        ],
    )
    .await?;
    if !written {
        return Err(CliError::ServiceExists(service.name));
    }
    if json {
        out(pretty(&service))
    } else {
        out(&service.id)
    }
}

/// Removes each service with its name key, each in one txn conditioned on both keys as read.
/// Every argument is resolved before anything is removed.
async fn rm(client: &mut Client, queries: &[String], json: bool) -> Result<(), CliError> {
    let services: Vec<Versioned<Service>> = objects::list(client, keys::SERVICES).await?;
    let ids = queries
        .iter()
        .map(|q| objects::resolve(&services, q).map(|s| s.value.id.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut removed: Vec<Service> = Vec::new();
    for (query, id) in queries.iter().zip(ids) {
        // Named twice (by name and by id): removed once.
        if !removed.iter().any(|s| s.id == id) {
            removed.push(rm_one(client, query, &id).await?);
        }
        if !json {
            out(query)?;
        }
    }
    if json {
        out(pretty(&removed))?;
    }
    Ok(())
}

async fn rm_one(client: &mut Client, query: &str, id: &str) -> Result<Service, CliError> {
    let key = keys::service(id);
    for _ in 0..objects::ATTEMPTS {
        let Some(service) = objects::get::<Service>(client, &key).await? else {
            return Err(CliError::NoSuch {
                kind: "service",
                name: query.to_string(),
            });
        };
        let name_key = keys::service_name(&service.value.name);
        let name = objects::get_raw(client, &name_key).await?;
        let name_rev = name.as_ref().map_or(0, |(_, rev)| *rev);
        let mut ops = vec![objects::delete(&key)];
        // The name key is the service's only if it holds its id; another's is left alone.
        if name.is_some_and(|(value, _)| value == id.as_bytes()) {
            ops.push(objects::delete(&name_key));
        }
        let compare = vec![
            objects::unchanged(&key, service.mod_revision),
            objects::unchanged(&name_key, name_rev),
        ];
        if objects::commit(client, compare, ops).await? {
            return Ok(service.value);
        }
    }
    Err(CliError::Contended {
        kind: "service",
        name: query.to_string(),
        attempts: objects::ATTEMPTS,
    })
}

/// 12 random lowercase hex characters.
fn new_id() -> String {
    let bits: u64 = rand::rng().random();
    format!("{:012x}", bits & 0xffff_ffff_ffff)
}

fn pretty(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).expect("plain data")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_12_lowercase_hex() {
        let id = new_id();
        assert_eq!(id.len(), 12);
        assert!(
            id.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{id}"
        );
        assert_ne!(new_id(), new_id());
    }
}
