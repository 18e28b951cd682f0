//! A watch that survives the loss of its manager: it reopens the stream on another manager from
//! the revision after the last one it delivered, so no event is lost or delivered twice.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio::time::Instant;
use tonic::Streaming;

use super::{call, connect_one, Client, ClientConfig, ClientError, Conn};

/// How long a watch keeps looking for a manager before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// An open watch. [`Watcher::next`] yields events one by one, in revision order.
pub struct Watcher {
    config: ClientConfig,
    conn: Conn,
    key: Vec<u8>,
    prefix: bool,
    /// The first revision not yet delivered: a new stream starts here.
    next_revision: u64,
    stream: Option<Streaming<pb::WatchResponse>>,
    pending: VecDeque<pb::Event>,
}

/// The revision of the change an event reports.
pub fn event_revision(event: &pb::Event) -> u64 {
    event.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

impl Watcher {
    pub(super) async fn start(
        client: &mut Client,
        key: Vec<u8>,
        prefix: bool,
        start_revision: u64,
    ) -> Result<Watcher, ClientError> {
        let next_revision = if start_revision == 0 {
            // "From now", made precise: after the revision a linearizable read sees, so that a
            // reconnect before the first event still resumes at the right place. Without a
            // leader, a replica's revision will do (it may show a few changes from just before).
            let mut req = pb::RangeRequest {
                key: key.clone(),
                prefix,
                count_only: true,
                ..Default::default()
            };
            let resp = match client.range(req.clone()).await {
                Ok(resp) => resp,
                Err(e) if e.is_retryable() => {
                    req.stale = true;
                    client.range(req).await?
                }
                Err(e) => return Err(e),
            };
            resp.header.map_or(0, |h| h.revision) + 1
        } else {
            start_revision
        };
        let mut watcher = Watcher {
            config: client.config.clone(),
            conn: client.conn.clone(),
            key,
            prefix,
            next_revision,
            stream: None,
            pending: VecDeque::new(),
        };
        match watcher.open(watcher.conn.clone()).await {
            Ok(stream) => watcher.stream = Some(stream),
            Err(e) if e.is_retryable() => watcher.reconnect(e).await?,
            Err(e) => return Err(e),
        }
        Ok(watcher)
    }

    /// The revision the next delivered event will have at least.
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }

    /// The manager the watch currently listens to.
    pub fn addr(&self) -> &str {
        &self.conn.addr
    }

    /// The next event. Errors only when the watch cannot go on (history compacted, bad request,
    /// or no manager reachable for a minute).
    pub async fn next(&mut self) -> Result<pb::Event, ClientError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            let Some(stream) = self.stream.as_mut() else {
                let lost = ClientError::Connect {
                    addr: self.conn.addr.clone(),
                    reason: "not connected".into(),
                };
                self.reconnect(lost).await?;
                continue;
            };
            let lost = match stream.message().await {
                Ok(Some(resp)) => {
                    self.accept(resp);
                    continue;
                }
                Ok(None) => ClientError::Connect {
                    addr: self.conn.addr.clone(),
                    reason: "the manager closed the watch".into(),
                },
                Err(status) => {
                    let e = ClientError::from_status(&self.conn.addr, status, false);
                    if !e.is_retryable() {
                        return Err(e);
                    }
                    e
                }
            };
            self.stream = None;
            self.reconnect(lost).await?;
        }
    }

    /// Queues the events of one response, dropping any already delivered. A manager sends all
    /// events of a revision in one response, so a revision is either delivered whole or not.
    fn accept(&mut self, resp: pb::WatchResponse) {
        let mut highest = None;
        for event in resp.events {
            let revision = event_revision(&event);
            if revision < self.next_revision {
                continue;
            }
            highest = highest.max(Some(revision));
            self.pending.push_back(event);
        }
        if let Some(highest) = highest {
            self.next_revision = highest + 1;
        }
    }

    async fn open(&self, conn: Conn) -> Result<Streaming<pb::WatchResponse>, ClientError> {
        let req = pb::WatchRequest {
            key: self.key.clone(),
            prefix: self.prefix,
            start_revision: self.next_revision,
            ..Default::default()
        };
        call(&self.config, &conn, false, |c| async move {
            c.kv().watch(req).await
        })
        .await
    }

    /// Reopens the stream on the next manager that answers, round-robin over all of them (the
    /// same one included: it may be back), for at most [`RECONNECT_FOR`].
    async fn reconnect(&mut self, mut last: ClientError) -> Result<(), ClientError> {
        let deadline = Instant::now() + RECONNECT_FOR;
        let n = self.config.hosts.len().max(1);
        let mut step = 1;
        loop {
            let index = (self.conn.index + step) % n;
            step += 1;
            match connect_one(&self.config, index).await {
                Ok(conn) => match self.open(conn.clone()).await {
                    Ok(stream) => {
                        tracing::warn!(
                            "watch: {last}; resumed on {} at revision {}",
                            conn.addr,
                            self.next_revision
                        );
                        self.conn = conn;
                        self.stream = Some(stream);
                        return Ok(());
                    }
                    Err(e) if e.is_retryable() => last = e,
                    Err(e) => return Err(e),
                },
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                return Err(ClientError::WatchLost {
                    revision: self.next_revision,
                    after: RECONNECT_FOR,
                    last: last.to_string(),
                });
            }
            if (step - 1) % n == 0 {
                // A full round failed: give the cluster a moment (an election, a restart).
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64, key: &str) -> pb::Event {
        let kv = pb::KeyValue {
            key: key.into(),
            mod_revision: revision,
            ..Default::default()
        };
        pb::Event {
            kv: Some(kv),
            ..Default::default()
        }
    }

    fn response(events: Vec<pb::Event>) -> pb::WatchResponse {
        pb::WatchResponse {
            events,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn replayed_revisions_are_dropped() {
        let config = ClientConfig::new(vec!["127.0.0.1:1".into()]);
        let channel = super::super::endpoint("127.0.0.1:1", &config)
            .unwrap()
            .connect_lazy();
        let conn = Conn {
            index: 0,
            addr: "127.0.0.1:1".into(),
            channel,
        };
        let mut w = Watcher {
            config,
            conn,
            key: b"k".to_vec(),
            prefix: true,
            next_revision: 5,
            stream: None,
            pending: VecDeque::new(),
        };
        // A revision before the start, then a txn's two events at one revision.
        w.accept(response(vec![
            event(4, "k/old"),
            event(5, "k/a"),
            event(5, "k/b"),
        ]));
        assert_eq!(w.next_revision(), 6);
        // After a reconnect a manager replays revision 5 and goes on with 6.
        w.accept(response(vec![event(5, "k/a"), event(5, "k/b")]));
        w.accept(response(vec![event(6, "k/c")]));
        let keys: Vec<Vec<u8>> = w
            .pending
            .iter()
            .map(|e| e.kv.clone().unwrap().key)
            .collect();
        assert_eq!(
            keys,
            vec![b"k/a".to_vec(), b"k/b".to_vec(), b"k/c".to_vec()]
        );
        assert_eq!(w.next_revision(), 7);
    }
}
