//! Linearizability of registers, key by key: the Wing-Gong algorithm with Lowe's cache of
//! (linearized set, state) pairs, bounded by a time limit (past it a key is unknown, never valid).
//! Operations: `read` (ok value: the value or null), `write` (value), `cas` (value `[old, new]`).
//! A `fail` never happened; an `info` may have happened at any time after its invoke.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::json;
#[cfg(test)]
use serde_json::Value;

use super::{Validity, Verdict};
use crate::history::{pairs, Kind, Op, Pair};

/// What one operation does to the register, and what it saw.
#[derive(Debug, Clone, PartialEq)]
enum Call {
    /// Saw this value (None: the key was absent).
    Read(Option<i64>),
    Write(i64),
    Cas(i64, i64),
}

#[derive(Debug, Clone)]
struct RegOp {
    call: Call,
    start: u64,
    /// u64::MAX: unknown outcome.
    end: u64,
    /// The history entries (invoke, completion) it came from.
    ops: Vec<Op>,
}

fn step(state: Option<i64>, call: &Call) -> Option<Option<i64>> {
    match *call {
        Call::Read(v) => (state == v).then_some(state),
        Call::Write(v) => Some(Some(v)),
        Call::Cas(old, new) => (state == Some(old)).then_some(Some(new)),
    }
}

/// The operations of one key that can constrain a linearization.
fn reg_ops(pairs: &[&Pair]) -> Vec<RegOp> {
    let mut out = Vec::new();
    for p in pairs {
        let kind = p.kind();
        if kind == Kind::Fail {
            continue;
        }
        let call = match p.invoke.f.as_str() {
            // A read with an unknown outcome observed nothing.
            "read" if kind == Kind::Ok => Call::Read(p.value().as_i64()),
            "write" => match p.invoke.value.as_i64() {
                Some(v) => Call::Write(v),
                None => continue,
            },
            "cas" => match (p.invoke.value.get(0), p.invoke.value.get(1)) {
                (Some(a), Some(b)) => match (a.as_i64(), b.as_i64()) {
                    (Some(a), Some(b)) => Call::Cas(a, b),
                    _ => continue,
                },
                _ => continue,
            },
            _ => continue,
        };
        let mut ops = vec![p.invoke.clone()];
        ops.extend(p.complete.clone());
        out.push(RegOp {
            call,
            start: p.invoke.time,
            end: p.end(),
            ops,
        });
    }
    out
}

/// Outcome of the search on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Search {
    Linearizable,
    Illegal,
    TimedOut,
}

const NONE: usize = usize::MAX;
/// Time spent looking for a smaller witness of an illegal key.
const SHRINK_BUDGET: Duration = Duration::from_secs(5);

