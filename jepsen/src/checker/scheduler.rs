//! The scheduler checker: after the heal, each service has exactly its replicas RUNNING, in the
//! store and on the (simulated) agents; and no replica slot ran on two nodes at once for longer
//! than a stated bound while both nodes were in contact with the leader (a node cut off keeps
//! its tasks running, as a real agent does; that copy is stopped when it comes back).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use super::{Validity, Verdict};
use crate::history::Op;

fn text(v: &Value, field: &str) -> String {
    match v.get(field) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Per node, `(time, running)` switches of one replica slot.
type Switches = BTreeMap<String, Vec<(u64, bool)>>;

/// Spans of time, from `(time, on)` switches.
fn spans(mut switches: Vec<(u64, bool)>, end: u64) -> Vec<(u64, u64)> {
    switches.sort_by_key(|s| s.0);
    let mut out = Vec::new();
    let mut since = None;
    for (t, on) in switches {
        match (on, since) {
            (true, None) => since = Some(t),
            (false, Some(s)) => {
                out.push((s, t));
                since = None;
            }
            _ => {}
        }
    }
    if let Some(s) = since {
        out.push((s, end));
    }
    out
}

fn intersect(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(a0, a1) in a {
        for &(b0, b1) in b {
            let (s, e) = (a0.max(b0), a1.min(b1));
            if s < e {
                out.push((s, e));
            }
        }
    }
    out
}

pub fn check(history: &[Op], bound: Duration) -> Verdict {
    let end = history.iter().map(|o| o.time).max().unwrap_or(0);
    let mut problems = Vec::new();
    let mut witness = Vec::new();
    // (service, slot) -> node -> running switches; node -> connected switches.
    let mut running: BTreeMap<(String, String), Switches> = BTreeMap::new();
    let mut connected: BTreeMap<String, Vec<(u64, bool)>> = BTreeMap::new();
    let mut scales = 0;
    for op in history {
        let v = &op.value;
        match op.f.as_str() {
            "task-running" | "task-stopped" => running
                .entry((text(v, "service"), text(v, "slot")))
                .or_default()
                .entry(text(v, "node"))
                .or_default()
                .push((op.time, op.f == "task-running")),
            "session-up" | "session-lost" => connected
                .entry(text(v, "node"))
                .or_default()
                .push((op.time, op.f == "session-up")),
            "scale" if op.kind == crate::history::Kind::Invoke => scales += 1,
            _ => {}
        }
    }
    let contact: BTreeMap<String, Vec<(u64, u64)>> = connected
        .into_iter()
        .map(|(n, s)| (n, spans(s, end)))
        .collect();
    let bound_ns = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    let mut worst = 0u64;
    for ((service, slot), nodes) in &running {
        let per_node: Vec<(&String, Vec<(u64, u64)>)> = nodes
            .iter()
            .map(|(n, s)| {
                let run = spans(s.clone(), end);
                (
                    n,
                    intersect(&run, contact.get(n).map_or(&[][..], |c| &c[..])),
                )
            })
            .collect();
        for (i, (na, a)) in per_node.iter().enumerate() {
            for (nb, b) in &per_node[i + 1..] {
                for (s, e) in intersect(a, b) {
                    worst = worst.max(e - s);
                    if e - s > bound_ns {
                        problems.push(format!(
                            "{service} slot {slot} RUNNING on {na} and {nb} for {:.1} s (bound {bound:?})",
                            (e - s) as f64 / 1e9
                        ));
                    }
                }
            }
        }
    }
    // The final state, read after the heal once the cluster settled.
    let finals: Vec<&Op> = history.iter().filter(|o| o.f == "final-state").collect();
    let Some(last) = finals.last() else {
        return Verdict::new(
            "scheduler",
            Validity::Unknown,
            scales,
            "no final state was read".into(),
        );
    };
    if let Some(services) = last.value.get("services").and_then(Value::as_object) {
        for (name, s) in services {
            let want = s.get("replicas").and_then(Value::as_u64).unwrap_or(0);
            let store = s.get("running").and_then(Value::as_u64).unwrap_or(0);
            let agents = s.get("agents_running").and_then(Value::as_u64).unwrap_or(0);
            if store != want || agents != want {
                problems.push(format!(
                    "service {name}: {want} replicas wanted, {store} RUNNING in the store, {agents} running on agents"
                ));
                witness.push((*last).clone());
            }
        }
    }
    let settled = last
        .value
        .get("settled")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    witness.dedup_by_key(|o| o.index);
    let validity = if !problems.is_empty() {
        Validity::Illegal
    } else if !settled {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    let summary = match validity {
        Validity::Illegal => problems[0].clone(),
        Validity::Unknown => "the final state was read before the cluster settled".into(),
        Validity::Valid => format!(
            "{} services at their replica count; longest double run {:.1} s (bound {bound:?})",
            last.value
                .get("services")
                .and_then(Value::as_object)
                .map_or(0, |s| s.len()),
            worst as f64 / 1e9
        ),
    };
    let mut v = Verdict::new("scheduler", validity, scales, summary);
    v.details = json!({ "slots": running.len(), "longest_double_run_s": worst as f64 / 1e9,
        "bound_s": bound.as_secs_f64(), "problems": problems, "final": last.value });
    v.witness = witness;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::*;

    const S: u64 = 1_000_000_000;

    fn run(node: &str, slot: u64, t: u64, on: bool) -> Op {
        let f = if on { "task-running" } else { "task-stopped" };
        ok(
            9,
            f,
            "",
            json!({"node": node, "service": "web", "slot": slot}),
            t,
        )
    }
    fn session(node: &str, t: u64, up: bool) -> Op {
        let f = if up { "session-up" } else { "session-lost" };
        ok(9, f, "", json!({"node": node}), t)
    }
    fn final_state(t: u64, replicas: u64, running: u64, agents: u64) -> Op {
        ok(
            0,
            "final-state",
            "",
            json!({"settled": true, "services": {"web": {"replicas": replicas, "running": running, "agents_running": agents}}}),
            t,
        )
    }

    #[test]
    fn handover_of_a_cut_off_node_is_valid() {
        let h = finish(vec![
            session("n1", 0, true),
            session("n2", 0, true),
            run("n1", 1, S, true),
            // n1 is cut off; its copy keeps running, n2 starts a replacement.
            session("n1", 2 * S, false),
            run("n2", 1, 5 * S, true),
            // n1 comes back and stops its copy within a second.
            session("n1", 20 * S, true),
            run("n1", 1, 21 * S, false),
            final_state(30 * S, 1, 1, 1),
        ]);
        let v = check(&h, Duration::from_secs(5));
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
    }

    #[test]
    fn long_double_run_while_both_connected_is_illegal() {
        let h = finish(vec![
            session("n1", 0, true),
            session("n2", 0, true),
            run("n1", 1, S, true),
            run("n2", 1, 2 * S, true),
            run("n1", 1, 20 * S, false),
            final_state(30 * S, 1, 1, 1),
        ]);
        let v = check(&h, Duration::from_secs(5));
        assert_eq!(v.validity, Validity::Illegal);
        assert!(v.summary.contains("RUNNING on n1 and n2"), "{}", v.summary);
    }

    #[test]
    fn wrong_replica_count_is_illegal() {
        let h = finish(vec![final_state(30 * S, 3, 2, 2)]);
        assert_eq!(
            check(&h, Duration::from_secs(5)).validity,
            Validity::Illegal
        );
        let h = finish(vec![final_state(30 * S, 3, 3, 4)]);
        assert_eq!(
            check(&h, Duration::from_secs(5)).validity,
            Validity::Illegal
        );
    }
}
