//! `Cluster.CommitObjects`: an operator's typed writes of cluster objects (the CLI's `service`
//! commands, `node update` and `acl token`), the one way a client writes under `/shoal/`. Each
//! put must be a valid object of its key: a service, a service name holding an id, a node, of
//! which only what an operator owns is taken (availability and labels, never a node's status or
//! address, which its agent reports), or an ACL token of the HTTP API. Tasks, the leader's term,
//! the CA, revocations: never written here.

use shoal_raft::{Compare, CompareOp, CompareTarget, Op, Store, Txn};

use crate::model::{is_sha256_hex, keys, AclToken, Node, Service};

/// Why a typed commit was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TypedError {
    #[error(
        "{what} {key:?} refused: a typed commit writes services, service names, nodes and ACL tokens only"
    )]
    NotAnObject { what: &'static str, key: String },
    #[error("{key}: {reason}")]
    Bad { key: String, reason: String },
    #[error("no node {0}: nodes are created by their agents")]
    NoNode(String),
    #[error(transparent)]
    Store(#[from] shoal_raft::StoreError),
}

impl From<TypedError> for tonic::Status {
    fn from(e: TypedError) -> tonic::Status {
        match e {
            TypedError::NotAnObject { .. } => tonic::Status::permission_denied(e.to_string()),
            TypedError::Bad { .. } => tonic::Status::invalid_argument(e.to_string()),
            TypedError::NoNode(_) => tonic::Status::not_found(e.to_string()),
            TypedError::Store(s) => s.into(),
        }
    }
}

fn bad(key: &str, reason: impl std::fmt::Display) -> TypedError {
    TypedError::Bad {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

/// What one write of a typed commit is.
#[derive(Debug, PartialEq)]
enum Object {
    Service,
    ServiceName,
    Node(Box<Node>),
    AclToken,
}

/// Checks one put or delete; a node put is returned for the check against the stored node.
fn classify(op: &Op) -> Result<Option<Object>, TypedError> {
    let (what, key, prefix) = match op {
        Op::Range(_) => return Ok(None),
        Op::Put(p) => ("put", &p.key, false),
        Op::Merge(m) => ("merge", &m.key, false),
        Op::Delete(d) => ("delete", &d.key, d.prefix),
    };
    let key = String::from_utf8_lossy(key).into_owned();
    let refused = || TypedError::NotAnObject {
        what,
        key: key.clone(),
    };
    if prefix {
        return Err(refused());
    }
    let (service, name, node) = (
        keys::id_of(keys::SERVICES, &key),
        keys::id_of(keys::SERVICE_NAMES, &key),
        keys::id_of(keys::NODES, &key),
    );
    let acl = keys::id_of(keys::ACL_TOKENS, &key).filter(|h| is_sha256_hex(h));
    let Op::Put(p) = op else {
        // Services go with their names; nodes only through `Cluster.RemoveNode`.
        return match (service, name, acl) {
            (Some(_), _, _) => Ok(Some(Object::Service)),
            (_, Some(_), _) => Ok(Some(Object::ServiceName)),
            (_, _, Some(_)) => Ok(Some(Object::AclToken)),
            _ => Err(refused()),
        };
    };
    if p.lease != 0 || p.lock != Default::default() {
        return Err(bad(&key, "cluster objects carry no lease and no lock"));
    }
    if let Some(id) = service {
        let s: Service = serde_json::from_slice(&p.value).map_err(|e| bad(&key, e))?;
        if s.id != id {
            return Err(bad(&key, format!("holds service {:?}", s.id)));
        }
        return Ok(Some(Object::Service));
    }
    if name.is_some() {
        let id = std::str::from_utf8(&p.value).map_err(|e| bad(&key, e))?;
        if id.is_empty() || id.contains('/') {
            return Err(bad(&key, format!("{id:?} is not a service id")));
        }
        return Ok(Some(Object::ServiceName));
    }
    if let Some(hash) = acl {
        let t: AclToken = serde_json::from_slice(&p.value).map_err(|e| bad(&key, e))?;
        t.validate().map_err(|e| bad(&key, e))?;
        if t.secret_sha256 != hash {
            return Err(bad(&key, "holds the token of another secret"));
        }
        return Ok(Some(Object::AclToken));
    }
    if let Some(id) = node {
        let n: Node = serde_json::from_slice(&p.value).map_err(|e| bad(&key, e))?;
        if n.id != id {
            return Err(bad(&key, format!("holds node {:?}", n.id)));
        }
        return Ok(Some(Object::Node(Box::new(n))));
    }
    Err(refused())
}

/// Checks `txn` as a typed commit and returns it ready to apply. A node put keeps only what an
/// operator owns (availability, operator labels): they are set on the node as stored, and the
/// write is conditioned on that read, so an agent's newer report is never overwritten.
pub(crate) async fn check(store: &Store, mut txn: Txn) -> Result<Txn, TypedError> {
    let mut conditions = Vec::new();
    for op in txn.success.iter_mut().chain(txn.failure.iter_mut()) {
        let Some(Object::Node(wanted)) = classify(op)? else {
            continue;
        };
        let key = keys::node(&wanted.id);
        let range = shoal_raft::Range {
            key: key.clone().into_bytes(),
            ..Default::default()
        };
        let (found, _) = store.range(&range, false).await?;
        let Some(kv) = found.kvs.into_iter().next() else {
            return Err(TypedError::NoNode(wanted.id.clone()));
        };
        let mut node: Node = serde_json::from_slice(&kv.value).map_err(|e| bad(&key, e))?;
        node.availability = wanted.availability;
        node.operator_labels = wanted.operator_labels;
        if let Op::Put(p) = op {
            p.value = serde_json::to_vec(&node).map_err(|e| bad(&key, e))?;
        }
        conditions.push(Compare {
            key: key.into_bytes(),
            target: CompareTarget::ModRevision(kv.mod_revision),
            op: CompareOp::Equal,
        });
    }
    txn.compare.extend(conditions);
    Ok(txn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::{Delete, Put};

    fn put(key: &str, value: &[u8]) -> Op {
        Op::Put(Put {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            ..Default::default()
        })
    }

    fn delete(key: &str, prefix: bool) -> Op {
        Op::Delete(Delete {
            key: key.as_bytes().to_vec(),
            prefix,
            prev_kv: false,
        })
    }

    #[test]
    fn only_services_their_names_and_nodes_are_objects() {
        for op in [
            put(keys::LEADER_TERM, b"99999999999999999999"),
            put("/shoal/tasks/t1", b"{}"),
            put("/shoal/revoked/worker/n1", b"1"),
            put("app/x", b"1"),
            delete("/shoal/revoked/", true),
            delete("/shoal/services/", true),
            delete("/shoal/nodes/n1", false),
        ] {
            assert!(
                matches!(classify(&op), Err(TypedError::NotAnObject { .. })),
                "{op:?}"
            );
        }
        assert_eq!(
            classify(&delete("/shoal/services/s1", false)).unwrap(),
            Some(Object::Service)
        );
        assert_eq!(
            classify(&put("/shoal/service-names/web", b"s1")).unwrap(),
            Some(Object::ServiceName)
        );
        let hash = crate::model::secret_sha256("secret");
        let token = serde_json::json!({
            "accessor_id": "a1", "secret_sha256": hash, "created_ms": 1,
            "keys": [{"prefix": "app/", "access": "write"}],
        });
        let key = keys::acl_token(&hash);
        assert_eq!(
            classify(&put(&key, token.to_string().as_bytes())).unwrap(),
            Some(Object::AclToken)
        );
        assert_eq!(
            classify(&delete(&key, false)).unwrap(),
            Some(Object::AclToken)
        );
        // Another secret's key, a key that is no hash, a prefix delete: refused.
        let other = keys::acl_token(&crate::model::secret_sha256("other"));
        let err = classify(&put(&other, token.to_string().as_bytes())).unwrap_err();
        assert!(matches!(err, TypedError::Bad { .. }), "{err}");
        for op in [
            put("/shoal/acl/tokens/nothex", token.to_string().as_bytes()),
            delete(keys::ACL_TOKENS, true),
        ] {
            assert!(
                matches!(classify(&op), Err(TypedError::NotAnObject { .. })),
                "{op:?}"
            );
        }
    }

    #[test]
    fn a_put_must_be_a_valid_object_of_its_key() {
        let err = classify(&put("/shoal/services/s1", b"{")).unwrap_err();
        assert!(matches!(err, TypedError::Bad { .. }), "{err}");
        assert!(err.to_string().starts_with("/shoal/services/s1: "), "{err}");
        let err = classify(&put("/shoal/service-names/web", b"")).unwrap_err();
        assert!(matches!(err, TypedError::Bad { .. }), "{err}");
        let leased = Op::Put(Put {
            key: b"/shoal/service-names/web".to_vec(),
            value: b"s1".to_vec(),
            lease: 7,
            ..Default::default()
        });
        assert!(matches!(classify(&leased), Err(TypedError::Bad { .. })));
    }
}
