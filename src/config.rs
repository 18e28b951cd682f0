//! `shoal --config FILE` (or `SHOAL_CONFIG`): a TOML file whose `[manager]`, `[agent]` and `[proxy]`
//! sections hold those commands' long flags (`data-dir = "/var/lib/shoal"`, `join = ["a", "b"]`).
//! Applied before clap parses, as the flags it stands for inserted right after the subcommand, so
//! clap validates them exactly as if typed. A flag given on the command line or through its
//! `SHOAL_*` variable keeps the file's value out, and so does any flag it excludes (`--token-file`
//! excludes the file's `token`): command line > environment > file > built-in default.
//! It never sets `--force-new-cluster`: that is a one-off recovery decision, not configuration.
//! Also home to the join token's reading (`token.rs`).

mod error;
mod token;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use clap::{Arg, Command};

pub use self::error::ConfigError;
pub use self::token::{join_token, read_token_file, TOKEN_FILE_WAIT};

/// The commands a file configures, one section each.
pub const SECTIONS: [&str; 3] = ["manager", "agent", "proxy"];

/// Flags a file may not set.
const COMMAND_LINE_ONLY: [&str; 1] = ["force-new-cluster"];

/// The variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "SHOAL_CONFIG";

/// `args` (argv, program name first) with the flags of the config file's section for the
/// subcommand inserted after it; `args` unchanged without a config file, for a command without
/// a section, or for an action such as `manager remove ID`. `cmd` is the whole CLI (clap's
/// `CommandFactory::command()`); `env` looks up variables (`std::env::var_os` outside tests).
/// Every section of the file is checked, whichever command runs.
pub fn apply_file(
    cmd: &Command,
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Vec<OsString>, ConfigError> {
    let root = scan_root(cmd, &args);
    let path = match root.config {
        Some(path) => path,
        None => match env(CONFIG_ENV).filter(|v| !v.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => return Ok(args),
        },
    };
    let file = load(cmd, &path)?;
    let Some((index, section)) = root
        .subcommand
        .and_then(|i| Some((i, args[i].to_str()?.to_string())))
    else {
        return Ok(args);
    };
    let values = file.get(&section).and_then(toml::Value::as_table);
    let (Some(sub), Some(values)) = (cmd.find_subcommand(&section), values) else {
        return Ok(args);
    };
    let Some(given) = given_flags(cmd, sub, &args[index + 1..], env) else {
        return Ok(args);
    };
    let mut inserted = Vec::new();
    for (key, value) in values {
        let arg = find_long(sub, key).expect("keys were checked by load");
        if excluded(sub, arg, &given) {
            continue;
        }
        inserted.extend(flag_values(key, arg, value));
    }
    let mut out = args;
    out.splice(index + 1..index + 1, inserted);
    Ok(out)
}

/// What precedes the subcommand: `--config`'s value, and where the subcommand is.
struct Root {
    config: Option<PathBuf>,
    subcommand: Option<usize>,
}

fn scan_root(cmd: &Command, args: &[OsString]) -> Root {
    let mut root = Root {
        config: None,
        subcommand: None,
    };
    let mut i = 1;
    while i < args.len() {
        let Some(token) = args[i].to_str() else { break };
        if token == "--" {
            break;
        }
        if let Some(flag) = token.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            let takes_value = find_long(cmd, name).is_some_and(takes_values);
            let value = match inline {
                Some(v) => Some(OsString::from(v)),
                None if takes_value => {
                    i += 1;
                    args.get(i).cloned()
                }
                None => None,
            };
            if name == "config" {
                root.config = value.map(PathBuf::from);
            }
        } else if !token.starts_with('-') || token == "-" {
            root.subcommand = Some(i);
            break;
        }
        i += 1;
    }
    root
}

/// The ids of the subcommand's flags given on its command line or through their variables; None
/// if the command line names an action (`manager remove`, `proxy status`) the file has no part in.
fn given_flags(
    cmd: &Command,
    sub: &Command,
    rest: &[OsString],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Option<BTreeSet<String>> {
    let mut given = BTreeSet::new();
    let mut i = 0;
    while i < rest.len() {
        let Some(token) = rest[i].to_str() else {
            i += 1;
            continue;
        };
        if token == "--" {
            break;
        }
        if let Some(flag) = token.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((name, _)) => (name, true),
                None => (flag, false),
            };
            // Global flags (`--host`) may follow the subcommand too.
            let arg = find_long(sub, name).or_else(|| find_long(cmd, name));
            if let Some(arg) = arg {
                given.insert(arg.get_id().to_string());
                if !inline && takes_values(arg) {
                    i += 1;
                }
            }
        } else if !token.starts_with('-') && sub.find_subcommand(token).is_some() {
            return None;
        }
        i += 1;
    }
    for arg in sub.get_arguments() {
        let set = arg
            .get_env()
            .and_then(|name| name.to_str())
            .and_then(env)
            .is_some_and(|v| !v.is_empty());
        if set {
            given.insert(arg.get_id().to_string());
        }
    }
    Some(given)
}

