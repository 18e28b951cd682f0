//! What operators type for `service create` and `node update`, parsed and validated before
//! anything is written: each bad value is one error naming it. Pure functions only.

use std::collections::BTreeMap;

use clap::Args;

use super::CliError;
use crate::duration;
use crate::model::{
    parse_failure_ratio, Availability, HealthCheck, Placement, PortSpec, Reservations,
    RestartPolicy, Service, UpdatePolicy,
};
use crate::scheduler;

/// `shoal service create ... IMAGE [CMD...]`
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Service name: letters, digits, '_', '.' and '-', starting with a letter or a digit.
    #[arg(long)]
    pub name: String,
    /// How many tasks to keep running.
    #[arg(long, default_value_t = 1)]
    pub replicas: u64,
    /// Publish a port: [HOST:]CONTAINER[/tcp|/udp]; without HOST the engine picks one.
    #[arg(short = 'p', long = "publish", value_name = "PORT")]
    pub publish: Vec<String>,
    /// A label for the service's containers (interlock.hostname=test, ...).
    #[arg(short = 'l', long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// A node constraint, classic Swarm syntax: storage==ssd, node!=node-2, soft zone==~a.
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraints: Vec<String>,
    /// An affinity to other containers or images: container==web, image==~redis.
    #[arg(long = "affinity", value_name = "EXPR")]
    pub affinities: Vec<String>,
    /// An environment variable (`constraint:EXPR`, `affinity:EXPR` and `reschedule:POLICY`
    /// are read as placement rules, as classic Swarm does).
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// always, on-failure[:MAX] or no.
    #[arg(long, default_value = "always", value_name = "POLICY")]
    pub restart: String,
    /// CPUs each task reserves on its node (e.g. 0.5).
    #[arg(long, value_name = "CPUS")]
    pub reserve_cpu: Option<String>,
    /// Memory each task reserves on its node (e.g. 64m, 1g; units b, k, m, g, t).
    #[arg(long, value_name = "BYTES")]
    pub reserve_memory: Option<String>,
    /// on-node-failure or off (services are always replaced on a DOWN node; this is recorded
    /// for classic Swarm's plain containers).
    #[arg(long, value_name = "POLICY")]
    pub reschedule: Option<String>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// How long a task asked to stop keeps running after the proxies dropped it, so that no
    /// request reaches a stopping container (default: 3s for a service with
    /// interlock.hostname, else 0s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub stop_grace: Option<String>,
    #[command(flatten)]
    pub policy: UpdatePolicyArgs,
    /// Print the created service as JSON instead of its id.
    #[arg(long)]
    pub json: bool,
    /// The image to run.
    pub image: String,
    /// The command and its arguments (everything after IMAGE).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub cmd: Vec<String>,
}

