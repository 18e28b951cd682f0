//! Who may do what, in one place: the roles each gRPC method admits ([`Method::roles`]) and the
//! key rules of the KV: `/shoal/` holds the cluster's own records and is written only by the
//! control plane's typed paths, never by a user's KV write; a proxy reads its config and writes
//! its own status, nothing else. Services ask here; `docs/security.md` is this table in prose,
//! and a test checks the two agree.

use shoal_tls::Role;

use crate::model::keys;

/// The cluster's own records. Users read them; only shoal's typed paths write them.
pub const RESERVED: &str = "/shoal/";

/// Every gRPC method a manager serves, for the table of who may call it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    KvRange,
    KvPut,
    KvDelete,
    KvTxn,
    KvWatch,
    KvLeaseGrant,
    KvLeaseRevoke,
    KvLeaseKeepAlive,
    ClusterStatus,
    ClusterRemoveManager,
    ClusterRemoveNode,
    ClusterCommitObjects,
    DispatcherRegister,
    DispatcherHeartbeat,
    DispatcherAssignments,
    DispatcherUpdateTaskStatus,
    CaInfo,
    CaJoin,
    CaRenew,
    CaToken,
    CaIssueClient,
    CaClients,
    CaRevokeClient,
    CaRotate,
    /// `GET /metrics` on a manager's or an agent's `--metrics-addr` (HTTPS, not gRPC).
    MetricsRead,
    /// Every method of `shoal.v1.RaftService` (appends, votes, snapshots, forwarded writes,
    /// joins): checked in `shoal-raft` itself, manager certificates only.
    Raft,
}

const MANAGER_CLIENT_PROXY: &[Role] = &[Role::Manager, Role::Client, Role::Proxy];
const OPERATOR: &[Role] = &[Role::Manager, Role::Client];
const WORKER: &[Role] = &[Role::Worker];
const ANYONE: &[Role] = &[];
const EVERY_ROLE: &[Role] = &[Role::Manager, Role::Worker, Role::Proxy, Role::Client];
const MANAGER: &[Role] = &[Role::Manager];

impl Method {
    pub const ALL: &'static [Method] = &[
        Method::KvRange,
        Method::KvPut,
        Method::KvDelete,
        Method::KvTxn,
        Method::KvWatch,
        Method::KvLeaseGrant,
        Method::KvLeaseRevoke,
        Method::KvLeaseKeepAlive,
        Method::ClusterStatus,
        Method::ClusterRemoveManager,
        Method::ClusterRemoveNode,
        Method::ClusterCommitObjects,
        Method::DispatcherRegister,
        Method::DispatcherHeartbeat,
        Method::DispatcherAssignments,
        Method::DispatcherUpdateTaskStatus,
        Method::CaInfo,
        Method::CaJoin,
        Method::CaRenew,
        Method::CaToken,
        Method::CaIssueClient,
        Method::CaClients,
        Method::CaRevokeClient,
        Method::CaRotate,
        Method::MetricsRead,
        Method::Raft,
    ];

    /// The method's gRPC name, as `docs/security.md` lists it.
    pub fn name(self) -> &'static str {
        match self {
            Method::KvRange => "Kv.Range",
            Method::KvPut => "Kv.Put",
            Method::KvDelete => "Kv.Delete",
            Method::KvTxn => "Kv.Txn",
            Method::KvWatch => "Kv.Watch",
            Method::KvLeaseGrant => "Kv.LeaseGrant",
            Method::KvLeaseRevoke => "Kv.LeaseRevoke",
            Method::KvLeaseKeepAlive => "Kv.LeaseKeepAlive",
            Method::ClusterStatus => "Cluster.Status",
            Method::ClusterRemoveManager => "Cluster.RemoveManager",
            Method::ClusterRemoveNode => "Cluster.RemoveNode",
            Method::ClusterCommitObjects => "Cluster.CommitObjects",
            Method::DispatcherRegister => "Dispatcher.Register",
            Method::DispatcherHeartbeat => "Dispatcher.Heartbeat",
            Method::DispatcherAssignments => "Dispatcher.Assignments",
            Method::DispatcherUpdateTaskStatus => "Dispatcher.UpdateTaskStatus",
            Method::CaInfo => "Ca.Info",
            Method::CaJoin => "Ca.Join",
            Method::CaRenew => "Ca.Renew",
            Method::CaToken => "Ca.Token",
            Method::CaIssueClient => "Ca.IssueClient",
            Method::CaClients => "Ca.Clients",
            Method::CaRevokeClient => "Ca.RevokeClient",
            Method::CaRotate => "Ca.Rotate",
            Method::MetricsRead => "GET /metrics",
            Method::Raft => "RaftService.*",
        }
    }

    /// The roles whose certificates may call the method (empty: anyone, even without a
    /// certificate). Scope comes on top: which keys ([`read`], [`write`]), which node.
    pub fn roles(self) -> &'static [Role] {
        match self {
            Method::KvRange
            | Method::KvPut
            | Method::KvWatch
            | Method::KvLeaseGrant
            | Method::KvLeaseRevoke
            | Method::KvLeaseKeepAlive => MANAGER_CLIENT_PROXY,
            Method::KvDelete | Method::KvTxn => OPERATOR,
            Method::ClusterStatus
            | Method::ClusterRemoveManager
            | Method::ClusterRemoveNode
            | Method::ClusterCommitObjects => OPERATOR,
            Method::DispatcherRegister
            | Method::DispatcherHeartbeat
            | Method::DispatcherAssignments
            | Method::DispatcherUpdateTaskStatus => WORKER,
            Method::CaInfo | Method::CaJoin => ANYONE,
            Method::CaRenew => EVERY_ROLE,
            Method::CaToken
            | Method::CaIssueClient
            | Method::CaClients
            | Method::CaRevokeClient
            | Method::CaRotate
            | Method::MetricsRead => OPERATOR,
            Method::Raft => MANAGER,
        }
    }

    /// What the role may do with the method beyond its role check, for the table.
    pub fn scope(self, role: Role) -> Option<&'static str> {
        if !self.roles().is_empty() && !self.roles().contains(&role) {
            return None;
        }
        Some(match (self, role) {
            (Method::KvRange | Method::KvWatch, Role::Proxy) => "`/shoal/proxy/config` only",
            (Method::KvPut, Role::Proxy) => "its own `/shoal/proxy/status/<name>` only",
            (Method::KvLeaseRevoke | Method::KvLeaseKeepAlive, Role::Proxy) => {
                "the lease of its own status only"
            }
            (Method::KvPut | Method::KvDelete | Method::KvTxn, _) => "writes outside `/shoal/`",
            (Method::ClusterCommitObjects, _) => "services, service names and nodes, typed",
            (Method::DispatcherRegister, _) => {
                "its own node only, under a node name no other node holds"
            }
            (
                Method::DispatcherHeartbeat
                | Method::DispatcherAssignments
                | Method::DispatcherUpdateTaskStatus,
                _,
            ) => "its own node only",
            (Method::CaJoin, _) => {
                "with a join token, a new node id or manager name, its own addresses"
            }
            (Method::CaRenew, _) => "its own name and role, its own addresses",
            (Method::CaIssueClient, _) => "under a name not revoked",
            (Method::CaRevokeClient, _) => "client certificates only",
            _ => "yes",
        })
    }
}

