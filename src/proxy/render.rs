//! Proxy configs from a `ProxyModel` through minijinja templates: the built-in nginx and haproxy
//! templates (`templates/`), or an operator's own template by path (`shoal proxy --template`),
//! which sees the same context: `generation`, `hosts` (the model's hosts as JSON), `errors`,
//! `http_port`, `https_port`, `run_dir`, and the filter `format_root` (`app` → `/app/`). A model
//! with a value that is not plain (`proxy::safe`) is refused, never rendered.

use std::str::FromStr;

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use crate::model::ProxyModel;

const NGINX: &str = include_str!("templates/nginx.conf.j2");
const HAPROXY: &str = include_str!("templates/haproxy.cfg.j2");

/// Which proxy a config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyKind {
    Nginx,
    Haproxy,
}

impl FromStr for ProxyKind {
    type Err = RenderError;

    fn from_str(s: &str) -> Result<Self, RenderError> {
        match s {
            "nginx" => Ok(ProxyKind::Nginx),
            "haproxy" => Ok(ProxyKind::Haproxy),
            other => Err(RenderError::Kind(other.to_string())),
        }
    }
}

impl std::fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
        })
    }
}

/// Where the rendered proxy listens and keeps its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RenderOptions {
    pub http_port: u16,
    pub https_port: u16,
    /// For an nginx run by an unprivileged user: pid, logs and temp files go here (absolute).
    pub run_dir: Option<String>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            http_port: 80,
            https_port: 443,
            run_dir: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("unknown proxy kind {0:?}: expected nginx or haproxy")]
    Kind(String),
    #[error("template {name}: {reason}")]
    Template { name: String, reason: String },
    /// A value of the model could change the config's structure (`proxy::safe`).
    #[error("refusing to render an unsafe proxy model: {0}")]
    Unsafe(String),
}

#[derive(Serialize)]
struct Context<'a> {
    generation: u64,
    hosts: &'a [crate::model::ProxyHost],
    errors: &'a [String],
    http_port: u16,
    https_port: u16,
    run_dir: &'a Option<String>,
}

/// Renders `model` for `kind`, with the built-in template or `template` (the text of an
/// operator's template; `template_name` names it in errors).
pub fn render(
    kind: ProxyKind,
    model: &ProxyModel,
    generation: u64,
    options: &RenderOptions,
    template: Option<(&str, &str)>,
) -> Result<String, RenderError> {
    // Whoever wrote the model (the leader, or anyone who could write the record), a value that
    // is not plain never reaches a config.
    super::safe::check_model(model).map_err(RenderError::Unsafe)?;
    let (name, source) = match template {
        Some((name, source)) => (name.to_string(), source),
        None => match kind {
            ProxyKind::Nginx => ("nginx.conf.j2".to_string(), NGINX),
            ProxyKind::Haproxy => ("haproxy.cfg.j2".to_string(), HAPROXY),
        },
    };
    let error = |e: minijinja::Error| RenderError::Template {
        name: name.clone(),
        reason: match e.line() {
            Some(line) => format!("line {line}: {e}"),
            None => e.to_string(),
        },
    };
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.add_filter("format_root", |root: String| -> String {
        let root = root.trim_matches('/');
        if root.is_empty() {
            "/".to_string()
        } else {
            format!("/{root}/")
        }
    });
    env.add_template(&name, source).map_err(error)?;
    let context = Context {
        generation,
        hosts: &model.hosts,
        errors: &model.errors,
        http_port: options.http_port,
        https_port: options.https_port,
        run_dir: &options.run_dir,
    };
    let template = env.get_template(&name).map_err(error)?;
    template.render(&context).map_err(error)
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
