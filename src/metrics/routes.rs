//! A request's route as a metrics label: the path with ids and names taken out, and only words
//! the APIs know kept, so that no client can make up new series.

/// Docker API paths (version prefix already stripped): `/containers/{id}/logs`.
pub fn docker(path: &str) -> &'static str {
    const TOP: &[&str] = &[
        "_ping",
        "version",
        "info",
        "events",
        "system",
        "containers",
        "images",
        "networks",
        "volumes",
        "exec",
        "services",
        "tasks",
        "nodes",
        "swarm",
        "secrets",
        "configs",
        "plugins",
        "distribution",
        "session",
        "build",
        "auth",
        "commit",
    ];
    const VERBS: &[&str] = &[
        "json",
        "create",
        "prune",
        "start",
        "stop",
        "restart",
        "kill",
        "wait",
        "logs",
        "attach",
        "resize",
        "top",
        "stats",
        "changes",
        "export",
        "archive",
        "update",
        "rename",
        "pause",
        "unpause",
        "tag",
        "history",
        "push",
        "connect",
        "disconnect",
        "search",
        "load",
        "get",
        "df",
        "exec",
        "init",
        "join",
        "leave",
        "unlock",
        "unlockkey",
    ];
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let Some(top) = TOP.iter().find(|t| **t == segments[0]) else {
        return "other";
    };
    let verb = |s: &str| VERBS.iter().find(|v| **v == s).copied();
    let route = match segments.len() {
        1 => format!("/{top}"),
        2 => match verb(segments[1]) {
            Some(v) => format!("/{top}/{v}"),
            None => format!("/{top}/{{id}}"),
        },
        _ => match verb(segments[segments.len() - 1]) {
            Some(v) => format!("/{top}/{{id}}/{v}"),
            None => format!("/{top}/{{id}}/{{other}}"),
        },
    };
    intern(route)
}

/// Consul-compatible API paths: `/v1/kv`, `/v1/session/create`, `/v1/status/leader`.
pub fn consul(path: &str) -> &'static str {
    const FIXED: &[&str] = &[
        "/v1/txn",
        "/v1/status/leader",
        "/v1/status/peers",
        "/v1/agent/self",
        "/v1/catalog/nodes",
        "/v1/catalog/datacenters",
        "/health",
        "/metrics",
    ];
    const SESSION: &[&str] = &["create", "destroy", "renew", "info", "list", "node"];
    if path == "/v1/kv" || path.starts_with("/v1/kv/") {
        return "/v1/kv";
    }
    if let Some(rest) = path.strip_prefix("/v1/session/") {
        let verb = rest.split('/').next().unwrap_or("");
        return match SESSION.iter().find(|v| **v == verb) {
            Some(v) => intern(format!("/v1/session/{v}")),
            None => "other",
        };
    }
    FIXED
        .iter()
        .find(|f| **f == path)
        .copied()
        .unwrap_or("other")
}

/// One `&'static str` per route: there are finitely many, each leaked once.
fn intern(route: String) -> &'static str {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static ROUTES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut routes = ROUTES.lock().unwrap_or_else(|e| e.into_inner());
    let set = routes.get_or_insert_with(HashSet::new);
    if let Some(r) = set.get(route.as_str()) {
        return r;
    }
    let leaked: &'static str = Box::leak(route.into_boxed_str());
    set.insert(leaked);
    leaked
}