/// Wing & Gong's search over the call/return entries, with Lowe's memo of visited
/// (linearized, state) configurations.
fn search(ops: &[RegOp], deadline: Instant) -> Search {
    // Entries: 0 is the head sentinel; then one call and one return entry per op.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        events.push((op.start, true, i));
        events.push((op.end, false, i));
    }
    // Calls before returns at equal times: touching operations count as concurrent.
    events.sort_by_key(|&(t, is_call, _)| (t, !is_call));
    let n = events.len() + 1;
    let mut prev = vec![NONE; n];
    let mut next = vec![NONE; n];
    let mut mate = vec![NONE; n];
    let mut call_of = vec![NONE; ops.len()];
    let mut ret_of = vec![NONE; ops.len()];
    for (k, &(_, is_call, i)) in events.iter().enumerate() {
        let e = k + 1;
        prev[e] = e - 1;
        next[e - 1] = e;
        if is_call {
            call_of[i] = e;
        } else {
            ret_of[i] = e;
        }
    }
    let mut op_of = vec![NONE; n];
    for i in 0..ops.len() {
        mate[call_of[i]] = ret_of[i];
        op_of[call_of[i]] = i;
    }

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<i64> = None;
    let mut cache: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut entry = next[0];
    let mut steps = 0u64;
    // An op with an unknown outcome may never take effect: the search succeeds once every op
    // with a known outcome is linearized (the unknown ones left over simply did not happen).
    let required = ops.iter().filter(|o| o.end != u64::MAX).count();
    let mut done = 0;
    loop {
        if next[0] == NONE || done == required {
            return Search::Linearizable;
        }
        steps += 1;
        if steps.is_multiple_of(4096) && Instant::now() > deadline {
            return Search::TimedOut;
        }
        if entry != NONE && mate[entry] != NONE {
            // A call: try to linearize it now.
            let i = op_of[entry];
            if let Some(new_state) = step(state, &ops[i].call) {
                let mut lin = linearized.clone();
                lin[i / 64] |= 1 << (i % 64);
                if cache.insert((lin.clone(), new_state)) {
                    stack.push((entry, state));
                    state = new_state;
                    linearized = lin;
                    done += usize::from(ops[i].end != u64::MAX);
                    // Lift the call and its return out of the list.
                    let r = mate[entry];
                    next[prev[entry]] = next[entry];
                    if next[entry] != NONE {
                        prev[next[entry]] = prev[entry];
                    }
                    next[prev[r]] = next[r];
                    if next[r] != NONE {
                        prev[next[r]] = prev[r];
                    }
                    entry = next[0];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // A return whose call is not linearized yet (or the end): backtrack.
            let Some((e, s)) = stack.pop() else {
                return Search::Illegal;
            };
            let i = op_of[e];
            state = s;
            linearized[i / 64] &= !(1 << (i % 64));
            done -= usize::from(ops[i].end != u64::MAX);
            let r = mate[e];
            // Unlift in reverse order.
            next[prev[r]] = r;
            if next[r] != NONE {
                prev[next[r]] = r;
            }
            next[prev[e]] = e;
            if next[e] != NONE {
                prev[next[e]] = e;
            }
            entry = next[e];
        }
    }
}

/// Shrinks an illegal key history to a smaller one that is still illegal, by steps that keep
/// it a witness of the original: dropping reads (reads change nothing; chunks first, then one by
/// one) and weakening acknowledged writes to "may have happened" (that only allows more orders).
/// Bounded by `deadline`: the result is the smallest found in time.
fn shrink(mut ops: Vec<RegOp>, deadline: Instant) -> Vec<RegOp> {
    let illegal = |ops: &[RegOp]| search(ops, deadline) == Search::Illegal;
    let mut chunk = ops.len().div_ceil(2).max(1);
    loop {
        let mut i = 0;
        while i < ops.len() && Instant::now() < deadline {
            let reads: Vec<usize> = (i..ops.len())
                .filter(|&j| matches!(ops[j].call, Call::Read(_)))
                .take(chunk)
                .collect();
            let Some(&last) = reads.last() else { break };
            let trial: Vec<RegOp> = ops
                .iter()
                .enumerate()
                .filter(|(j, _)| !reads.contains(j))
                .map(|(_, o)| o.clone())
                .collect();
            if illegal(&trial) {
                ops = trial;
            } else {
                i = last + 1;
            }
        }
        if chunk == 1 || Instant::now() >= deadline {
            break;
        }
        chunk = chunk.div_ceil(2);
    }
    for i in 0..ops.len() {
        if Instant::now() >= deadline {
            break;
        }
        if matches!(ops[i].call, Call::Read(_)) || ops[i].end == u64::MAX {
            continue;
        }
        let mut trial = ops.clone();
        trial[i].end = u64::MAX;
        if illegal(&trial) {
            ops = trial;
        }
    }
    ops
}

/// Checks every key of the register workload, spending at most `limit` in total.
pub fn check(history: &[Op], limit: Duration) -> Verdict {
    let deadline = Instant::now() + limit;
    let all = pairs(history);
    let mut by_key: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for p in &all {
        if matches!(p.invoke.f.as_str(), "read" | "write" | "cas") {
            by_key.entry(p.invoke.key.as_str()).or_default().push(p);
        }
    }
    let checked: usize = by_key
        .values()
        .flatten()
        .filter(|p| p.kind() != Kind::Info || p.invoke.f != "read")
        .count();
    let (mut illegal, mut unknown) = (Vec::new(), Vec::new());
    let mut witness = Vec::new();
    for (key, pairs) in &by_key {
        let ops = reg_ops(pairs);
        match search(&ops, deadline) {
            Search::Linearizable => {}
            Search::TimedOut => unknown.push(key.to_string()),
            Search::Illegal => {
                if witness.is_empty() {
                    let small = shrink(ops, Instant::now() + SHRINK_BUDGET.min(limit / 4));
                    witness = small.into_iter().flat_map(|o| o.ops).collect();
                    witness.sort_by_key(|o: &Op| o.time);
                }
                illegal.push(key.to_string());
            }
        }
    }
    let (validity, summary) = if !illegal.is_empty() {
        (
            Validity::Illegal,
            format!(
                "{} of {} keys not linearizable (first: {})",
                illegal.len(),
                by_key.len(),
                illegal[0]
            ),
        )
    } else if !unknown.is_empty() {
        (
            Validity::Unknown,
            format!(
                "{} of {} keys not decided within {limit:?}",
                unknown.len(),
                by_key.len()
            ),
        )
    } else {
        (
            Validity::Valid,
            format!("{} keys linearizable", by_key.len()),
        )
    };
    let mut v = Verdict::new("linearizable", validity, checked, summary);
    v.details = json!({ "keys": by_key.len(), "illegal_keys": illegal, "unknown_keys": unknown });
    v.witness = witness;
    v
}

/// A history of a linearizable register: random concurrent ops, each applied at a random point
/// inside its interval. Used by the tests, and to sanity-check the checker from the CLI.
#[cfg(test)]
pub(crate) fn generate(seed: u64, processes: u64, count: usize, key: &str) -> Vec<Op> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // (invoke time, linearization point, end time, process, f, arg)
    let mut plans = Vec::new();
    let mut free_at = vec![0u64; processes as usize];
    for n in 0..count {
        let p = rng.random_range(0..processes) as usize;
        let start = free_at[p] + rng.random_range(1..20);
        let point = start + rng.random_range(0..20);
        let end = point + rng.random_range(0..20);
        free_at[p] = end;
        let f = ["read", "write", "cas"][rng.random_range(0..3)];
        plans.push((start, point, end, p as u64, f, n as i64));
    }
    let mut order: Vec<usize> = (0..plans.len()).collect();
    order.sort_by_key(|&i| plans[i].1);
    let mut state: Option<i64> = None;
    let mut ops = Vec::new();
    for i in order {
        let (start, _, end, p, f, n) = plans[i];
        let (arg, result, kind) = match f {
            "read" => (Value::Null, json!(state), Kind::Ok),
            "write" => {
                state = Some(n);
                (json!(n), json!(n), Kind::Ok)
            }
            _ => {
                let old = if rng.random_bool(0.5) {
                    state.unwrap_or(-1)
                } else {
                    -1
                };
                if state == Some(old) {
                    state = Some(n);
                    (json!([old, n]), json!([old, n]), Kind::Ok)
                } else {
                    (json!([old, n]), json!([old, n]), Kind::Fail)
                }
            }
        };
        ops.push(Op::new(p, Kind::Invoke, f, key, arg, start));
        ops.push(Op::new(p, kind, f, key, result, end));
    }
    crate::history::build::finish(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::*;

    const LIMIT: Duration = Duration::from_secs(20);

    #[test]
    fn sequential_history_is_valid() {
        let h = finish(vec![
            inv(1, "write", "k", json!(1), 1),
            ok(1, "write", "k", json!(1), 2),
            inv(1, "read", "k", Value::Null, 3),
            ok(1, "read", "k", json!(1), 4),
            inv(1, "cas", "k", json!([1, 2]), 5),
            ok(1, "cas", "k", json!([1, 2]), 6),
            inv(1, "read", "k", Value::Null, 7),
            ok(1, "read", "k", json!(2), 8),
        ]);
        assert_eq!(check(&h, LIMIT).validity, Validity::Valid);
    }

    #[test]
    fn stale_read_is_illegal_with_a_small_witness() {
        let h = finish(vec![
            inv(1, "write", "k", json!(1), 1),
            ok(1, "write", "k", json!(1), 2),
            inv(2, "read", "k", Value::Null, 3),
            ok(2, "read", "k", json!(1), 4),
            inv(1, "write", "k", json!(2), 5),
            ok(1, "write", "k", json!(2), 6),
            // Invoked after write 2 completed, yet sees 1.
            inv(3, "read", "k", Value::Null, 7),
            ok(3, "read", "k", json!(1), 8),
            inv(4, "read", "k", Value::Null, 9),
            ok(4, "read", "k", json!(2), 10),
        ]);
        let v = check(&h, LIMIT);
        assert_eq!(v.validity, Validity::Illegal, "{v:?}");
        // The witness: write 1, write 2, the stale read (the other reads are dropped).
        let values: Vec<_> = v.witness.iter().map(|o| (o.f.as_str(), o.time)).collect();
        assert_eq!(
            values,
            [
                ("write", 1),
                ("write", 2),
                ("write", 5),
                ("write", 6),
                ("read", 7),
                ("read", 8)
            ],
            "{:?}",
            v.witness
        );
    }

    #[test]
    fn lost_write_is_illegal() {
        // The write of 2 was acknowledged; later reads see the key absent.
        let h = finish(vec![
            inv(1, "write", "k", json!(2), 1),
            ok(1, "write", "k", json!(2), 2),
            inv(2, "read", "k", Value::Null, 3),
            ok(2, "read", "k", Value::Null, 4),
        ]);
        assert_eq!(check(&h, LIMIT).validity, Validity::Illegal);
    }

    #[test]
    fn unknown_writes_may_or_may_not_apply() {
        let h = finish(vec![
            inv(1, "write", "k", json!(1), 1),
            info(1, "write", "k", json!(1), 2),
            inv(2, "read", "k", Value::Null, 3),
            ok(2, "read", "k", Value::Null, 4),
            inv(3, "read", "k", Value::Null, 5),
            ok(3, "read", "k", json!(1), 6),
            // A failed cas never happened, so 9 is never read.
            inv(4, "cas", "k", json!([1, 9]), 7),
            fail(4, "cas", "k", json!([1, 9]), 8),
            inv(5, "read", "k", Value::Null, 9),
            ok(5, "read", "k", json!(1), 10),
        ]);
        assert_eq!(check(&h, LIMIT).validity, Validity::Valid);
    }

    #[test]
    fn unknown_op_that_could_never_apply_did_not_happen() {
        // Found by a run: a cas with an unknown outcome whose expected value was never written.
        let h = finish(vec![
            inv(1, "write", "k", json!(1), 1),
            ok(1, "write", "k", json!(1), 2),
            inv(2, "cas", "k", json!([7, 8]), 3),
            info(2, "cas", "k", json!([7, 8]), 4),
            inv(3, "write", "k", json!(2), 5),
            ok(3, "write", "k", json!(2), 6),
            inv(3, "read", "k", Value::Null, 7),
            ok(3, "read", "k", json!(2), 8),
        ]);
        assert_eq!(check(&h, LIMIT).validity, Validity::Valid);
    }

    #[test]
    fn concurrent_ops_may_take_effect_in_either_order() {
        let h = finish(vec![
            inv(1, "write", "k", json!(1), 1),
            inv(2, "read", "k", Value::Null, 2),
            ok(2, "read", "k", json!(1), 3),
            ok(1, "write", "k", json!(1), 4),
        ]);
        assert_eq!(check(&h, LIMIT).validity, Validity::Valid);
    }

    #[test]
    fn generated_histories_are_valid_and_a_stale_read_in_them_is_flagged() {
        // Keys of the register workload see about 40 operations each; these are larger.
        for seed in 0..10 {
            let h = generate(seed, 5, 100, "k");
            let v = check(&h, LIMIT);
            assert_eq!(v.validity, Validity::Valid, "seed {seed}: {}", v.summary);
            // Append a read, invoked after everything completed, of a value that is not the last.
            let last = h.iter().map(|o| o.time).max().unwrap_or(0);
            let (mut bad, mut writes) = (h.clone(), Vec::new());
            for p in pairs(&h) {
                if p.kind() == Kind::Ok && p.invoke.f == "write" {
                    writes.push(p.invoke.value.clone());
                }
            }
            let Some(stale) = writes.first().cloned() else {
                continue;
            };
            bad.push(inv(99, "write", "k", json!(-7), last + 1));
            bad.push(ok(99, "write", "k", json!(-7), last + 2));
            bad.push(inv(99, "read", "k", Value::Null, last + 3));
            bad.push(ok(99, "read", "k", stale, last + 4));
            // A short limit: it bounds the witness search too (a quarter of it).
            let v = check(&finish(bad), Duration::from_secs(2));
            assert_eq!(v.validity, Validity::Illegal, "seed {seed}");
            assert!(!v.witness.is_empty());
        }
    }

    #[test]
    fn time_limit_gives_unknown_not_valid() {
        let h = generate(7, 8, 400, "k");
        let v = check(&h, Duration::ZERO);
        assert_ne!(v.validity, Validity::Illegal);
    }
}
