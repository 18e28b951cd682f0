//! The Docker API's reads and writes of cluster objects: linearizable reads (a follower answers
//! as the leader would), conditioned txns for every change, and waiting for the cluster to reach
//! a state (a container RUNNING, a task ended) by re-reading at each change of `/shoal/`.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_raft::{
    Command, Compare, CompareOp, CompareTarget, Delete, Op, Put, Range, Response, Store, Txn,
};

use super::error::DockerError;
use super::view::View;
use crate::model::{keys, Service};
use crate::objects::ObjectStore;

/// `wait_for` looks again at least this often.
const RECHECK: Duration = Duration::from_secs(1);
/// Read-modify-write attempts before giving up on a contended object.
const ATTEMPTS: u32 = 5;

#[derive(Clone)]
pub(crate) struct Objects {
    pub store: Store,
    pub index: crate::objects::Objects,
}

impl Objects {
    /// Every node, service and task, as of now (a barrier, then this manager's index).
    pub(crate) async fn view(&self) -> Result<View, DockerError> {
        Ok(View::new(self.index.barrier().await?))
    }

    /// Writes `service` with its name key, only if the name is free; false if it is taken.
    pub(crate) async fn create_named(
        &self,
        key: String,
        name_key: String,
        id: &str,
        value: &impl Serialize,
    ) -> Result<bool, DockerError> {
        let txn = Txn {
            compare: vec![exists(&name_key, false), exists(&key, false)],
            success: vec![
                put_raw(&name_key, id.as_bytes().to_vec()),
                put_json(&key, value),
            ],
            failure: Vec::new(),
        };
        self.commit(txn).await
    }

    /// Applies `change` to the service `id` by a read-modify-write conditioned on the revision
    /// read; `change` returning false writes nothing. Returns the service as written (or read).
    pub(crate) async fn update_service(
        &self,
        id: &str,
        change: impl FnMut(&mut Service) -> Result<bool, DockerError>,
    ) -> Result<Service, DockerError> {
        let missing = || DockerError::no_such_container(id);
        self.update_at(&keys::service(id), "container", None, missing, change)
            .await
    }

    /// Applies `change` to the object at `key` by a read-modify-write conditioned on the
    /// revision read. With `expected` (swarm mode's `?version=`), the object must still be at
    /// that revision, or it is a 409 and nothing is written; without, a contended write is
    /// tried again. `change` returning false writes nothing.
    pub(crate) async fn update_at<T: Serialize + DeserializeOwned>(
        &self,
        key: &str,
        kind: &str,
        expected: Option<u64>,
        missing: impl Fn() -> DockerError,
        mut change: impl FnMut(&mut T) -> Result<bool, DockerError>,
    ) -> Result<T, DockerError> {
        let stale = |rev: u64, at: u64| {
            DockerError::Conflict(format!(
                "update out of sequence: the {kind} is at version {rev}, not {at}; \
                 inspect it again and retry"
            ))
        };
        for _ in 0..ATTEMPTS {
            let Some((mut value, rev)) = self.get::<T>(key).await? else {
                return Err(missing());
            };
            if let Some(at) = expected.filter(|at| *at != rev) {
                return Err(stale(rev, at));
            }
            if !change(&mut value)? {
                return Ok(value);
            }
            let txn = Txn {
                compare: vec![unchanged(key, rev)],
                success: vec![put_json(key, &value)],
                failure: Vec::new(),
            };
            if self.commit(txn).await? {
                return Ok(value);
            }
            if let Some(at) = expected {
                let now = self.get::<T>(key).await?.map_or(0, |(_, rev)| rev);
                return Err(stale(now, at));
            }
        }
        Err(DockerError::Conflict(format!(
            "{kind} {key} changed {ATTEMPTS} times while being updated; try again"
        )))
    }

