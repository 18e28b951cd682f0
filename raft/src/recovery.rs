//! `--force-new-cluster`: turns a surviving manager into a one-member cluster keeping all its
//! data, for when a majority is lost for good. It appends, before Raft starts, a membership
//! entry naming only this manager, in a term above any seen, with a vote for itself.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use openraft::entry::RaftEntry;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::Membership;

use crate::error::StoreError;
use crate::log_store::LogStore;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::ManagerNode;
use crate::types::NodeId;
use crate::types::Vote;

pub(crate) fn force_new_cluster(
    log: &LogStore,
    id: NodeId,
    node: &ManagerNode,
) -> Result<(), StoreError> {
    let last = log.last_log_id()?;
    let vote = log.vote()?;
    let last_term = last.as_ref().map_or(0, |l| l.leader_id.term);
    let vote_term = vote.as_ref().map_or(0, |v| v.leader_id.term);
    let term = last_term.max(vote_term) + 1;
    let index = last.as_ref().map_or(0, |l| l.index + 1);

    let membership = Membership::new(
        vec![BTreeSet::from([id])],
        BTreeMap::from([(id, node.clone())]),
    )
    .map_err(|e| StoreError::Membership(e.to_string()))?;
    let log_id = LogId::new(LeaderId { term, node_id: id }, index);
    let entry = Entry::new_membership(log_id, membership);
    log.force_write(&Vote::new_committed(term, id), &[entry])?;
    tracing::warn!(
        id,
        term,
        index,
        "forced a new one-member cluster from this manager's data"
    );
    Ok(())
}
