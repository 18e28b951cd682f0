//! The set checker: every acknowledged `add` must be in the final `read`; an element in the final
//! read that was never attempted (or whose add definitely failed) is unexpected. Adds with an
//! unknown outcome may be present or absent.

use std::collections::BTreeSet;

use serde_json::json;

use super::{Validity, Verdict};
use crate::history::{pairs, Kind, Op};

pub fn check(history: &[Op]) -> Verdict {
    let all = pairs(history);
    let (mut ok, mut unknown, mut failed) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut adds = Vec::new();
    let mut finals = Vec::new();
    for p in &all {
        match (p.invoke.f.as_str(), p.kind()) {
            ("add", kind) => {
                let Some(e) = p.invoke.value.as_i64() else {
                    continue;
                };
                adds.push(p);
                match kind {
                    Kind::Ok => ok.insert(e),
                    Kind::Fail => failed.insert(e),
                    _ => unknown.insert(e),
                };
            }
            ("final-read", Kind::Ok) => finals.push(p),
            _ => {}
        }
    }
    let Some(last) = finals.last() else {
        return Verdict::new(
            "set",
            Validity::Unknown,
            adds.len(),
            "no final read succeeded".into(),
        );
    };
    let seen: BTreeSet<i64> = last
        .value()
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_i64()).collect())
        .unwrap_or_default();
    let lost: Vec<i64> = ok.difference(&seen).copied().collect();
    let unexpected: Vec<i64> = seen
        .iter()
        .filter(|e| !ok.contains(*e) && !unknown.contains(*e))
        .copied()
        .collect();
    let recovered = unknown.intersection(&seen).count();
    let validity = if lost.is_empty() && unexpected.is_empty() {
        Validity::Valid
    } else {
        Validity::Illegal
    };
    let summary = format!(
        "{} acknowledged adds, {} lost, {} unexpected, {} of {} unknown adds present",
        ok.len(),
        lost.len(),
        unexpected.len(),
        recovered,
        unknown.len()
    );
    let mut v = Verdict::new("set", validity, adds.len() + 1, summary);
    v.details = json!({
        "acknowledged": ok.len(), "unknown": unknown.len(), "failed": failed.len(),
        "final_size": seen.len(), "lost": lost, "unexpected": unexpected,
        "recovered": recovered,
    });
    if validity == Validity::Illegal {
        // The witness: the adds of the lost and unexpected elements, and the final read.
        let bad: BTreeSet<i64> = lost.iter().chain(&unexpected).copied().collect();
        for p in &adds {
            if p.invoke.value.as_i64().is_some_and(|e| bad.contains(&e)) {
                v.witness.push(p.invoke.clone());
                v.witness.extend(p.complete.clone());
            }
        }
        v.witness.push(last.invoke.clone());
        v.witness.extend(last.complete.clone());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::*;
    use serde_json::Value;

    fn history(acked: &[i64], unknown: &[i64], failed: &[i64], final_read: &[i64]) -> Vec<Op> {
        let mut ops = Vec::new();
        let mut t = 0;
        let mut p = 0;
        for (list, kind) in [
            (acked, Kind::Ok),
            (unknown, Kind::Info),
            (failed, Kind::Fail),
        ] {
            for &e in list {
                p += 1;
                t += 2;
                ops.push(inv(p, "add", "", json!(e), t));
                ops.push(op(p, kind, "add", "", json!(e), t + 1));
            }
        }
        ops.push(inv(0, "final-read", "", Value::Null, t + 10));
        ops.push(ok(0, "final-read", "", json!(final_read), t + 11));
        finish(ops)
    }

    #[test]
    fn all_acknowledged_present_is_valid() {
        let v = check(&history(&[1, 2, 3], &[4, 5], &[6], &[1, 2, 3, 5]));
        assert_eq!(v.validity, Validity::Valid, "{v:?}");
        assert_eq!(v.details["recovered"], 1);
    }

    #[test]
    fn lost_write_is_illegal() {
        let v = check(&history(&[1, 2, 3], &[], &[], &[1, 3]));
        assert_eq!(v.validity, Validity::Illegal);
        assert_eq!(v.details["lost"], json!([2]));
        // The add of 2 and the final read.
        assert_eq!(v.witness.len(), 4);
    }

    #[test]
    fn failed_or_never_attempted_element_is_unexpected() {
        let v = check(&history(&[1], &[], &[6], &[1, 6, 42]));
        assert_eq!(v.validity, Validity::Illegal);
        assert_eq!(v.details["unexpected"], json!([6, 42]));
    }

    #[test]
    fn no_final_read_is_unknown() {
        let ops = finish(vec![
            inv(1, "add", "", json!(1), 1),
            ok(1, "add", "", json!(1), 2),
        ]);
        assert_eq!(check(&ops).validity, Validity::Unknown);
    }

    #[test]
    fn generated_histories() {
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let (mut acked, mut unknown, mut failed, mut seen) = (vec![], vec![], vec![], vec![]);
            for e in 0..300 {
                match rng.random_range(0..10) {
                    0 => failed.push(e),
                    1 => {
                        unknown.push(e);
                        if rng.random_bool(0.5) {
                            seen.push(e);
                        }
                    }
                    _ => {
                        acked.push(e);
                        seen.push(e);
                    }
                }
            }
            let h = history(&acked, &unknown, &failed, &seen);
            assert_eq!(check(&h).validity, Validity::Valid, "seed {seed}");
            let gone = acked[rng.random_range(0..acked.len())];
            seen.retain(|&e| e != gone);
            let v = check(&history(&acked, &unknown, &failed, &seen));
            assert_eq!(v.validity, Validity::Illegal, "seed {seed}");
            assert_eq!(v.details["lost"], json!([gone]));
        }
    }
}
