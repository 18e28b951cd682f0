//! Nemeses and their schedule: every `interval`, one fault chosen (from a seeded RNG) among those
//! enabled, held for `interval`, then healed. Each start and heal is recorded in the history
//! (process `NEMESIS`), so the report can shade the fault windows.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::json;
use tokio::sync::watch;

use crate::cluster::Cluster;
use crate::error::HarnessError;
use crate::history::{Kind, Op, Recorder};

/// The history's process id for nemesis entries.
pub const NEMESIS: u64 = u64::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Kill,
    Pause,
    PartitionHalves,
    PartitionLeader,
    PartitionRing,
    PartitionBridge,
    Membership,
}

/// Parses `--nemesis`: `kill`, `pause`, `partition` (all four shapes) or one shape
/// (`partition-halves`, `-leader`, `-ring`, `-bridge`), `membership`, `none`.
pub fn parse_list(s: &str) -> Result<Vec<Fault>, HarnessError> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "none" => {}
            "partition" => out.extend([
                Fault::PartitionHalves,
                Fault::PartitionLeader,
                Fault::PartitionRing,
                Fault::PartitionBridge,
            ]),
            "clock" => {
                return Err(HarnessError::Usage(
                    "the clock nemesis is not implemented: see jepsen/README.md (clock skew)"
                        .into(),
                ))
            }
            other => {
                out.insert(Fault::from_str(other)?);
            }
        }
    }
    Ok(out.into_iter().collect())
}

impl FromStr for Fault {
    type Err = HarnessError;
    fn from_str(s: &str) -> Result<Fault, HarnessError> {
        Ok(match s {
            "kill" => Fault::Kill,
            "pause" => Fault::Pause,
            "partition-halves" => Fault::PartitionHalves,
            "partition-leader" => Fault::PartitionLeader,
            "partition-ring" => Fault::PartitionRing,
            "partition-bridge" => Fault::PartitionBridge,
            "membership" => Fault::Membership,
            other => {
                return Err(HarnessError::Usage(format!(
                    "unknown nemesis {other:?} (kill, pause, partition, partition-halves, \
                     partition-leader, partition-ring, partition-bridge, membership, none)"
                )))
            }
        })
    }
}

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::PartitionHalves => "partition-halves",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionRing => "partition-ring",
            Fault::PartitionBridge => "partition-bridge",
            Fault::Membership => "membership",
        }
    }
}

