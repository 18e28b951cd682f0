//! The measured run: the cluster, agents, nginx and `shoal proxy` set up, then the scale-ups
//! (propagation), the scale 1 → 8 → 1, the leader kill and the zero-downtime changes, each a
//! window of the load's counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::{sleep, Instant};

use super::drive::{all_answering, cli, only_one_answering, scale, until, update_done};
use super::load::{request, Load};
use super::nginx::{live_generations, Nginx};
use super::poll::Poller;
use super::report::{print, window, Latency, Propagation, Report, TaskFigures};
use super::{hosts, loadavg, ms, ProxyArgs, HOST, POLL, STEP_TIMEOUT};
use crate::cluster::Cluster;
use crate::failover::{self, start_agents};
use crate::report::{self, Header};

pub(super) async fn measure(args: &ProxyArgs, exe: &Path, dir: &Path) -> Result<()> {
    let loadavg_start = loadavg();
    let mut cluster = Cluster::start(exe, dir, 3).await?;
    let addrs = cluster.addrs();
    let (tls, tls_dir) = (cluster.tls().clone(), cluster.tls_dir());
    let join = hosts(&addrs);
    let agents = start_agents(exe, dir, &join, cluster.token(), 2)?;
    cli(
        exe,
        &join,
        &tls_dir,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "1",
            "-p",
            "80",
            "--label",
            "interlock.hostname=test",
            "--label",
            "interlock.domain=local",
            &args.image,
        ],
    )
    .await?;
    let poll = Poller::start(addrs.clone(), tls.clone());
    until("the first task to run", STEP_TIMEOUT, || {
        poll.running().len() == 1
    })
    .await?;
    let nginx = Nginx::start(exe, &dir.join("nginx"), &join, cluster.token()).await?;
    let deadline = Instant::now() + STEP_TIMEOUT;
    while request(nginx.addr()).await.is_err() {
        if Instant::now() > deadline {
            bail!("nginx never served {HOST}:\n{}", nginx.logs());
        }
        sleep(Duration::from_millis(50)).await;
    }
    eprintln!("nginx on port {} serves {HOST}", nginx.port);
    let load = Load::start(nginx.addr(), args.clients);

    // 1. Scale up by `step` until `tasks` new tasks were measured.
    let baseline = poll.all();
    let new_tasks = || -> Vec<String> {
        poll.seen_running_ids()
            .into_iter()
            .filter(|id| !baseline.contains(id) && load.answered(id))
            .collect()
    };
    let (ups_start, ups_before) = (Instant::now(), load.counters());
    let mut replicas = 1u64;
    let mut unanswered = Vec::new();
    // The replicas after the scale-up that added each task.
    let mut step_of: HashMap<String, u64> = HashMap::new();
    while new_tasks().len() < args.tasks {
        replicas += args.step;
        let step_start = Instant::now();
        scale(exe, &join, &tls_dir, replicas).await?;
        let converged = all_answering(&poll, &load, replicas as usize, None).await;
        for id in poll.seen_running_ids() {
            if !baseline.contains(&id) {
                step_of.entry(id).or_insert(replicas);
            }
        }
        if let Err(e) = converged {
            unanswered = poll
                .running()
                .into_iter()
                .filter(|t| !load.answered(t))
                .collect();
            eprintln!(
                "{e:#}; stopping the scale-ups ({} unanswered)",
                unanswered.len()
            );
            break;
        }
        eprintln!(
            "{replicas} replicas, all answering after {:.0} ms: {} new tasks measured",
            ms(step_start.elapsed()),
            new_tasks().len()
        );
    }
    let ups = window("scale-ups", &ups_before, &load.counters(), ups_start);
    let live = live_generations(&nginx.dir.join("proxy.log"));
    let mut per_task = Vec::new();
    for id in new_tasks() {
        let (Some((seen, updated_ms)), Some((first, first_wall_ms))) =
            (poll.seen_running(&id), load.first_answer(&id))
        else {
            continue;
        };
        let rendered = poll.seen_rendered(&id);
        // The first generation live in nginx that has the task.
        let signalled = rendered.and_then(|r| {
            live.iter()
                .find(|(generation, _)| *generation >= r.generation)
                .map(|(_, at)| *at)
        });
        let span = |from: Option<u64>, to: Option<u64>| Some(to?.saturating_sub(from?) as f64);
        per_task.push(TaskFigures {
            replicas: step_of.get(&id).copied().unwrap_or(replicas),
            running_to_answer_ms: ms(first.saturating_duration_since(seen)),
            record_to_answer_ms: first_wall_ms.saturating_sub(updated_ms) as f64,
            record_to_config_ms: span(Some(updated_ms), rendered.map(|r| r.wall_ms)),
            config_to_signal_ms: span(rendered.map(|r| r.wall_ms), signalled),
            record_to_signal_ms: span(Some(updated_ms), signalled),
            signal_to_answer_ms: span(signalled, Some(first_wall_ms)),
            answered_before_poll: first < seen,
            task: id,
        });
    }
    per_task.sort_by_key(|t| t.replicas);
    let pick =
        |f: fn(&TaskFigures) -> Option<f64>| Latency::of(per_task.iter().filter_map(f).collect());
    let propagation = Propagation {
        tasks: per_task.len(),
        replicas,
        polled: pick(|t| Some(t.running_to_answer_ms)),
        from_record: pick(|t| Some(t.record_to_answer_ms)),
        record_to_config: pick(|t| t.record_to_config_ms),
        config_to_signal: pick(|t| t.config_to_signal_ms),
        record_to_signal: pick(|t| t.record_to_signal_ms),
        signal_to_answer: pick(|t| t.signal_to_answer_ms),
        answered_before_poll: per_task.iter().filter(|t| t.answered_before_poll).count(),
        unanswered,
        requests_per_sec: (ups.requests as f64 / ups.seconds.max(0.001)).round(),
        per_task,
    };

    // 2a. Back to 1, then a scale 1 → 8 → 1 under the load.
    let t = Instant::now();
    scale(exe, &join, &tls_dir, 1).await?;
    only_one_answering(&poll, &load).await?;
    eprintln!(
        "back to 1 replica answering after {:.0} ms",
        ms(t.elapsed())
    );
    // The window starts once the agents have stopped the other tasks' containers.
    until("the stopped tasks to leave RUNNING", STEP_TIMEOUT, || {
        poll.up() == 1
    })
    .await?;
    eprintln!(
        "the other tasks stopped after {:.0} ms; scale 1 → 8 → 1 ...",
        ms(t.elapsed())
    );
    let (start, before) = (Instant::now(), load.counters());
    scale(exe, &join, &tls_dir, 8).await?;
    all_answering(&poll, &load, 8, Some(start)).await?;
    eprintln!("8 answering after {:.0} ms", ms(start.elapsed()));
    let t = Instant::now();
    scale(exe, &join, &tls_dir, 1).await?;
    only_one_answering(&poll, &load).await?;
    eprintln!(
        "1 left (and alone answering for 1 s) after {:.0} ms",
        ms(t.elapsed())
    );
    let scaling = window("scale 1 → 8 → 1", &before, &load.counters(), start);

    // 2b. kill -9 the leader; through the new leader scale to 2 (the config must follow it);
    // restart the killed manager.
    eprintln!("kill -9 of the leader ...");
    let (start, before) = (Instant::now(), load.counters());
    let leader = failover::leader_index(&addrs, &tls).await?;
    let survivors: Vec<SocketAddr> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, a)| *a)
        .collect();
    cluster.kill(leader);
    failover::leader_index(&survivors, &tls).await?;
    eprintln!(
        "new leader after {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    scale(exe, &hosts(&survivors), &tls_dir, 2).await?;
    all_answering(&poll, &load, 2, Some(start)).await?;
    cluster.restart(exe, leader).await?;
    sleep(Duration::from_secs(1)).await;
    let failover_window = window(
        "kill -9 leader, scale 1 → 2, restart it",
        &before,
        &load.counters(),
        start,
    );

    // 3. Zero-downtime changes: a rolling update of every task (`--force`), a rollback, and a
    // drain of node-2 (start-first), each timed until done.
    let join = hosts(&addrs);
    let n = args.update_replicas;
    scale(exe, &join, &tls_dir, n).await?;
    all_answering(&poll, &load, n as usize, None).await?;
    let parallelism = args.update_parallelism.to_string();
    // Each batch of an update waits for its tasks' drain delay, stop, start and first answer.
    let batches = match args.update_parallelism {
        0 => 1,
        p => n.div_ceil(p),
    };
    let change_timeout = STEP_TIMEOUT.max(Duration::from_secs(30) * batches as u32);
    let mut changes = Vec::new();
    for (name, command, done) in [
        (
            format!("rolling update of {n} (parallelism {parallelism})"),
            vec![
                "service",
                "update",
                "web",
                "--force",
                "--update-parallelism",
                &parallelism,
                "--update-monitor",
                "0s",
            ],
            Some("completed"),
        ),
        (
            format!("rollback of {n}"),
            vec!["service", "rollback", "web"],
            Some("rollback_completed"),
        ),
        (
            format!("drain node-2 of {n} (--wait)"),
            vec![
                "node",
                "update",
                "--availability",
                "drain",
                "--wait",
                "node-2",
            ],
            None,
        ),
    ] {
        let (start, before) = (Instant::now(), load.counters());
        cli(exe, &join, &tls_dir, &command).await?;
        if let Some(state) = done {
            update_done(exe, &join, &tls_dir, state, change_timeout).await?;
        }
        all_answering(&poll, &load, n as usize, Some(start)).await?;
        eprintln!("{name}: done after {:.0} ms", ms(start.elapsed()));
        changes.push(window(name, &before, &load.counters(), start));
    }
    cli(
        exe,
        &join,
        &tls_dir,
        &["node", "update", "--availability", "active", "node-2"],
    )
    .await?;

    let loadavg_end = loadavg();
    drop(load);
    drop(poll);
    drop(nginx);
    drop(agents);
    drop(cluster);

    let report = Report {
        header: Header::new("proxy", dir),
        loadavg_start,
        loadavg_end,
        clients: args.clients,
        step: args.step,
        poll_ms: POLL.as_millis() as u64,
        propagation,
        windows: [scaling, failover_window]
            .into_iter()
            .chain(changes)
            .collect(),
    };
    print(&report);
    report::emit_json(&report, args.json.as_deref())?;
    Ok(())
}