/// The table in `docs/security.md`: each method against each role ("—": refused).
pub fn table() -> String {
    let roles = [Role::Manager, Role::Worker, Role::Proxy, Role::Client];
    let mut out = String::from(
        "| method | manager | worker | proxy | client | no certificate |\n|---|---|---|---|---|---|\n",
    );
    for m in Method::ALL {
        out.push_str(&format!("| `{}` |", m.name()));
        for role in roles {
            out.push_str(&format!(" {} |", m.scope(role).unwrap_or("—")));
        }
        let anonymous = if m.roles().is_empty() {
            m.scope(Role::Client).unwrap_or("—")
        } else {
            "—"
        };
        out.push_str(&format!(" {anonymous} |\n"));
    }
    out
}

/// Why a call was refused: the caller's role may call the method, but not on this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("{what} {key:?} refused: keys under {} are the cluster's own records, written only by shoal itself (change services and nodes with `shoal service` and `shoal node`)", RESERVED)]
    Reserved { what: &'static str, key: String },
    #[error("a proxy certificate ({name}) may read only {} and write only its own status at {}{name}, not {what} {key:?}", keys::PROXY_CONFIG, keys::PROXY_STATUS)]
    Proxy {
        name: String,
        what: &'static str,
        key: String,
    },
    #[error("a {role} certificate ({name}) speaks for node {name} only, not for node {node}")]
    OtherNode {
        role: Role,
        name: String,
        node: String,
    },
}

impl From<Denied> for tonic::Status {
    fn from(e: Denied) -> tonic::Status {
        tonic::Status::permission_denied(e.to_string())
    }
}

