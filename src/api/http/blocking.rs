//! Consul's blocking queries on store watches: wait until a key or prefix changes after a
//! given index (a store revision), or until the wait ends, or until the manager stops.

use std::time::Duration;

use futures::StreamExt;
use shoal_raft::StoreError;

use super::error::ApiError;
use super::Api;

/// How a blocking wait ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Something under the key or prefix changed after the index (or may have: a compacted
    /// history answers at once, a spurious wake-up Consul's clients are written to expect).
    Changed,
    /// Nothing changed within the wait: answer with the client's own index.
    TimedOut,
}

impl Api {
    /// Waits for the first change to `key` (or under it, with `prefix`) after revision `index`
    /// (any u64: an index beyond the last revision just waits for `wait`).
    pub(crate) async fn wait_change(
        &self,
        key: &[u8],
        prefix: bool,
        index: u64,
        wait: Duration,
    ) -> Result<Woken, ApiError> {
        let mut stream = match self
            .store
            .watch(key.to_vec(), prefix, index.saturating_add(1))
        {
            Ok(s) => s,
            Err(StoreError::Compacted { .. }) => return Ok(Woken::Changed),
            Err(e) => return Err(e.into()),
        };
        let mut stopping = self.stopping.clone();
        tokio::select! {
            next = stream.next() => match next {
                Some(Err(StoreError::Compacted { .. })) | Some(Ok(_)) | None => Ok(Woken::Changed),
                Some(Err(e)) => Err(e.into()),
            },
            _ = tokio::time::sleep(wait) => Ok(Woken::TimedOut),
            _ = stopping.wait_for(|s| *s) => Ok(Woken::TimedOut),
        }
    }

    /// Blocks if the query asks to, then returns the index to answer with when nothing
    /// changed (Some(client's index)) or None when the caller should use its read's revision.
    pub(crate) async fn block(
        &self,
        blocking: Option<(u64, Duration)>,
        key: &[u8],
        prefix: bool,
    ) -> Result<Option<u64>, ApiError> {
        match blocking {
            None => Ok(None),
            Some((index, wait)) => match self.wait_change(key, prefix, index, wait).await? {
                Woken::Changed => Ok(None),
                Woken::TimedOut => Ok(Some(index)),
            },
        }
    }
}
