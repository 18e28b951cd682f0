//! Where cluster objects live in the key space. Every writer and reader goes through these
//! helpers so the layout is written down once.

pub const NODES: &str = "/shoal/nodes/";
pub const SERVICES: &str = "/shoal/services/";
pub const TASKS: &str = "/shoal/tasks/";

pub fn node(id: &str) -> String {
    format!("{NODES}{id}")
}

pub fn service(id: &str) -> String {
    format!("{SERVICES}{id}")
}

pub fn task(id: &str) -> String {
    format!("{TASKS}{id}")
}

/// The id in a key under `prefix` (one of the constants above); None for other keys and for
/// keys nested deeper than one level.
pub fn id_of<'k>(prefix: &str, key: &'k str) -> Option<&'k str> {
    key.strip_prefix(prefix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_to_ids() {
        assert_eq!(node("n1"), "/shoal/nodes/n1");
        assert_eq!(service("s1"), "/shoal/services/s1");
        assert_eq!(task("t1"), "/shoal/tasks/t1");
        assert_eq!(id_of(TASKS, &task("t1")), Some("t1"));
        assert_eq!(id_of(TASKS, &node("t1")), None);
        assert_eq!(id_of(NODES, "/shoal/nodes/"), None);
        assert_eq!(id_of(NODES, "/shoal/nodes/a/b"), None);
    }
}
