//! Docker's `filters` query parameter, in both shapes clients send: `{"label":["a=b"]}`
//! (docker-py, compose) and `{"label":{"a=b":true}}` (the docker CLI).

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::DockerError;

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses the (already percent-decoded) parameter; None or empty is no filter.
    pub(crate) fn parse(raw: Option<&str>) -> Result<Filters, DockerError> {
        let Some(raw) = raw.filter(|r| !r.trim().is_empty()) else {
            return Ok(Filters::default());
        };
        let bad = |why: String| DockerError::BadRequest(format!("invalid filters {raw:?}: {why}"));
        let value: Value = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        let Value::Object(map) = value else {
            return Err(bad("expected a JSON object".into()));
        };
        let mut out = BTreeMap::new();
        for (key, v) in map {
            let values: Vec<String> = match v {
                Value::Array(items) => items
                    .into_iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(s),
                        other => Err(bad(format!("{key}: {other} is not a string"))),
                    })
                    .collect::<Result<_, _>>()?,
                Value::Object(set) => set
                    .into_iter()
                    .filter(|(_, on)| on.as_bool().unwrap_or(false))
                    .map(|(k, _)| k)
                    .collect(),
                Value::String(s) => vec![s],
                other => return Err(bad(format!("{key}: unexpected {other}"))),
            };
            out.insert(key, values);
        }
        Ok(Filters(out))
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.0.iter()
    }

    pub(crate) fn get(&self, key: &str) -> &[String] {
        self.0.get(key).map_or(&[], Vec::as_slice)
    }

    /// Removes and returns `key`'s values (filters shoal applies itself before forwarding).
    pub(crate) fn take(&mut self, key: &str) -> Vec<String> {
        self.0.remove(key).unwrap_or_default()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes_parse_the_same() {
        let a = Filters::parse(Some(r#"{"label":["a=b","c"]}"#)).unwrap();
        let b = Filters::parse(Some(r#"{"label":{"a=b":true,"c":true}}"#)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.get("label"), ["a=b", "c"]);
        assert!(Filters::parse(None).unwrap().is_empty());
        assert!(Filters::parse(Some("[1]")).is_err());
        assert!(Filters::parse(Some("{bad")).is_err());
    }
}
