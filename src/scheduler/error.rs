//! Errors of the scheduler boundary: a constraint or affinity that does not parse. Each names
//! the expression, so the CLI can print it as one clear line.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error(
        "invalid {kind} {expr:?}: expected KEY==VALUE, KEY!=VALUE, KEY==~VALUE or KEY!=~VALUE"
    )]
    Operator { kind: &'static str, expr: String },

    #[error("invalid {kind} {expr:?}: key {key:?} must start with a letter or '_' and hold only letters, digits, '.', '-' and '_'")]
    Key {
        kind: &'static str,
        expr: String,
        key: String,
    },

    #[error("invalid {kind} {expr:?}: the value is empty")]
    EmptyValue { kind: &'static str, expr: String },

    #[error("invalid {kind} {expr:?}: bad regular expression: {reason}")]
    Regex {
        kind: &'static str,
        expr: String,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduling strategy {0:?}: expected spread, binpack or random")]
pub struct UnknownStrategy(pub String);