/// Pairs of node indexes that must not talk, for a partition shape.
pub fn grudge(
    fault: Fault,
    n: usize,
    leader: Option<usize>,
    rng: &mut StdRng,
) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let cut = |a: &[usize], b: &[usize]| -> Vec<(usize, usize)> {
        a.iter()
            .flat_map(|&x| b.iter().map(move |&y| (x, y)))
            .collect()
    };
    match fault {
        Fault::PartitionHalves => {
            let (a, b) = order.split_at(n / 2);
            cut(a, b)
        }
        Fault::PartitionLeader => {
            let l = leader.unwrap_or(order[0]);
            let rest: Vec<usize> = (0..n).filter(|&i| i != l).collect();
            cut(&[l], &rest)
        }
        Fault::PartitionBridge => {
            // Two halves that cannot talk, and one node (the bridge) that talks to both.
            let rest = &order[1..];
            let (a, b) = rest.split_at(rest.len() / 2);
            cut(a, b)
        }
        Fault::PartitionRing => {
            // Each node sees a majority (itself and its ring neighbours), no two the same one.
            let mut out = Vec::new();
            if n <= 3 {
                // Three nodes: cutting one link leaves every node a majority, two of them
                // different ones.
                out.push((order[0], order[1]));
                return out;
            }
            // The smallest reach whose neighbourhood (2 * reach + 1 nodes) is a majority.
            let reach = (n / 2).div_ceil(2);
            for i in 0..n {
                for j in i + 1..n {
                    let d = (j - i).min(n - (j - i));
                    if d > reach {
                        out.push((order[i], order[j]));
                    }
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

/// What is currently broken, so that `heal` undoes exactly it.
enum Active {
    Killed(usize),
    Paused(usize),
    Partitioned,
    Removed(usize),
}

pub struct Schedule {
    pub faults: Vec<Fault>,
    pub interval: Duration,
}

fn record(rec: &Recorder, kind: Kind, f: &str, value: serde_json::Value) {
    rec.record(Op::new(NEMESIS, kind, f, "", value, 0));
}

/// Runs the schedule until `stop` turns true, then heals whatever is broken.
pub async fn run(
    cluster: &mut Cluster,
    schedule: &Schedule,
    rec: &Recorder,
    rng: &mut StdRng,
    mut stop: watch::Receiver<bool>,
) -> Result<(), HarnessError> {
    if schedule.faults.is_empty() {
        let _ = stop.wait_for(|s| *s).await;
        return Ok(());
    }
    let sleep_or_stop = |d: Duration, mut stop: watch::Receiver<bool>| async move {
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = stop.wait_for(|s| *s) => true,
        }
    };
    loop {
        if sleep_or_stop(schedule.interval, stop.clone()).await {
            return Ok(());
        }
        let fault = schedule.faults[rng.random_range(0..schedule.faults.len())];
        let n = cluster.nodes.len();
        let leader = cluster.leader().await;
        let target = if rng.random_bool(0.5) {
            leader.unwrap_or_else(|| rng.random_range(0..n))
        } else {
            rng.random_range(0..n)
        };
        let (active, what) = match fault {
            Fault::Kill => {
                cluster.kill(target);
                (
                    Active::Killed(target),
                    json!({"node": cluster.nodes[target].name}),
                )
            }
            Fault::Pause => {
                cluster.pause(target);
                (
                    Active::Paused(target),
                    json!({"node": cluster.nodes[target].name}),
                )
            }
            Fault::Membership => {
                let name = cluster.nodes[target].name.clone();
                let result = cluster.remove(target).await;
                let mut v = json!({"node": name, "removed_id": cluster.nodes[target].id});
                if let Err(e) = result {
                    v["error"] = json!(e.to_string());
                }
                (Active::Removed(target), v)
            }
            shape => {
                let pairs = grudge(shape, n, leader, rng);
                for &(a, b) in &pairs {
                    cluster.net.block(a, b)?;
                }
                let names: Vec<(String, String)> = pairs
                    .iter()
                    .map(|&(a, b)| (cluster.nodes[a].name.clone(), cluster.nodes[b].name.clone()))
                    .collect();
                (Active::Partitioned, json!({"cut": names}))
            }
        };
        record(
            rec,
            Kind::Info,
            "start",
            json!({"fault": fault.name(), "what": what}),
        );
        let stopped = sleep_or_stop(schedule.interval, stop.clone()).await;
        heal(cluster, active).await?;
        record(rec, Kind::Info, "stop", json!({"fault": fault.name()}));
        if stopped {
            return Ok(());
        }
    }
}

async fn heal(cluster: &mut Cluster, active: Active) -> Result<(), HarnessError> {
    match active {
        Active::Killed(i) => cluster.restart(i),
        Active::Paused(i) => {
            cluster.resume(i);
            Ok(())
        }
        Active::Partitioned => cluster.net.heal(),
        Active::Removed(i) => cluster.add(i).await,
    }
}

/// After the run: everything back, whatever the schedule left.
pub async fn heal_all(cluster: &mut Cluster) -> Result<(), HarnessError> {
    cluster.net.heal()?;
    for i in 0..cluster.nodes.len() {
        if cluster.nodes[i].paused {
            cluster.resume(i);
        }
        if !cluster.is_running(i) {
            cluster.restart(i)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn sees(pairs: &[(usize, usize)], n: usize, i: usize) -> usize {
        (0..n)
            .filter(|&j| j == i || !pairs.contains(&(i, j)) && !pairs.contains(&(j, i)))
            .count()
    }

    #[test]
    fn shapes() {
        let mut rng = StdRng::seed_from_u64(1);
        for n in [3, 5] {
            let halves = grudge(Fault::PartitionHalves, n, None, &mut rng);
            assert_eq!(halves.len(), (n / 2) * (n - n / 2));
            let lone = grudge(Fault::PartitionLeader, n, Some(2), &mut rng);
            assert_eq!(sees(&lone, n, 2), 1);
            let ring = grudge(Fault::PartitionRing, n, None, &mut rng);
            assert!(!ring.is_empty());
            for i in 0..n {
                assert!(sees(&ring, n, i) > n / 2, "n={n} node {i}: {ring:?}");
            }
            let bridge = grudge(Fault::PartitionBridge, n, None, &mut rng);
            assert_eq!(
                (0..n).filter(|&i| sees(&bridge, n, i) == n).count(),
                1,
                "{bridge:?}"
            );
        }
    }

    #[test]
    fn nemesis_list() {
        assert_eq!(parse_list("kill,partition").unwrap().len(), 5);
        assert_eq!(parse_list("none").unwrap(), vec![]);
        assert!(parse_list("bogus").is_err());
        assert!(parse_list("clock").is_err());
    }
}