fn shown(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Whether `key` (a whole prefix when `prefix`) reaches into [`RESERVED`].
pub fn reaches_reserved(key: &[u8], prefix: bool) -> bool {
    key.starts_with(RESERVED.as_bytes()) || (prefix && RESERVED.as_bytes().starts_with(key))
}

/// A user's write (put, delete, txn op; gRPC, Consul HTTP or CLI) of `key` (a whole prefix when
/// `prefix`): refused under `/shoal/`.
pub fn user_write(what: &'static str, key: &[u8], prefix: bool) -> Result<(), Denied> {
    if reaches_reserved(key, prefix) {
        return Err(Denied::Reserved {
            what,
            key: shown(key),
        });
    }
    Ok(())
}

/// The status key of proxy `name`.
pub fn proxy_status_key(name: &str) -> String {
    format!("{}{name}", keys::PROXY_STATUS)
}

/// A read (range or watch) of `key` by a certificate of `role` named `name`.
pub fn read(role: Role, name: &str, key: &[u8], prefix: bool) -> Result<(), Denied> {
    if role == Role::Proxy && (prefix || key != keys::PROXY_CONFIG.as_bytes()) {
        return Err(Denied::Proxy {
            name: name.to_string(),
            what: if prefix { "reading prefix" } else { "reading" },
            key: shown(key),
        });
    }
    Ok(())
}

/// A KV write (put, or delete when `prefix` or `what` says so) by `role`/`name`: a proxy writes
/// its own status key only (the one key under `/shoal/` a KV write may reach, since the proxy's
/// status is its own); everyone else anything outside `/shoal/`.
pub fn write(
    role: Role,
    name: &str,
    what: &'static str,
    key: &[u8],
    prefix: bool,
) -> Result<(), Denied> {
    if role == Role::Proxy {
        if what == "put" && !prefix && key == proxy_status_key(name).as_bytes() {
            return Ok(());
        }
        return Err(Denied::Proxy {
            name: name.to_string(),
            what,
            key: shown(key),
        });
    }
    user_write(what, key, prefix)
}

/// A worker's dispatcher call about `node`: only its own.
pub fn own_node(role: Role, name: &str, node: &str) -> Result<(), Denied> {
    if name != node {
        return Err(Denied::OtherNode {
            role,
            name: name.to_string(),
            node: node.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shoal_keys_and_prefixes_over_them_are_reserved() {
        for (key, prefix) in [
            ("/shoal/leader/term", false),
            ("/shoal/", true),
            ("/shoal/services/", true),
            ("/shoal", true),
            ("/", true),
            ("", true),
        ] {
            let e = user_write("put", key.as_bytes(), prefix).unwrap_err();
            assert!(matches!(e, Denied::Reserved { .. }), "{key} {prefix}");
        }
        for (key, prefix) in [
            ("app/x", false),
            ("/shoal", false),
            ("/shoalx", true),
            ("a", true),
        ] {
            assert_eq!(user_write("put", key.as_bytes(), prefix), Ok(()), "{key}");
        }
        let msg = user_write("put", b"/shoal/leader/term", false)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("\"/shoal/leader/term\""), "{msg}");
    }

    #[test]
    fn a_proxy_reads_its_config_and_writes_its_own_status_only() {
        let r = Role::Proxy;
        assert_eq!(read(r, "p1", keys::PROXY_CONFIG.as_bytes(), false), Ok(()));
        assert!(read(r, "p1", keys::PROXY_CONFIG.as_bytes(), true).is_err());
        assert!(read(r, "p1", b"/shoal/services/", true).is_err());
        assert!(read(r, "p1", b"app/x", false).is_err());
        assert_eq!(
            write(r, "p1", "put", b"/shoal/proxy/status/p1", false),
            Ok(())
        );
        assert!(write(r, "p1", "put", b"/shoal/proxy/status/p2", false).is_err());
        assert!(write(r, "p1", "delete", b"/shoal/proxy/status/p1", false).is_err());
        assert!(write(r, "p1", "put", b"app/x", false).is_err());
        // Operators: anything outside /shoal/, not even another proxy's status.
        assert_eq!(read(Role::Client, "admin", b"/shoal/", true), Ok(()));
        assert_eq!(write(Role::Client, "admin", "put", b"a", false), Ok(()));
        assert!(write(
            Role::Client,
            "admin",
            "put",
            b"/shoal/proxy/status/p1",
            false
        )
        .is_err());
        assert!(write(Role::Manager, "m", "put", b"/shoal/leader/term", false).is_err());
    }

    #[test]
    fn a_worker_speaks_for_its_own_node() {
        assert_eq!(own_node(Role::Worker, "n1", "n1"), Ok(()));
        let e = own_node(Role::Worker, "n1", "n2").unwrap_err().to_string();
        assert!(e.contains("node n1 only, not for node n2"), "{e}");
    }

    #[test]
    fn the_documented_table_is_this_one() {
        let doc = include_str!("../../docs/security.md");
        assert!(
            doc.contains(&table()),
            "docs/security.md must hold policy::table() as it is now:\n{}",
            table()
        );
    }

    #[test]
    fn every_method_has_roles_and_a_name() {
        for m in Method::ALL {
            assert!(!m.name().is_empty());
            for role in [Role::Manager, Role::Worker, Role::Proxy, Role::Client] {
                assert_eq!(
                    m.scope(role).is_some(),
                    m.roles().is_empty() || m.roles().contains(&role),
                    "{m:?} {role}"
                );
            }
        }
        // The workers' token must never reach the KV or cluster admin.
        for m in [Method::KvPut, Method::KvTxn, Method::ClusterRemoveManager] {
            assert!(!m.roles().contains(&Role::Worker), "{m:?}");
        }
        for m in [Method::KvDelete, Method::KvTxn, Method::ClusterStatus] {
            assert!(!m.roles().contains(&Role::Proxy), "{m:?}");
        }
    }
}
