//! Classic Swarm's placement expressions: `key==value`, `key!=value`, soft `key==~value` and
//! `key!=~value`; a value is a literal, a glob (`*`, `?`) or a `/regex/` (unanchored, as in
//! classic Swarm). Parsing is strict: a malformed expression is an error naming it.

use std::fmt;

use regex::Regex;

use super::error::ExprError;

/// Which list an expression came from; only changes the wording of errors and reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Constraint,
    Affinity,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Constraint => "constraint",
            Kind::Affinity => "affinity",
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Expr {
    pub key: String,
    /// `!=`: the expression holds when no value matches.
    pub negated: bool,
    /// `~`: a preference that is dropped when no node satisfies it.
    pub soft: bool,
    value: String,
    pattern: Regex,
    /// A glob without wildcards matches exactly its value: a set lookup instead of a scan.
    exact: bool,
}

impl Expr {
    pub fn parse(kind: Kind, text: &str) -> Result<Expr, ExprError> {
        let kind_name = kind.name();
        let expr = || text.to_string();
        let eq = text.find("==");
        let ne = text.find("!=");
        let (at, negated) = match (eq, ne) {
            (Some(e), Some(n)) if n < e => (n, true),
            (Some(e), _) => (e, false),
            (None, Some(n)) => (n, true),
            (None, None) => {
                return Err(ExprError::Operator {
                    kind: kind_name,
                    expr: expr(),
                });
            }
        };
        let key = text[..at].trim();
        let mut value = text[at + 2..].trim();
        let soft = value.starts_with('~');
        if soft {
            value = value[1..].trim_start();
        }
        if value.starts_with('=') || value.starts_with('!') {
            return Err(ExprError::Operator {
                kind: kind_name,
                expr: expr(),
            });
        }
        if !valid_key(key) {
            return Err(ExprError::Key {
                kind: kind_name,
                expr: expr(),
                key: key.to_string(),
            });
        }
        if value.is_empty() {
            return Err(ExprError::EmptyValue {
                kind: kind_name,
                expr: expr(),
            });
        }
        let (source, exact) = match value.strip_prefix('/').and_then(|v| v.strip_suffix('/')) {
            Some(re) if !re.is_empty() => (re.to_string(), false),
            _ => (glob_to_regex(value), !value.contains(['*', '?'])),
        };
        let pattern = Regex::new(&source).map_err(|e| ExprError::Regex {
            kind: kind_name,
            expr: expr(),
            reason: e.to_string(),
        })?;
        Ok(Expr {
            key: key.to_string(),
            negated,
            soft,
            value: value.to_string(),
            pattern,
            exact,
        })
    }

    /// `==`: some value matches; `!=`: none does (so a missing attribute satisfies `!=`).
    pub fn holds<'v>(&self, values: impl IntoIterator<Item = &'v str>) -> bool {
        let matched = values.into_iter().any(|v| self.pattern.is_match(v));
        matched != self.negated
    }

    /// As `holds` over a set of values: `contains` answers for an exact value, `values` lists
    /// the set for a glob or a regex.
    pub fn holds_in<'v, I: IntoIterator<Item = &'v str>>(
        &self,
        contains: impl FnOnce(&str) -> bool,
        values: impl FnOnce() -> I,
    ) -> bool {
        if self.exact {
            contains(&self.value) != self.negated
        } else {
            self.holds(values())
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = if self.negated { "!=" } else { "==" };
        let soft = if self.soft { "~" } else { "" };
        write!(f, "{}{op}{soft}{}", self.key, self.value)
    }
}

fn valid_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

fn glob_to_regex(glob: &str) -> String {
    let mut re = String::from("^");
    for c in glob.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push('$');
    re
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Expr {
        Expr::parse(Kind::Constraint, text).unwrap()
    }

    #[test]
    fn operators_and_soft_forms() {
        let e = c("storage==ssd");
        assert_eq!(
            (e.key.as_str(), e.negated, e.soft),
            ("storage", false, false)
        );
        assert!(e.holds(["ssd"]) && !e.holds(["hdd"]) && !e.holds([]));
        let e = c("storage!=ssd");
        assert!(e.negated && !e.holds(["ssd"]) && e.holds(["hdd"]) && e.holds([]));
        let e = c(" node ==~ node-1 ");
        assert!(e.soft && !e.negated && e.holds(["node-1"]));
        assert_eq!(e.to_string(), "node==~node-1");
        assert!(c("region!=~us-*").soft);
    }

    #[test]
    fn globs_are_anchored_and_literal_otherwise() {
        let e = c("kernelversion==3.1*");
        assert!(e.holds(["3.13.0"]) && !e.holds(["4.3.1"]));
        let e = c("node==node-?");
        assert!(e.holds(["node-2"]) && !e.holds(["node-12"]));
        assert!(
            !c("ip==1.2.3.4").holds(["1x2x3x4"]),
            "a dot is literal in a glob"
        );
    }

    #[test]
    fn holds_in_looks_exact_values_up_and_scans_for_patterns() {
        let set = ["web.1", "web"];
        for (text, want) in [
            ("container==web", true),
            ("container==api", false),
            ("container!=web", false),
            ("container!=api", true),
            ("container==web.*", true),
            ("container==/^we/", true),
            ("container!=/^api/", true),
        ] {
            let e = Expr::parse(Kind::Affinity, text).unwrap();
            assert_eq!(e.holds_in(|v| set.contains(&v), || set), want, "{text}");
            assert_eq!(e.holds(set), want, "{text}");
        }
    }

    #[test]
    fn regex_values_are_unanchored() {
        let e = c("node==/node-[12]/");
        assert!(e.holds(["node-1"]) && e.holds(["my-node-2"]) && !e.holds(["node-3"]));
        assert!(c("os!=/^ubuntu/").holds(["debian"]));
    }

    #[test]
    fn bad_input_is_an_error_naming_the_expression() {
        let cases = [
            ("storage=ssd", "expected KEY==VALUE"),
            ("storage", "expected KEY==VALUE"),
            ("storage===ssd", "expected KEY==VALUE"),
            ("==ssd", "key \"\""),
            ("9lives==x", "key \"9lives\""),
            ("sto rage==x", "key \"sto rage\""),
            ("storage==", "the value is empty"),
            ("storage==~", "the value is empty"),
            ("node==/node-[/", "bad regular expression"),
        ];
        for (text, wanted) in cases {
            let err = Expr::parse(Kind::Constraint, text).unwrap_err().to_string();
            assert!(err.contains(wanted), "{text}: {err}");
            assert!(
                err.contains(&format!("constraint {text:?}")),
                "{text}: {err}"
            );
        }
        let err = Expr::parse(Kind::Affinity, "container").unwrap_err();
        assert!(err
            .to_string()
            .starts_with("invalid affinity \"container\""));
    }
}
