//! JSON merge patches (RFC 7386), the one way apply changes part of a stored value: the same
//! code on every replica, so the merged bytes are the same everywhere.

use serde_json::Value;

/// Applies `patch` to `target` as RFC 7386 says: a patch that is an object merges member by
/// member (null removes a member, an object merges into an object, anything else replaces);
/// any other patch replaces the target whole.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Default::default());
    }
    let Value::Object(fields) = target else {
        unreachable!("made an object above")
    };
    for (name, value) in members {
        if value.is_null() {
            fields.remove(name);
        } else {
            merge_patch(fields.entry(name.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The patch that [`merge_patch`] turns `old` into `new` with, members `new` sets to null aside
/// (a merge patch cannot set null: it removes the member, which readers that default a missing
/// member read the same). Objects in both are compared member by member; anything else that
/// differs is replaced whole.
pub fn merge_diff(old: &Value, new: &Value) -> Value {
    let (Value::Object(before), Value::Object(after)) = (old, new) else {
        return new.clone();
    };
    let mut patch = serde_json::Map::new();
    for (name, value) in after {
        match before.get(name) {
            Some(was) if was == value => {}
            _ if value.is_null() && before.get(name).is_none_or(Value::is_null) => {}
            Some(was) if was.is_object() && value.is_object() => {
                patch.insert(name.clone(), merge_diff(was, value));
            }
            _ => {
                patch.insert(name.clone(), value.clone());
            }
        }
    }
    for name in before.keys() {
        if !after.contains_key(name) {
            patch.insert(name.clone(), Value::Null);
        }
    }
    Value::Object(patch)
}

/// The stored value `stored` with `patch` merged in, or None when either is not a JSON object.
pub fn merge_json(stored: &[u8], patch: &[u8]) -> Option<Vec<u8>> {
    let mut target: Value = serde_json::from_slice(stored).ok()?;
    let patch: Value = serde_json::from_slice(patch).ok()?;
    if !target.is_object() || !patch.is_object() {
        return None;
    }
    merge_patch(&mut target, &patch);
    serde_json::to_vec(&target).ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_rfc_7386_examples_hold() {
        // RFC 7386, appendix A: (target, patch, result).
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (target, patch, result) in cases {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, result, "{target} merged with {patch}");
        }
    }

    /// Strips members set to null, at every depth: what a merge leaves of them.
    fn without_nulls(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| (k.clone(), without_nulls(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// A small random JSON value: objects over a few member names, so that two values share
    /// members often.
    fn random_value(rng: &mut impl rand::Rng, depth: u32) -> Value {
        match rng.random_range(0..if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => json!(rng.random_range(0..3)),
            2 => json!(["a", "b", "c"][rng.random_range(0..3)]),
            3 => json!([rng.random_range(0..2)]),
            _ => {
                let mut m = serde_json::Map::new();
                for name in ["p", "q", "r", "s"] {
                    if rng.random_bool(0.6) {
                        m.insert(name.into(), random_value(rng, depth - 1));
                    }
                }
                Value::Object(m)
            }
        }
    }

    #[test]
    fn a_diff_merged_into_the_old_value_gives_the_new_one() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(7386);
        for _ in 0..5000 {
            let (old, new) = (random_value(&mut rng, 3), random_value(&mut rng, 3));
            let patch = merge_diff(&old, &new);
            let mut merged = old.clone();
            merge_patch(&mut merged, &patch);
            assert_eq!(
                without_nulls(&merged),
                without_nulls(&new),
                "{old} + {patch} should give {new}"
            );
        }
        // Only what changed travels.
        let patch = merge_diff(
            &json!({"state": "assigned", "slot": 3, "node": {"id": "n1", "addr": "a"}}),
            &json!({"state": "running", "slot": 3, "node": {"id": "n1", "addr": "b"}}),
        );
        assert_eq!(patch, json!({"state": "running", "node": {"addr": "b"}}));
    }

    #[test]
    fn stored_values_merge_only_as_objects() {
        let out = merge_json(
            br#"{"state":"assigned","slot":3}"#,
            br#"{"state":"running"}"#,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, json!({"state": "running", "slot": 3}));
        assert_eq!(merge_json(b"not json", br#"{"a":1}"#), None);
        assert_eq!(merge_json(b"[1]", br#"{"a":1}"#), None);
        assert_eq!(merge_json(br#"{"a":1}"#, b"[2]"), None);
    }
}