/// `shoal service update SERVICE ...`: what changes. A change to what tasks run (image,
/// environment, labels, health check, drain delay, or `--force`) starts a rolling update; the
/// replica count and the update policy alone do not.
#[derive(Debug, Clone, Args)]
pub struct UpdateArgs {
    /// Service name, id or unique id prefix.
    pub service: String,
    /// The image to run.
    #[arg(long)]
    pub image: Option<String>,
    /// Add or replace an environment variable.
    #[arg(long = "env-add", value_name = "K=V")]
    pub env_add: Vec<String>,
    /// Remove an environment variable.
    #[arg(long = "env-rm", value_name = "K")]
    pub env_rm: Vec<String>,
    /// Add or replace a label.
    #[arg(long = "label-add", value_name = "K=V")]
    pub label_add: Vec<String>,
    /// Remove a label.
    #[arg(long = "label-rm", value_name = "K")]
    pub label_rm: Vec<String>,
    /// How many tasks to keep running.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas: Option<String>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// See `service create --stop-grace`.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub stop_grace: Option<String>,
    #[command(flatten)]
    pub policy: UpdatePolicyArgs,
    /// Replace every task even if nothing else changed.
    #[arg(long)]
    pub force: bool,
    /// Print the service as written, as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Docker's `--update-*` flags: how a rolling update replaces tasks.
#[derive(Debug, Clone, Default, Args)]
pub struct UpdatePolicyArgs {
    /// Slots replaced at a time (0: all at once; default 1).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub update_parallelism: Option<String>,
    /// Wait after a slot came to serve before the next starts (e.g. 10s; default 0s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub update_delay: Option<String>,
    /// stop-first (default: never more tasks than replicas) or start-first (never fewer
    /// serving).
    #[arg(long, value_name = "ORDER")]
    pub update_order: Option<String>,
    /// What a failing update does: pause (default), rollback or continue.
    #[arg(long, value_name = "ACTION")]
    pub update_failure_action: Option<String>,
    /// How long after the last slot serves failures still count (default 5s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub update_monitor: Option<String>,
    /// The fraction of new tasks that may fail, 0 to 1 (default 0).
    #[arg(long, value_name = "RATIO", allow_hyphen_values = true)]
    pub update_max_failure_ratio: Option<String>,
    /// Spread the service again when nodes join or come back, a task at a time (at most
    /// --update-parallelism), start-first; --rebalance=false turns it off.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub rebalance: Option<bool>,
}

impl UpdatePolicyArgs {
    fn is_empty(&self) -> bool {
        self.update_parallelism.is_none()
            && self.update_delay.is_none()
            && self.update_order.is_none()
            && self.update_failure_action.is_none()
            && self.update_monitor.is_none()
            && self.update_max_failure_ratio.is_none()
            && self.rebalance.is_none()
    }
}

/// `base` with what `args` set.
pub(super) fn update_policy(
    args: &UpdatePolicyArgs,
    base: UpdatePolicy,
) -> Result<UpdatePolicy, CliError> {
    let mut policy = base;
    if let Some(text) = &args.update_parallelism {
        policy.parallelism = text.trim().parse().map_err(|_| {
            invalid(
                "--update-parallelism",
                text,
                "expected a whole number (0: all at once)",
            )
        })?;
    }
    if let Some(text) = &args.update_delay {
        policy.delay_ms = policy_duration("--update-delay", text)?;
    }
    if let Some(text) = &args.update_monitor {
        policy.monitor_ms = policy_duration("--update-monitor", text)?;
    }
    if let Some(text) = &args.update_order {
        policy.order = text.parse()?;
    }
    if let Some(text) = &args.update_failure_action {
        policy.failure_action = text.parse()?;
    }
    if let Some(text) = &args.update_max_failure_ratio {
        policy.max_failure_permille = parse_failure_ratio(text)?;
    }
    if let Some(rebalance) = args.rebalance {
        policy.rebalance = rebalance;
    }
    Ok(policy)
}

/// An update-policy duration in ms, at most a day.
fn policy_duration(flag: &'static str, text: &str) -> Result<u64, CliError> {
    let d = duration::parse(text).map_err(|e| invalid(flag, text, &e))?;
    if d > std::time::Duration::from_millis(crate::model::MAX_POLICY_MS) {
        return Err(invalid(flag, text, "expected at most 24h"));
    }
    Ok(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `service` as `args` edit it, validated; the caller decides whether that is a new version.
pub(super) fn edit(service: &Service, args: &UpdateArgs) -> Result<Service, CliError> {
    let mut next = service.clone();
    if let Some(image) = &args.image {
        check_image(image)?;
        next.image = image.clone();
    }
    for key in &args.env_rm {
        next.env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
    }
    for entry in &args.env_add {
        let (key, _) = key_value("environment variable", entry)?;
        next.env
            .retain(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) != key);
        next.env.push(entry.clone());
    }
    for key in &args.label_rm {
        next.labels.remove(key);
    }
    for entry in &args.label_add {
        let (key, value) = key_value("label", entry)?;
        next.labels.insert(key, value);
    }
    if let Some(text) = &args.replicas {
        next.replicas = text
            .trim()
            .parse()
            .map_err(|_| invalid("--replicas", text, "expected a whole number"))?;
    }
    if let Some(check) = health_check(&args.health)? {
        next.health = Some(check);
    }
    if let Some(grace) = stop_grace(&args.stop_grace)? {
        next.stop_grace_ms = Some(grace);
    }
    next.update_policy = update_policy(&args.policy, service.update_policy)?;
    let unchanged = next == *service;
    let nothing_asked = args.image.is_none()
        && args.env_add.is_empty()
        && args.env_rm.is_empty()
        && args.label_add.is_empty()
        && args.label_rm.is_empty()
        && args.replicas.is_none()
        && args.stop_grace.is_none()
        && args.policy.is_empty()
        && health_check(&args.health)?.is_none()
        && !args.force;
    if unchanged && nothing_asked {
        return Err(CliError::Usage(
            "nothing to update: give --image, --env-add, --label-add, --replicas, --update-* \
             or another change (or --force to replace every task as it is)",
        ));
    }
    scheduler::validate(&next)?;
    crate::proxy::labels::host_of(&next.labels).map_err(CliError::ProxyLabel)?;
    Ok(next)
}

fn check_image(image: &str) -> Result<(), CliError> {
    Ok(crate::model::check_image(image)?)
}

/// Docker's `--health-*` flags; what is not given keeps the image's `HEALTHCHECK` setting.
#[derive(Debug, Clone, Default, Args)]
pub struct HealthArgs {
    /// The check: a command line run with /bin/sh in the container, or a JSON array run
    /// as is (`["/whoami","check"]`, for images without a shell). Exit 0: healthy.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Between checks (e.g. 5s; Docker's default 30s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub health_interval: Option<String>,
    /// How long one check may run (Docker's default 30s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub health_timeout: Option<String>,
    /// Failed checks in a row before the task is unhealthy, and replaced (Docker's default 3).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub health_retries: Option<String>,
    /// Time the container gets to start before failed checks count.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub health_start_period: Option<String>,
    /// Disable any health check, the image's included.
    #[arg(long)]
    pub no_healthcheck: bool,
}

/// The health check `args` ask for; None when they set nothing (the image's own applies).
pub(super) fn health_check(args: &HealthArgs) -> Result<Option<HealthCheck>, CliError> {
    let tuned = args.health_cmd.is_some()
        || args.health_interval.is_some()
        || args.health_timeout.is_some()
        || args.health_retries.is_some()
        || args.health_start_period.is_some();
    if args.no_healthcheck {
        if tuned {
            return Err(CliError::Usage(
                "--no-healthcheck cannot be combined with --health-* flags",
            ));
        }
        return Ok(Some(HealthCheck {
            test: vec!["NONE".into()],
            ..Default::default()
        }));
    }
    if !tuned {
        return Ok(None);
    }
    let test = match args.health_cmd.as_deref().map(str::trim) {
        None => Vec::new(),
        Some("") => return Err(invalid("--health-cmd", "", "expected a command")),
        Some(json) if json.starts_with('[') => {
            let words: Vec<String> = serde_json::from_str(json).map_err(|_| {
                invalid(
                    "--health-cmd",
                    json,
                    "expected a JSON array of strings such as [\"/bin/check\",\"--quick\"]",
                )
            })?;
            if words.first().is_none_or(|w| w.is_empty()) {
                return Err(invalid("--health-cmd", json, "the array names no program"));
            }
            std::iter::once("CMD".to_string()).chain(words).collect()
        }
        Some(line) => vec!["CMD-SHELL".into(), line.to_string()],
    };
    let retries = match args.health_retries.as_deref() {
        None => 0,
        Some(text) => match text.trim().parse::<u32>() {
            Ok(n) if (1..=i32::MAX as u32).contains(&n) => n,
            _ => {
                return Err(invalid(
                    "--health-retries",
                    text,
                    "expected a whole number of at least 1",
                ))
            }
        },
    };
    let check = HealthCheck {
        test,
        interval_ms: health_duration("--health-interval", &args.health_interval, false)?,
        timeout_ms: health_duration("--health-timeout", &args.health_timeout, false)?,
        start_period_ms: health_duration("--health-start-period", &args.health_start_period, true)?,
        retries,
    };
    check.validate()?;
    Ok(Some(check))
}

/// A health-check duration in ms: at least 1ms (0 only where `zero_ok`), as Docker requires.
fn health_duration(
    flag: &'static str,
    text: &Option<String>,
    zero_ok: bool,
) -> Result<u64, CliError> {
    let Some(text) = text else { return Ok(0) };
    let d = duration::parse(text).map_err(|e| invalid(flag, text, &e))?;
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 && !(zero_ok && d.is_zero()) {
        return Err(invalid(flag, text, "expected at least 1ms"));
    }
    Ok(ms)
}

/// `--stop-grace`: a duration, 0s included.
pub(super) fn stop_grace(text: &Option<String>) -> Result<Option<u64>, CliError> {
    let Some(text) = text else { return Ok(None) };
    let d = duration::parse(text).map_err(|e| invalid("--stop-grace", text, &e))?;
    if d > std::time::Duration::from_secs(3600) {
        return Err(invalid("--stop-grace", text, "expected at most 1h"));
    }
    Ok(Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
}

/// The service `args` describe, with id `id`; the first invalid value is the error.
pub(super) fn service(args: &CreateArgs, id: String) -> Result<Service, CliError> {
    check_name(&args.name)?;
    check_image(&args.image)?;
    let ports = args
        .publish
        .iter()
        .map(|p| p.parse::<PortSpec>())
        .collect::<Result<Vec<_>, _>>()?;
    let labels = args
        .labels
        .iter()
        .map(|l| key_value("label", l))
        .collect::<Result<BTreeMap<_, _>, _>>()?;
    let (placement, env) = Placement::extract(args.env.clone(), &labels)?;
    for entry in &env {
        key_value("environment variable", entry)?;
    }
    let restart: RestartPolicy = args.restart.parse()?;
    let reservations = Reservations {
        nano_cpus: match &args.reserve_cpu {
            Some(cpus) => nano_cpus(cpus)?,
            None => 0,
        },
        memory_bytes: match &args.reserve_memory {
            Some(bytes) => memory_bytes(bytes)?,
            None => 0,
        },
    };
    let reschedule_on_node_failure = match args.reschedule.as_deref() {
        None => placement.reschedule_on_node_failure,
        Some("on-node-failure") => true,
        Some("off") => false,
        Some(other) => {
            return Err(invalid(
                "--reschedule",
                other,
                "expected on-node-failure or off",
            ));
        }
    };
    let mut constraints = args.constraints.clone();
    constraints.extend(placement.constraints);
    let mut affinities = args.affinities.clone();
    affinities.extend(placement.affinities);
    let service = Service {
        id,
        name: args.name.clone(),
        image: args.image.clone(),
        cmd: args.cmd.clone(),
        env,
        labels,
        ports,
        replicas: args.replicas,
        restart,
        constraints,
        affinities,
        reservations,
        reschedule_on_node_failure,
        links: Vec::new(),
        volumes_from: Vec::new(),
        network_mode: None,
        container: None,
        health: health_check(&args.health)?,
        stop_grace_ms: stop_grace(&args.stop_grace)?,
        version: 0,
        update_policy: update_policy(&args.policy, UpdatePolicy::default())?,
        update: None,
        previous: None,
        service_labels: BTreeMap::new(),
        created_ms: 0,
    };
    scheduler::validate(&service)?;
    crate::proxy::labels::host_of(&service.labels).map_err(CliError::ProxyLabel)?;
    Ok(service)
}

/// Docker's container-name syntax, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`: names end up in keys and in
/// container names (`web.3`).
pub(super) fn check_name(name: &str) -> Result<(), CliError> {
    Ok(crate::model::check_service_name(name)?)
}

/// `K=V` with a non-empty K (V may be empty).
pub(super) fn key_value(what: &'static str, entry: &str) -> Result<(String, String), CliError> {
    match entry.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(invalid(
            what,
            entry,
            "expected KEY=VALUE with a non-empty KEY",
        )),
    }
}

/// `0.5` CPUs as nano-CPUs (Docker's NanoCPUs).
pub(super) fn nano_cpus(text: &str) -> Result<u64, CliError> {
    let cpus: f64 = text
        .trim()
        .parse()
        .ok()
        .filter(|c: &f64| c.is_finite() && *c >= 0.0 && *c <= 1_000_000.0)
        .ok_or_else(|| {
            invalid(
                "--reserve-cpu",
                text,
                "expected a number of CPUs such as 0.5",
            )
        })?;
    Ok((cpus * 1e9).round() as u64)
}

/// `64m`, `1g`, `512k`, `1.5g`, `1048576`: bytes in powers of 1024, as `docker run --memory`
/// (a trailing `b` or `ib` is accepted).
pub(super) fn memory_bytes(text: &str) -> Result<u64, CliError> {
    let bad = || {
        invalid(
            "--reserve-memory",
            text,
            "expected a size such as 64m or 1g (units b, k, m, g, t)",
        )
    };
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit
        .strip_suffix('i')
        .filter(|u| !u.is_empty())
        .unwrap_or(unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// `active` or `drain`.
pub(super) fn availability(text: &str) -> Result<Availability, CliError> {
    match text {
        "active" => Ok(Availability::Active),
        "drain" => Ok(Availability::Drain),
        other => Err(invalid("--availability", other, "expected active or drain")),
    }
}

/// `NAME=N` of `service scale`.
pub(super) fn scale_target(text: &str) -> Result<(String, u64), CliError> {
    let bad = || invalid("scale", text, "expected SERVICE=REPLICAS, e.g. web=4");
    let (name, n) = text.split_once('=').ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    let n = n.trim().parse::<u64>().map_err(|_| bad())?;
    Ok((name.to_string(), n))
}

fn invalid(what: &'static str, value: &str, reason: &str) -> CliError {
    CliError::Invalid {
        what,
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::model::Protocol;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: CreateArgs,
    }

    fn parse(argv: &[&str]) -> CreateArgs {
        let mut full = vec!["create"];
        full.extend_from_slice(argv);
        Cmd::try_parse_from(full).expect("parses").args
    }

    fn build(argv: &[&str]) -> Result<Service, String> {
        service(&parse(argv), "0123456789ab".into()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_seed_service_is_accepted_with_defaults() {
        let svc = build(&[
            "--name",
            "web",
            "--replicas",
            "4",
            "-p",
            "80",
            "-p",
            "8080:80/udp",
            "--label",
            "interlock.hostname=test",
            "--label",
            "interlock.domain=local",
            "--constraint",
            "storage==ssd",
            "--env",
            "A=1",
            "--reserve-cpu",
            "0.5",
            "--reserve-memory",
            "64m",
            "shoal/whoami:latest",
            "--listen",
            ":80",
        ])
        .unwrap();
        assert_eq!(
            (svc.id.as_str(), svc.name.as_str(), svc.replicas),
            ("0123456789ab", "web", 4)
        );
        assert_eq!(svc.image, "shoal/whoami:latest");
        assert_eq!(
            svc.cmd,
            ["--listen", ":80"],
            "flags after IMAGE belong to CMD"
        );
        assert_eq!(svc.ports[1].protocol, Protocol::Udp);
        assert_eq!(svc.ports[1].host_port, Some(8080));
        assert_eq!(svc.labels["interlock.domain"], "local");
        assert_eq!(svc.constraints, ["storage==ssd"]);
        assert_eq!(svc.env, ["A=1"]);
        assert_eq!(svc.restart, RestartPolicy::Always);
        assert_eq!(svc.reservations.nano_cpus, 500_000_000);
        assert_eq!(svc.reservations.memory_bytes, 64 << 20);
        assert!(!svc.reschedule_on_node_failure);

        let minimal = build(&["--name", "db", "redis"]).unwrap();
        assert_eq!(minimal.replicas, 1);
        assert_eq!(minimal.reservations, Reservations::default());
    }

    #[test]
    fn classic_swarm_placement_in_env_is_read() {
        let svc = build(&[
            "--name",
            "db",
            "-e",
            "constraint:storage==ssd",
            "-e",
            "affinity:container!=web",
            "-e",
            "reschedule:on-node-failure",
            "-e",
            "B=2",
            "redis",
        ])
        .unwrap();
        assert_eq!(svc.constraints, ["storage==ssd"]);
        assert_eq!(svc.affinities, ["container!=web"]);
        assert_eq!(svc.env, ["B=2"]);
        assert!(svc.reschedule_on_node_failure);
        let off = build(&[
            "--name",
            "db",
            "-e",
            "reschedule:on-node-failure",
            "--reschedule",
            "off",
            "redis",
        ]);
        assert!(!off.unwrap().reschedule_on_node_failure, "the flag wins");
        let restart = build(&["--name", "db", "--restart", "on-failure:3", "redis"]).unwrap();
        assert_eq!(restart.restart, RestartPolicy::OnFailure { max: Some(3) });
    }

    #[test]
    fn each_bad_value_is_named_in_one_line() {
        let cases: [(&[&str], &str); 13] = [
            (&["--name=-web", "x"], "invalid service name \"-web\""),
            (&["--name", "a/b", "x"], "invalid service name \"a/b\""),
            (&["--name", "", "x"], "invalid service name \"\""),
            (
                &["--name", "web", "-p", "80/sctp", "x"],
                "invalid port \"80/sctp\"",
            ),
            (
                &["--name", "web", "--label", "=v", "x"],
                "invalid label \"=v\"",
            ),
            (
                &["--name", "web", "--label", "novalue", "x"],
                "invalid label \"novalue\"",
            ),
            (
                &["--name", "web", "--env", "X", "x"],
                "invalid environment variable \"X\"",
            ),
            (
                &["--name", "web", "--restart", "sometimes", "x"],
                "invalid restart policy \"sometimes\"",
            ),
            (
                &["--name", "web", "--constraint", "storage=ssd", "x"],
                "invalid constraint \"storage=ssd\"",
            ),
            (
                &[
                    "--name",
                    "web",
                    "-l",
                    "interlock.hostname=a",
                    "-l",
                    "interlock.port=x",
                    "x",
                ],
                "invalid label interlock.port=\"x\": expected a port number",
            ),
            (
                &["--name", "web", "--reserve-cpu=-1", "x"],
                "invalid --reserve-cpu \"-1\"",
            ),
            (
                &["--name", "web", "--reserve-memory", "64q", "x"],
                "invalid --reserve-memory \"64q\"",
            ),
            (
                &["--name", "web", "--reschedule", "never", "x"],
                "invalid --reschedule \"never\"",
            ),
        ];
        for (argv, want) in cases {
            let err = build(argv).unwrap_err();
            assert!(err.starts_with(want), "{argv:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        let err = build(&["--name", "web", "--affinity", "container", "x"]).unwrap_err();
        assert!(err.starts_with("invalid affinity \"container\""), "{err}");
    }

    #[test]
    fn health_flags_and_stop_grace_are_read() {
        let svc = build(&["--name", "web", "x"]).unwrap();
        assert_eq!((svc.health, svc.stop_grace_ms), (None, None));
        let svc = build(&[
            "--name",
            "web",
            "--health-cmd",
            "curl -f localhost",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
            "--stop-grace",
            "0s",
            "x",
        ])
        .unwrap();
        let check = svc.health.unwrap();
        assert_eq!(check.test, ["CMD-SHELL", "curl -f localhost"]);
        assert_eq!(
            (check.interval_ms, check.timeout_ms, check.retries),
            (500, 0, 2)
        );
        assert_eq!(svc.stop_grace_ms, Some(0));
        let exec = build(&[
            "--name",
            "web",
            "--health-cmd",
            r#"["/whoami","check"]"#,
            "--health-start-period=0s",
            "x",
        ])
        .unwrap();
        assert_eq!(exec.health.unwrap().test, ["CMD", "/whoami", "check"]);
        let only_interval = build(&["--name", "web", "--health-timeout", "1s", "x"]).unwrap();
        assert!(
            only_interval.health.unwrap().test.is_empty(),
            "the image's test"
        );
        let none = build(&["--name", "web", "--no-healthcheck", "x"]).unwrap();
        assert_eq!(none.health.unwrap().test, ["NONE"]);
    }

    #[test]
    fn bad_health_flags_are_one_line_each() {
        let cases: [(&[&str], &str); 10] = [
            (
                &["--health-interval=-1s"],
                "invalid --health-interval \"-1s\"",
            ),
            (
                &["--health-interval", "0s"],
                "invalid --health-interval \"0s\": expected at least 1ms",
            ),
            (
                &["--health-timeout", "10"],
                "invalid --health-timeout \"10\"",
            ),
            (
                &["--health-timeout", "soon"],
                "invalid --health-timeout \"soon\"",
            ),
            (
                &["--health-retries", "0"],
                "invalid --health-retries \"0\": expected a whole number of at least 1",
            ),
            (&["--health-retries=-3"], "invalid --health-retries \"-3\""),
            (&["--health-cmd", "[\"/x\""], "invalid --health-cmd"),
            (
                &["--health-cmd", "[]"],
                "invalid --health-cmd \"[]\": the array names no program",
            ),
            (
                &["--stop-grace", "forever"],
                "invalid --stop-grace \"forever\"",
            ),
            (
                &["--no-healthcheck", "--health-retries", "2"],
                "--no-healthcheck cannot be combined",
            ),
        ];
        for (flags, want) in cases {
            let mut argv = vec!["--name", "web"];
            argv.extend_from_slice(flags);
            argv.push("x");
            let err = build(&argv).unwrap_err();
            assert!(err.starts_with(want), "{flags:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn sizes_and_cpus() {
        assert_eq!(memory_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(memory_bytes("1G").unwrap(), 1 << 30);
        assert_eq!(memory_bytes("512kb").unwrap(), 512 << 10);
        assert_eq!(memory_bytes("2MiB").unwrap(), 2 << 20);
        assert_eq!(memory_bytes("1.5g").unwrap(), 3 << 29);
        assert_eq!(memory_bytes("1000").unwrap(), 1000);
        assert_eq!(memory_bytes("10b").unwrap(), 10);
        for bad in ["", "m", "1x", "-1m", "1..2m", "99999999999t"] {
            assert!(memory_bytes(bad).is_err(), "{bad:?}");
        }
        assert_eq!(nano_cpus("2").unwrap(), 2_000_000_000);
        assert_eq!(nano_cpus("0.25").unwrap(), 250_000_000);
        for bad in ["", "half", "NaN", "inf", "-0.5"] {
            assert!(nano_cpus(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn scale_targets_and_availability() {
        assert_eq!(scale_target("web=10").unwrap(), ("web".to_string(), 10));
        assert_eq!(scale_target("web=0").unwrap(), ("web".to_string(), 0));
        for bad in ["web", "=3", "web=", "web=-1", "web=x"] {
            let err = scale_target(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("invalid scale {bad:?}")), "{err}");
        }
        assert_eq!(availability("drain").unwrap(), Availability::Drain);
        assert_eq!(availability("active").unwrap(), Availability::Active);
        assert!(availability("pause")
            .unwrap_err()
            .to_string()
            .contains("\"pause\""));
        assert_eq!(
            key_value("label", "a=b=c").unwrap(),
            ("a".to_string(), "b=c".to_string())
        );
    }

    #[derive(Parser)]
    struct UpdateCmd {
        #[command(flatten)]
        args: UpdateArgs,
    }

    fn edited(service: &Service, argv: &[&str]) -> Result<Service, String> {
        let mut full = vec!["update", "web"];
        full.extend_from_slice(argv);
        let args = UpdateCmd::try_parse_from(full).expect("parses").args;
        edit(service, &args).map_err(|e| e.to_string())
    }

    #[test]
    fn an_update_edits_the_spec_and_its_policy() {
        let web = build(&[
            "--name", "web", "-e", "A=1", "-e", "B=2", "-l", "x=1", "img:v1",
        ])
        .unwrap();
        let next = edited(
            &web,
            &[
                "--image",
                "img:v2",
                "--env-add",
                "A=9",
                "--env-rm",
                "B",
                "--label-add",
                "y=2",
                "--label-rm",
                "x",
                "--replicas",
                "3",
                "--update-parallelism",
                "2",
                "--update-delay",
                "1s",
                "--update-order",
                "start-first",
                "--update-failure-action",
                "rollback",
                "--update-monitor",
                "0s",
                "--update-max-failure-ratio",
                "0.5",
            ],
        )
        .unwrap();
        assert_eq!(next.image, "img:v2");
        assert_eq!(next.env, vec!["A=9".to_string()]);
        assert_eq!(
            next.labels,
            BTreeMap::from([("y".to_string(), "2".to_string())])
        );
        assert_eq!(next.replicas, 3);
        let policy = next.update_policy;
        assert_eq!(
            (policy.parallelism, policy.delay_ms, policy.monitor_ms),
            (2, 1_000, 0)
        );
        assert_eq!(policy.order, crate::model::UpdateOrder::StartFirst);
        assert_eq!(policy.failure_action, crate::model::FailureAction::Rollback);
        assert_eq!(policy.max_failure_permille, 500);
        assert!(!next.same_spec(&web));
        // The replica count and the policy alone are no new spec.
        let scaled = edited(&web, &["--replicas", "5", "--update-parallelism", "0"]).unwrap();
        assert!(scaled.same_spec(&web));
        // Flags create takes too.
        let created = build(&["--name", "w", "--update-order", "start-first", "img"]).unwrap();
        assert_eq!(
            created.update_policy.order,
            crate::model::UpdateOrder::StartFirst
        );
    }

    #[test]
    fn a_bad_update_is_one_error_naming_the_value() {
        let web = build(&["--name", "web", "img:v1"]).unwrap();
        let err = edited(&web, &[]).unwrap_err();
        assert!(err.starts_with("nothing to update"), "{err}");
        for (argv, needle) in [
            (&["--image", "two words"][..], "invalid image"),
            (&["--replicas", "-1"][..], "invalid --replicas \"-1\""),
            (
                &["--update-parallelism", "x"][..],
                "invalid --update-parallelism",
            ),
            (&["--update-delay", "5"][..], "invalid --update-delay"),
            (&["--update-monitor", "48h"][..], "at most 24h"),
            (
                &["--update-order", "sideways"][..],
                "expected stop-first or start-first",
            ),
            (
                &["--update-failure-action", "panic"][..],
                "expected pause, rollback or continue",
            ),
            (
                &["--update-max-failure-ratio", "2"][..],
                "max failure ratio",
            ),
            (&["--env-add", "=x"][..], "invalid environment variable"),
            (
                &[
                    "--label-add",
                    "interlock.hostname=test",
                    "--label-add",
                    "interlock.port=http",
                ][..],
                "interlock.port",
            ),
        ] {
            let err = edited(&web, argv).unwrap_err();
            assert!(err.contains(needle), "{argv:?}: {err}");
        }
    }
}
