//! The lock checker, judged from the store's revisions: a hold is the span of revisions from the
//! PUT that granted the lock key to the DELETE (release or lease expiry) that ended it, as a
//! watcher saw them. No two holds may overlap, every acknowledged acquire must be a grant in the
//! store, and every acknowledged release must end the hold it names.

use serde_json::{json, Value};

use super::{Validity, Verdict};
use crate::history::{pairs, Kind, Op};

#[derive(Debug, Clone)]
struct Hold {
    holder: String,
    start: u64,
    /// u64::MAX: still held when the watch ended.
    end: u64,
}

fn u(v: &Value, field: &str) -> Option<u64> {
    v.get(field).and_then(Value::as_u64)
}

fn s(v: &Value, field: &str) -> String {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

pub fn check(history: &[Op]) -> Verdict {
    let mut problems: Vec<String> = Vec::new();
    let mut witness: Vec<Op> = Vec::new();

    // 1. Holds as the store granted them.
    let mut events: Vec<&Op> = history.iter().filter(|o| o.f == "lock-event").collect();
    events.sort_by_key(|o| u(&o.value, "revision").unwrap_or(0));
    let watched_through = history
        .iter()
        .filter(|o| o.f == "lock-watch-end")
        .filter_map(|o| u(&o.value, "through"))
        .max();
    let mut holds: Vec<Hold> = Vec::new();
    let mut open: Option<(usize, &Op)> = None;
    for e in &events {
        let rev = u(&e.value, "revision").unwrap_or(0);
        match e.value.get("type").and_then(Value::as_str) {
            Some("put") => {
                if let Some((i, granted)) = open {
                    problems.push(format!(
                        "revision {rev}: lock granted to {} while {} held it since revision {}",
                        s(&e.value, "holder"),
                        holds[i].holder,
                        holds[i].start
                    ));
                    witness.extend([granted.clone(), (*e).clone()]);
                }
                holds.push(Hold {
                    holder: s(&e.value, "holder"),
                    start: rev,
                    end: u64::MAX,
                });
                open = Some((holds.len() - 1, e));
            }
            Some("delete") => {
                if let Some((i, _)) = open.take() {
                    holds[i].end = rev;
                }
            }
            _ => {}
        }
    }

    // 2. What the clients were told.
    let all = pairs(history);
    let mut acquired = 0;
    let mut claims: Vec<(u64, u64, String, &crate::history::Pair)> = Vec::new();
    for p in &all {
        if p.kind() != Kind::Ok {
            continue;
        }
        let v = p.value();
        let holder = s(v, "holder");
        match p.invoke.f.as_str() {
            "acquire" => {
                acquired += 1;
                let Some(rev) = u(v, "revision") else {
                    continue;
                };
                let hold = holds.iter().find(|h| h.start == rev);
                match hold {
                    Some(h) if h.holder == holder => {}
                    _ if watched_through.is_some_and(|w| w >= rev) => {
                        problems.push(format!(
                            "{holder} was told it holds the lock at revision {rev}; the store granted no such hold"
                        ));
                        witness.extend(p.complete.clone());
                    }
                    _ => {}
                }
                // The end of the claim: the store's, else the client's own release.
                let release = all.iter().find(|r| {
                    r.invoke.f == "release"
                        && r.kind() == Kind::Ok
                        && u(&r.invoke.value, "acquired").is_some_and(|a| a == rev)
                });
                let end = hold
                    .map(|h| h.end)
                    .filter(|&e| e != u64::MAX)
                    .or_else(|| release.and_then(|r| u(r.value(), "revision")))
                    .unwrap_or(u64::MAX);
                claims.push((rev, end, holder, p));
            }
            "release" => {
                let (Some(from), Some(rev)) = (u(&p.invoke.value, "acquired"), u(v, "revision"))
                else {
                    continue;
                };
                if let Some(h) = holds.iter().find(|h| h.start == from) {
                    if h.end != rev && watched_through.is_some_and(|w| w >= rev) {
                        problems.push(format!(
                            "{holder}'s release at revision {rev} did not end its hold from revision {from} (ended at {})",
                            h.end
                        ));
                        witness.extend(p.complete.clone());
                    }
                }
            }
            _ => {}
        }
    }

    // 3. No two acknowledged holds overlap in revision order.
    claims.sort_by_key(|c| c.0);
    for w in claims.windows(2) {
        let (a, b) = (&w[0], &w[1]);
        if b.0 < a.1 {
            problems.push(format!(
                "two holders: {} from revision {} to {}, {} from revision {}",
                a.2,
                a.0,
                if a.1 == u64::MAX {
                    "the end".to_string()
                } else {
                    a.1.to_string()
                },
                b.2,
                b.0
            ));
            for p in [a.3, b.3] {
                witness.push(p.invoke.clone());
                witness.extend(p.complete.clone());
            }
        }
    }
    problems.dedup();
    witness.sort_by_key(|o| o.time);
    witness.dedup_by_key(|o| (o.index, o.time, o.process));

    let complete = watched_through.is_some();
    let validity = if !problems.is_empty() {
        Validity::Illegal
    } else if !complete {
        Validity::Unknown
    } else {
        Validity::Valid
    };
    let summary = match validity {
        Validity::Illegal => problems[0].clone(),
        Validity::Unknown => {
            format!("{acquired} acquires acknowledged, but the lock's watch did not cover the run")
        }
        Validity::Valid => format!(
            "{} holds in the store, {acquired} acknowledged acquires, never two holders",
            holds.len()
        ),
    };
    let checked = all
        .iter()
        .filter(|p| matches!(p.invoke.f.as_str(), "acquire" | "release"))
        .count();
    let mut v = Verdict::new("lock", validity, checked, summary);
    v.details = json!({ "holds": holds.len(), "acknowledged_acquires": acquired,
        "events": events.len(), "watched_through": watched_through, "problems": problems });
    v.witness = witness;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::*;

    fn event(t: u64, ty: &str, rev: u64, holder: &str) -> Op {
        ok(
            100,
            "lock-event",
            "lock",
            json!({"type": ty, "revision": rev, "holder": holder}),
            t,
        )
    }
    fn acquire(p: u64, holder: &str, t: u64, rev: u64) -> Vec<Op> {
        vec![
            inv(p, "acquire", "lock", json!({"holder": holder}), t),
            ok(
                p,
                "acquire",
                "lock",
                json!({"holder": holder, "revision": rev}),
                t + 1,
            ),
        ]
    }
    fn release(p: u64, holder: &str, t: u64, from: u64, rev: u64) -> Vec<Op> {
        vec![
            inv(
                p,
                "release",
                "lock",
                json!({"holder": holder, "acquired": from}),
                t,
            ),
            ok(
                p,
                "release",
                "lock",
                json!({"holder": holder, "revision": rev}),
                t + 1,
            ),
        ]
    }
    fn end(t: u64, through: u64) -> Op {
        ok(
            100,
            "lock-watch-end",
            "lock",
            json!({"through": through}),
            t,
        )
    }

    #[test]
    fn alternating_holders_are_valid() {
        let mut h = Vec::new();
        h.extend(acquire(1, "a", 1, 5));
        h.push(event(3, "put", 5, "a"));
        h.extend(release(1, "a", 4, 5, 8));
        h.push(event(6, "delete", 8, ""));
        h.extend(acquire(2, "b", 7, 9));
        h.push(event(9, "put", 9, "b"));
        // b's lease expired: the store deleted the key at 12, b's release failed.
        h.push(event(10, "delete", 12, ""));
        h.push(inv(
            2,
            "release",
            "lock",
            json!({"holder": "b", "acquired": 9}),
            11,
        ));
        h.push(fail(2, "release", "lock", json!({"holder": "b"}), 12));
        h.extend(acquire(3, "c", 13, 14));
        h.push(event(15, "put", 14, "c"));
        h.push(end(20, 14));
        let v = check(&finish(h));
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
    }

    #[test]
    fn duplicate_holder_in_the_store_is_illegal() {
        let mut h = Vec::new();
        h.extend(acquire(1, "a", 1, 5));
        h.push(event(3, "put", 5, "a"));
        h.extend(acquire(2, "b", 4, 7));
        h.push(event(6, "put", 7, "b"));
        h.push(end(20, 7));
        let v = check(&finish(h));
        assert_eq!(v.validity, Validity::Illegal);
        assert!(v.summary.contains("while a held it"), "{}", v.summary);
        assert!(!v.witness.is_empty());
    }

    #[test]
    fn overlapping_acknowledged_holds_are_illegal_even_without_events() {
        let mut h = Vec::new();
        h.extend(acquire(1, "a", 1, 5));
        h.extend(acquire(2, "b", 3, 7));
        h.extend(release(1, "a", 5, 5, 9));
        h.push(end(20, 3));
        let v = check(&finish(h));
        assert_eq!(v.validity, Validity::Illegal, "{v:?}");
        assert!(v.summary.contains("two holders"), "{}", v.summary);
    }

    #[test]
    fn acknowledged_grant_missing_from_the_store_is_illegal() {
        let mut h = acquire(1, "a", 1, 5);
        h.push(end(20, 10));
        assert_eq!(check(&finish(h)).validity, Validity::Illegal);
    }

    #[test]
    fn no_complete_watch_is_unknown() {
        let mut h = acquire(1, "a", 1, 5);
        h.push(event(3, "put", 5, "a"));
        assert_eq!(check(&finish(h)).validity, Validity::Unknown);
    }
}
