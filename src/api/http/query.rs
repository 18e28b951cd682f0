//! Query strings as Consul reads them: flags without values (`?recurse`), Go durations
//! (`wait=1m30s`), consistency modes and blocking-query parameters. Unknown parameters are
//! refused: a misspelt `?recurce` on a DELETE must not silently delete one key instead of a tree.

use std::time::Duration;

use percent_encoding::percent_decode_str;

use super::error::ApiError;

/// The only datacenter a shoal cluster is.
pub(crate) const DATACENTER: &str = "dc1";
/// Consul's default and longest wait of a blocking query.
const DEFAULT_WAIT: Duration = Duration::from_secs(5 * 60);
const MAX_WAIT: Duration = Duration::from_secs(10 * 60);

/// Parameters every Consul endpoint accepts; shoal has no ACLs, namespaces or partitions, so
/// they are accepted and ignored (`dc` must name the one datacenter).
const GENERIC: &[&str] = &[
    "dc",
    "token",
    "ns",
    "partition",
    "peer",
    "pretty",
    "cached",
    "near",
    "filter",
    "node-meta",
];

#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

/// Decodes one URL component (`+` is a space in a query).
pub(crate) fn decode(s: &str, plus_is_space: bool) -> Result<String, ApiError> {
    let s = if plus_is_space {
        s.replace('+', " ")
    } else {
        s.to_string()
    };
    percent_decode_str(&s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ApiError::BadRequest(format!("{s:?} is not valid UTF-8 once decoded")))
}

impl Query {
    /// Parses `raw` and refuses parameters outside `allowed` and the generic ones.
    pub(crate) fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            pairs.push((decode(k, true)?, decode(v, true)?));
        }
        let q = Query { pairs };
        if let Some((k, _)) = q
            .pairs
            .iter()
            .find(|(k, _)| !allowed.contains(&k.as_str()) && !GENERIC.contains(&k.as_str()))
        {
            let mut known: Vec<&str> = allowed.to_vec();
            known.sort_unstable();
            return Err(ApiError::BadRequest(format!(
                "unknown query parameter {k:?}; this endpoint accepts {}",
                if known.is_empty() {
                    "none besides dc and token".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
        if let Some(dc) = q.get("dc") {
            if !dc.is_empty() && dc != DATACENTER {
                // Consul's answer for a datacenter it cannot route to.
                return Err(ApiError::Internal(format!(
                    "No path to datacenter {dc:?}: a shoal cluster is the single datacenter {DATACENTER:?}"
                )));
            }
        }
        Ok(q)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A numeric parameter; `what` names it in Consul's error message ("Invalid flags").
    pub(crate) fn u64(&self, name: &str, what: &str) -> Result<Option<u64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::BadRequest(format!(
                    "Invalid {what}: {v:?} is not a non-negative integer"
                ))
            }),
        }
    }

    /// Whether the read may be served from this replica (`?stale`); the default and
    /// `?consistent` are both linearizable reads here.
    pub(crate) fn stale(&self) -> Result<bool, ApiError> {
        let stale = self.has("stale");
        if stale && self.has("consistent") {
            return Err(ApiError::BadRequest(
                "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
            ));
        }
        Ok(stale)
    }

    /// `?index=N[&wait=D]`: block until something changes after index N, for at most D
    /// (default 5m, capped at 10m as Consul does). None when the query does not block.
    pub(crate) fn blocking(&self) -> Result<Option<(u64, Duration)>, ApiError> {
        let index = match self.get("index") {
            None => None,
            Some(v) => Some(v.parse::<u64>().map_err(|_| {
                ApiError::BadRequest(format!(
                    "Invalid index: {v:?} is not a non-negative integer"
                ))
            })?),
        };
        let wait = match self.get("wait") {
            None => DEFAULT_WAIT,
            Some(v) => crate::duration::parse_unbounded(v)
                .map_err(|_| {
                    ApiError::BadRequest(format!(
                        "Invalid wait time: {v:?} is not a duration such as 30s, 5m or 1m30s"
                    ))
                })?
                .min(MAX_WAIT),
        };
        Ok(index.filter(|&i| i > 0).map(|i| (i, wait)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = Query::parse(
            Some("recurse&index=5&wait=1m&dc=dc1"),
            &["recurse", "index", "wait"],
        )
        .unwrap();
        assert!(q.has("recurse"));
        assert_eq!(q.blocking().unwrap(), Some((5, Duration::from_secs(60))));
        let q = Query::parse(Some("index=5&wait=1h"), &["index", "wait"]).unwrap();
        assert_eq!(q.blocking().unwrap(), Some((5, MAX_WAIT)));
        assert!(matches!(
            Query::parse(Some("recurce"), &["recurse"]),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            Query::parse(Some("dc=eu"), &[]),
            Err(ApiError::Internal(_))
        ));
        let q = Query::parse(Some("index=x"), &["index"]).unwrap();
        assert!(q.blocking().is_err());
        // Extreme numbers are parsed or refused, never overflowed.
        let q = Query::parse(
            Some("index=18446744073709551615&wait=1s"),
            &["index", "wait"],
        );
        assert_eq!(
            q.unwrap().blocking().unwrap(),
            Some((u64::MAX, Duration::from_secs(1)))
        );
        for bad in [
            "index=18446744073709551616",
            "index=-1",
            "index=1&wait=9999999999999999999999999999999999999h",
            "index=1&wait=1e400s",
            "index=1&wait=-1s",
        ] {
            let q = Query::parse(Some(bad), &["index", "wait"]).unwrap();
            assert!(
                matches!(q.blocking(), Err(ApiError::BadRequest(_))),
                "{bad}"
            );
        }
        let q = Query::parse(Some("index=1&wait=9999999999999s"), &["index", "wait"]).unwrap();
        assert_eq!(q.blocking().unwrap(), Some((1, MAX_WAIT)));
        let q = Query::parse(Some("stale&consistent"), &["stale", "consistent"]).unwrap();
        assert!(q.stale().is_err());
    }
}

#[cfg(test)]
mod random {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// Random query strings, numbers at and past their limits included: each parses or is a
    /// 400, and a blocking wait is never longer than the cap.
    #[test]
    fn random_queries_are_parsed_or_refused_never_a_panic() {
        const PARTS: &[&str] = &[
            "index",
            "wait",
            "=",
            "&",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "0",
            "1",
            "9999999999999",
            "e400",
            ".",
            "h",
            "m",
            "s",
            "ms",
            "%",
            "%ff",
            "+",
            "1.5",
            "recurse",
            "dc",
            "dc1",
            "stale",
            "consistent",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(19);
        for _ in 0..20_000 {
            let raw: String = (0..rng.random_range(0..12))
                .map(|_| PARTS[rng.random_range(0..PARTS.len())])
                .collect();
            let Ok(q) = Query::parse(
                Some(&raw),
                &["index", "wait", "recurse", "stale", "consistent"],
            ) else {
                continue;
            };
            let _ = q.stale();
            let _ = q.u64("index", "index");
            match q.blocking() {
                Ok(Some((_, wait))) => assert!(wait <= MAX_WAIT, "{raw:?}"),
                Ok(None) => {}
                Err(e) => assert!(matches!(e, ApiError::BadRequest(_)), "{raw:?}: {e}"),
            }
        }
    }
}