    /// Renames the service `id` from `old` to `new`: its record and name keys in one txn.
    /// False if `new` is taken.
    pub(crate) async fn rename_service(
        &self,
        id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool, DockerError> {
        let key = keys::service(id);
        let (old_key, new_key) = (keys::service_name(old), keys::service_name(new));
        for _ in 0..ATTEMPTS {
            let Some((mut service, rev)) = self.get::<Service>(&key).await? else {
                return Err(DockerError::no_such_container(id));
            };
            if service.name != old {
                return Err(DockerError::Conflict(format!(
                    "container {id} was renamed to {} meanwhile",
                    service.name
                )));
            }
            service.name = new.to_string();
            let txn = Txn {
                compare: vec![unchanged(&key, rev), exists(&new_key, false)],
                success: vec![
                    put_json(&key, &service),
                    delete(&old_key),
                    put_raw(&new_key, id.as_bytes().to_vec()),
                ],
                failure: Vec::new(),
            };
            if self.commit(txn).await? {
                return Ok(true);
            }
            if self.get_raw_exists(&new_key).await? {
                return Ok(false);
            }
        }
        Err(DockerError::Conflict(format!(
            "container {id} changed {ATTEMPTS} times while being renamed; try again"
        )))
    }

    /// Removes an object and its name key (if the name key still designates it).
    pub(crate) async fn delete_named(
        &self,
        key: String,
        name_key: String,
        id: &str,
    ) -> Result<bool, DockerError> {
        let txn = Txn {
            compare: vec![exists(&key, true), value_is(&name_key, id)],
            success: vec![delete(&key), delete(&name_key)],
            failure: Vec::new(),
        };
        if self.commit(txn).await? {
            return Ok(true);
        }
        // The name key is not (or no longer) the object's: remove the object alone.
        let txn = Txn {
            compare: vec![exists(&key, true)],
            success: vec![delete(&key)],
            failure: Vec::new(),
        };
        self.commit(txn).await
    }

    /// One key's value and mod revision.
    pub(crate) async fn get<T: DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<(T, u64)>, DockerError> {
        let range = Range {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let (result, _) = self.store.range(&range, false).await?;
        let Some(kv) = result.kvs.into_iter().next() else {
            return Ok(None);
        };
        let value = serde_json::from_slice(&kv.value)
            .map_err(|e| DockerError::Internal(format!("{key} holds an invalid object: {e}")))?;
        Ok(Some((value, kv.mod_revision)))
    }

    /// Whether `key` exists.
    async fn get_raw_exists(&self, key: &str) -> Result<bool, DockerError> {
        let range = Range {
            key: key.as_bytes().to_vec(),
            ..Default::default()
        };
        let (result, _) = self.store.range(&range, false).await?;
        Ok(!result.kvs.is_empty())
    }

    /// Every object under `prefix` (one level).
    pub(crate) async fn list<T: DeserializeOwned>(
        &self,
        prefix: &str,
    ) -> Result<Vec<T>, DockerError> {
        let range = Range {
            key: prefix.as_bytes().to_vec(),
            prefix: true,
            ..Default::default()
        };
        let (result, _) = self.store.range(&range, false).await?;
        Ok(result
            .kvs
            .iter()
            .filter(|kv| {
                std::str::from_utf8(&kv.key).is_ok_and(|k| keys::id_of(prefix, k).is_some())
            })
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }

    /// Re-reads the objects at every change until `done` returns Some, or `timeout` passes
    /// (None then). The first read is linearizable, later ones follow this replica's changes.
    pub(crate) async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut done: impl FnMut(&View) -> Option<T>,
    ) -> Result<Option<T>, DockerError> {
        // A caller's timeout may come from a client's number: never overflow the clock.
        let now = tokio::time::Instant::now();
        let deadline = now
            .checked_add(timeout)
            .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600));
        let mut views = self.index.subscribe();
        let mut view = self.view().await?;
        loop {
            if let Some(found) = done(&view) {
                return Ok(Some(found));
            }
            let seen = view.state.clone();
            let changed = views.wait_for(|v| v.objects_differ(&seen));
            tokio::select! {
                r = changed => if r.is_err() {
                    return Err(DockerError::Internal("the manager is stopping".into()));
                },
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
                // Conditions may also depend on time (how long a task stays unplaced).
                _ = tokio::time::sleep(RECHECK) => {}
            }
            view = View::new(views.borrow_and_update().clone());
        }
    }

    async fn commit(&self, txn: Txn) -> Result<bool, DockerError> {
        match self.store.write(Command::Txn(txn)).await? {
            Response::Txn { succeeded, .. } => Ok(succeeded),
            other => Err(DockerError::Internal(format!(
                "unexpected answer to a txn: {other:?}"
            ))),
        }
    }
}

fn exists(key: &str, yes: bool) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        target: CompareTarget::Exists(yes),
        op: CompareOp::Equal,
    }
}

fn unchanged(key: &str, rev: u64) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        target: CompareTarget::ModRevision(rev),
        op: CompareOp::Equal,
    }
}

fn value_is(key: &str, value: &str) -> Compare {
    Compare {
        key: key.as_bytes().to_vec(),
        target: CompareTarget::Value(value.as_bytes().to_vec()),
        op: CompareOp::Equal,
    }
}

fn put_raw(key: &str, value: Vec<u8>) -> Op {
    Op::Put(Put {
        key: key.as_bytes().to_vec(),
        value,
        ..Default::default()
    })
}

fn put_json(key: &str, value: &impl Serialize) -> Op {
    put_raw(key, serde_json::to_vec(value).expect("objects serialize"))
}

fn delete(key: &str) -> Op {
    Op::Delete(Delete {
        key: key.as_bytes().to_vec(),
        ..Default::default()
    })
}