/// Whether the file's value for `arg` gives way: the flag itself was given, or a flag that
/// excludes it (a conflict either way, or a member of the same one-of group).
fn excluded(sub: &Command, arg: &Arg, given: &BTreeSet<String>) -> bool {
    let id = arg.get_id().as_str();
    if given.contains(id) {
        return true;
    }
    let conflicts = |a: &Arg, b: &str| {
        sub.get_arg_conflicts_with(a)
            .iter()
            .any(|c| c.get_id() == b)
    };
    let grouped = |a: &str, b: &str| {
        sub.get_groups().any(|g| {
            !g.clone().is_multiple() && g.get_args().any(|m| m == a) && g.get_args().any(|m| m == b)
        })
    };
    given.iter().any(|g| {
        conflicts(arg, g)
            || find_id(sub, g).is_some_and(|other| conflicts(other, id))
            || grouped(id, g)
    })
}

/// The flag tokens for one key: `--key=value` (so a value starting with `-` stays a value), one
/// per element of an array, `--key` for `true` of a switch.
fn flag_values(key: &str, arg: &Arg, value: &toml::Value) -> Vec<OsString> {
    if !takes_values(arg) {
        return match value {
            toml::Value::Boolean(true) => vec![format!("--{key}").into()],
            _ => Vec::new(),
        };
    }
    let one =
        |v: &toml::Value| OsString::from(format!("--{key}={}", scalar(v).unwrap_or_default()));
    match value {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        v => vec![one(v)],
    }
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads and checks the whole file: known sections, known keys, values of the right shape.
fn load(cmd: &Command, path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        at: e
            .span()
            .map_or_else(|| "?".to_string(), |span| line_column(&text, span.start)),
        message: e.message().trim().replace('\n', " "),
    })?;
    for (section, values) in &table {
        let toml::Value::Table(values) = values else {
            return Err(ConfigError::NotASection {
                path: path.to_path_buf(),
                key: section.clone(),
            });
        };
        let sub = SECTIONS
            .contains(&section.as_str())
            .then(|| cmd.find_subcommand(section))
            .flatten()
            .ok_or_else(|| ConfigError::UnknownSection {
                path: path.to_path_buf(),
                section: section.clone(),
            })?;
        for (key, value) in values {
            check_key(sub, path, section, key, value)?;
        }
    }
    Ok(table)
}

fn check_key(
    sub: &Command,
    path: &Path,
    section: &str,
    key: &str,
    value: &toml::Value,
) -> Result<(), ConfigError> {
    let bad = |expected: &'static str| ConfigError::BadValue {
        path: path.to_path_buf(),
        section: section.to_string(),
        key: key.to_string(),
        expected,
    };
    if COMMAND_LINE_ONLY.contains(&key) {
        return Err(ConfigError::CommandLineOnly {
            path: path.to_path_buf(),
            section: section.to_string(),
            key: key.to_string(),
        });
    }
    let Some(arg) = find_long(sub, key).filter(|a| a.get_long() != Some("help")) else {
        return Err(ConfigError::UnknownKey {
            path: path.to_path_buf(),
            section: section.to_string(),
            key: key.to_string(),
            known: known_keys(sub).join(", "),
        });
    };
    if !takes_values(arg) {
        return match value {
            toml::Value::Boolean(_) => Ok(()),
            _ => Err(bad("is a switch: true or false")),
        };
    }
    match value {
        toml::Value::Array(_) if !repeatable(arg) => Err(bad("takes one value, not an array")),
        toml::Value::Array(items) if items.iter().any(|v| scalar(v).is_none()) => {
            Err(bad("must be an array of strings or numbers"))
        }
        toml::Value::Array(_) => Ok(()),
        v if scalar(v).is_none() => Err(bad("must be a string, a number or a boolean")),
        _ => Ok(()),
    }
}

/// The keys a section takes: its command's long flags but `--help` and the command-line-only ones.
pub fn known_keys(sub: &Command) -> Vec<&str> {
    sub.get_arguments()
        .filter_map(Arg::get_long)
        .filter(|l| *l != "help" && !COMMAND_LINE_ONLY.contains(l))
        .collect()
}

fn find_long<'a>(cmd: &'a Command, long: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| a.get_long() == Some(long))
}

fn find_id<'a>(cmd: &'a Command, id: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|a| a.get_id() == id)
}

fn takes_values(arg: &Arg) -> bool {
    arg.get_action().takes_values()
}

fn repeatable(arg: &Arg) -> bool {
    matches!(arg.get_action(), clap::ArgAction::Append)
}

/// `line L, column C` (1-based) of a byte offset.
fn line_column(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

/// `std::env::var_os` for [`apply_file`]'s `env`.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(OsStr::new(name))
}
