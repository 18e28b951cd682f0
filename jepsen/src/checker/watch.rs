//! The watch checker: every watcher delivers the same changes in the same (revision) order, with
//! no gap: each acknowledged write whose revision lies in the span a watcher covered must be in
//! what that watcher delivered, and nothing is delivered that no write could have made.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::{Validity, Verdict};
use crate::history::{pairs, Kind, Op};

/// (revision, key, value) of one delivered change.
type Change = (u64, String, String);

fn change(v: &Value) -> Change {
    (
        v.get("revision").and_then(Value::as_u64).unwrap_or(0),
        v.get("key")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        v.get("value")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    )
}

pub fn check(history: &[Op]) -> Verdict {
    let mut problems: Vec<String> = Vec::new();
    let mut witness: Vec<Op> = Vec::new();
    let mut delivered: BTreeMap<u64, Vec<(&Op, Change)>> = BTreeMap::new();
    let mut spans: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for op in history {
        match op.f.as_str() {
            "watch-event" => delivered
                .entry(op.process)
                .or_default()
                .push((op, change(&op.value))),
            "watch-end" => {
                let from = op.value.get("from").and_then(Value::as_u64).unwrap_or(0);
                let through = op.value.get("through").and_then(Value::as_u64).unwrap_or(0);
                spans.insert(op.process, (from, through));
                delivered.entry(op.process).or_default();
            }
            _ => {}
        }
    }
    // Acknowledged and possibly-applied writes, by value (values are unique).
    let all = pairs(history);
    let mut acked: Vec<(&crate::history::Pair, Change)> = Vec::new();
    let mut possible: HashMap<(String, String), Option<u64>> = HashMap::new();
    for p in all.iter().filter(|p| p.invoke.f == "put") {
        let value = p.invoke.value.as_str().unwrap_or("").to_string();
        match p.kind() {
            Kind::Ok => {
                let rev = p.value().get("revision").and_then(Value::as_u64);
                possible.insert((p.invoke.key.clone(), value.clone()), rev);
                if let Some(rev) = rev {
                    acked.push((p, (rev, p.invoke.key.clone(), value)));
                }
            }
            Kind::Info => {
                possible.insert((p.invoke.key.clone(), value), None);
            }
            Kind::Fail | Kind::Invoke => {}
        }
    }

    for (w, events) in &delivered {
        // Order: strictly increasing revisions (each write here is its own revision).
        for pair in events.windows(2) {
            if pair[1].1 .0 <= pair[0].1 .0 {
                problems.push(format!(
                    "watcher {w} delivered revision {} after {}",
                    pair[1].1 .0, pair[0].1 .0
                ));
                witness.extend([pair[0].0.clone(), pair[1].0.clone()]);
            }
        }
        // Nothing that no write made.
        for (op, c) in events {
            match possible.get(&(c.1.clone(), c.2.clone())) {
                Some(Some(rev)) if *rev != c.0 => {
                    problems.push(format!(
                        "watcher {w} delivered {}={} at revision {}, written at revision {rev}",
                        c.1, c.2, c.0
                    ));
                    witness.push((*op).clone());
                }
                None => {
                    problems.push(format!(
                        "watcher {w} delivered {}={} at revision {}, which no write made",
                        c.1, c.2, c.0
                    ));
                    witness.push((*op).clone());
                }
                _ => {}
            }
        }
        // No gap inside the span it covered.
        let Some(&(from, through)) = spans.get(w) else {
            continue;
        };
        let seen: HashMap<u64, &Change> = events.iter().map(|(_, c)| (c.0, c)).collect();
        for (p, c) in &acked {
            if c.0 < from || c.0 > through {
                continue;
            }
            if seen.get(&c.0) != Some(&c) {
                problems.push(format!(
                    "watcher {w} skipped revision {} ({}={}), acknowledged to a writer; it covered {from}..={through}",
                    c.0, c.1, c.2
                ));
                witness.push(p.invoke.clone());
                witness.extend(p.complete.clone());
            }
        }
    }
    // Same changes in the same order, on the span every pair of watchers covered.
    let ids: Vec<u64> = spans.keys().copied().collect();
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            let lo = spans[a].0.max(spans[b].0);
            let hi = spans[a].1.min(spans[b].1);
            let within = |w: &u64| -> Vec<&Change> {
                delivered[w]
                    .iter()
                    .map(|(_, c)| c)
                    .filter(|c| c.0 >= lo && c.0 <= hi)
                    .collect()
            };
            let (sa, sb) = (within(a), within(b));
            if sa != sb {
                let at = sa
                    .iter()
                    .zip(&sb)
                    .find(|(x, y)| x != y)
                    .map_or(lo, |(x, _)| x.0);
                problems.push(format!(
                    "watchers {a} and {b} disagree from revision {at} ({} vs {} changes in {lo}..={hi})",
                    sa.len(),
                    sb.len()
                ));
            }
        }
    }
    problems.dedup();
    witness.sort_by_key(|o| o.time);
    witness.truncate(50);

    let events: usize = delivered.values().map(Vec::len).sum();
    let validity = if !problems.is_empty() {
        Validity::Illegal
    } else if spans.is_empty() || spans.len() < delivered.len() {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    let summary = match validity {
        Validity::Illegal => problems[0].clone(),
        Validity::Unknown => "a watcher did not report the span it covered".into(),
        Validity::Valid => format!(
            "{} watchers agree on {} acknowledged writes, {events} deliveries, no gap",
            spans.len(),
            acked.len()
        ),
    };
    let mut v = Verdict::new("watch", validity, acked.len() + events, summary);
    v.details = json!({ "watchers": spans.len(), "acknowledged_writes": acked.len(),
        "deliveries": events, "spans": spans, "problems": problems });
    v.witness = witness;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::*;

    fn put(p: u64, t: u64, key: &str, value: &str, rev: u64) -> Vec<Op> {
        vec![
            inv(p, "put", key, json!(value), t),
            ok(p, "put", key, json!({"revision": rev}), t + 1),
        ]
    }
    fn ev(w: u64, t: u64, rev: u64, key: &str, value: &str) -> Op {
        ok(
            w,
            "watch-event",
            "",
            json!({"revision": rev, "key": key, "value": value}),
            t,
        )
    }
    fn end(w: u64, t: u64, from: u64, through: u64) -> Op {
        ok(
            w,
            "watch-end",
            "",
            json!({"from": from, "through": through}),
            t,
        )
    }

    fn good() -> Vec<Op> {
        let mut h = Vec::new();
        h.extend(put(1, 1, "w/a", "1", 10));
        h.extend(put(1, 3, "w/b", "2", 12));
        h.extend(put(2, 5, "w/a", "3", 15));
        for w in [50, 51] {
            h.push(ev(w, 7, 10, "w/a", "1"));
            h.push(ev(w, 8, 12, "w/b", "2"));
            h.push(ev(w, 9, 15, "w/a", "3"));
            h.push(end(w, 20, 1, 15));
        }
        h
    }

    #[test]
    fn agreeing_watchers_are_valid() {
        let v = check(&finish(good()));
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
    }

    #[test]
    fn watch_gap_is_illegal() {
        let mut h = good();
        // Watcher 51 misses revision 12.
        h.retain(|o| !(o.process == 51 && o.value["revision"] == 12));
        let v = check(&finish(h));
        assert_eq!(v.validity, Validity::Illegal);
        assert!(v.summary.contains("skipped revision 12"), "{}", v.summary);
    }

    #[test]
    fn reordered_or_invented_changes_are_illegal() {
        let mut h = good();
        for o in &mut h {
            if o.process == 50 && o.value["revision"] == 12 {
                o.time = 10; // delivered after revision 15
            }
        }
        assert_eq!(check(&finish(h)).validity, Validity::Illegal);
        let mut h = good();
        h.push(ev(50, 10, 16, "w/a", "999"));
        assert_eq!(check(&finish(h)).validity, Validity::Illegal);
    }

    #[test]
    fn watcher_that_ended_early_is_checked_on_its_span() {
        let mut h = good();
        h.retain(|o| !(o.process == 51 && (o.f == "watch-end" || o.value["revision"] == 15)));
        h.push(end(51, 20, 1, 12));
        assert_eq!(check(&finish(h)).validity, Validity::Valid);
    }
}
