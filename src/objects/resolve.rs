//! What an operator typed (a name, an id, or an id prefix) to the one object it designates: the
//! rule `shoal service`/`shoal node` follow, as `docker service`/`docker node` do.

use super::Versioned;
use crate::model::{Node, Service};

/// Objects an operator names.
pub trait Named {
    /// `service`, `node`: how errors call it.
    const KIND: &'static str;
    fn id(&self) -> &str;
    fn name(&self) -> &str;
}

impl Named for Service {
    const KIND: &'static str = "service";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// ACL tokens go by their accessor id (a unique prefix of it will do); they have no name.
impl Named for crate::model::AclToken {
    const KIND: &'static str = "ACL token";
    fn id(&self) -> &str {
        &self.accessor_id
    }
    fn name(&self) -> &str {
        &self.accessor_id
    }
}

impl Named for Node {
    const KIND: &'static str = "node";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl<T: Named> Named for Versioned<T> {
    const KIND: &'static str = T::KIND;
    fn id(&self) -> &str {
        self.value.id()
    }
    fn name(&self) -> &str {
        self.value.name()
    }
}

impl<T: Named> Named for &T {
    const KIND: &'static str = T::KIND;
    fn id(&self) -> &str {
        (*self).id()
    }
    fn name(&self) -> &str {
        (*self).name()
    }
}

/// Why a query designates no single object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unresolved {
    #[error("no such {kind}: {query}")]
    NoSuch { kind: &'static str, query: String },
    /// `matches` lists `id (name)` of every match, by id.
    #[error("ambiguous {kind} id prefix {prefix:?}: it matches {}", matches.join(", "))]
    Ambiguous {
        kind: &'static str,
        prefix: String,
        matches: Vec<String>,
    },
}

/// The one object `query` designates: an exact name, else an exact id, else the only id that
/// starts with it.
pub fn resolve<'a, T: Named>(items: &'a [T], query: &str) -> Result<&'a T, Unresolved> {
    let no_such = || Unresolved::NoSuch {
        kind: T::KIND,
        query: query.to_string(),
    };
    if query.is_empty() {
        return Err(no_such());
    }
    if let Some(item) = items.iter().find(|i| i.name() == query) {
        return Ok(item);
    }
    if let Some(item) = items.iter().find(|i| i.id() == query) {
        return Ok(item);
    }
    let mut matches: Vec<&T> = items.iter().filter(|i| i.id().starts_with(query)).collect();
    match matches.len() {
        0 => Err(no_such()),
        1 => Ok(matches.remove(0)),
        _ => {
            matches.sort_by(|a, b| a.id().cmp(b.id()));
            Err(Unresolved::Ambiguous {
                kind: T::KIND,
                prefix: query.to_string(),
                matches: matches
                    .iter()
                    .map(|i| format!("{} ({})", i.id(), i.name()))
                    .collect(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Obj(&'static str, &'static str);

    impl Named for Obj {
        const KIND: &'static str = "service";
        fn id(&self) -> &str {
            self.0
        }
        fn name(&self) -> &str {
            self.1
        }
    }

    const OBJS: [Obj; 4] = [
        Obj("a1b2c3d4e5f6", "web"),
        Obj("a1ffffffffff", "db"),
        Obj("0123456789ab", "a1b2"),
        Obj("web000000000", "cache"),
    ];

    fn find(query: &str) -> Result<&'static str, String> {
        resolve(&OBJS, query)
            .map(|o| o.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn names_win_over_ids_and_prefixes() {
        assert_eq!(
            find("web"),
            Ok("a1b2c3d4e5f6"),
            "a name, though an id starts with it"
        );
        assert_eq!(
            find("a1b2"),
            Ok("0123456789ab"),
            "a name, though it is an id prefix"
        );
        assert_eq!(find("a1ffffffffff"), Ok("a1ffffffffff"));
        assert_eq!(find("a1f"), Ok("a1ffffffffff"));
        assert_eq!(find("0"), Ok("0123456789ab"));
    }

    #[test]
    fn unknown_and_ambiguous_are_clear_errors() {
        assert_eq!(find("nginx"), Err("no such service: nginx".into()));
        assert_eq!(find(""), Err("no such service: ".into()));
        assert_eq!(
            find("a1"),
            Err(
                "ambiguous service id prefix \"a1\": it matches a1b2c3d4e5f6 (web), a1ffffffffff (db)"
                    .into()
            )
        );
    }
}
