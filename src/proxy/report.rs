//! Keeps this proxy's `ProxyStatus` at `/shoal/proxy/status/<name>` on a lease of its own: put
//! after every change, the lease kept alive every few seconds and granted again if it expired
//! (managers down for a while, a long election), revoked on a clean stop. A proxy that dies
//! without stopping loses its status when the lease runs out. Never fails: while no manager
//! answers it retries, and the proxy keeps serving regardless.

use std::time::Duration;

use shoal_proto::v1 as pb;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;

use crate::client::{Client, ClientConfig, ClientError};
use crate::model::ProxyStatus;

/// The status lease: a proxy that vanishes is gone from `shoal proxy status` after this.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(10);
/// Keep-alive period: three tries within one TTL.
const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(3);
/// After a failure, try again sooner.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// A clean stop waits this long to revoke the lease.
const REVOKE_WITHIN: Duration = Duration::from_secs(2);

/// Reports `status` (the latest value) at `key` until its sender is dropped, then revokes the
/// lease so the status goes at once.
pub(crate) async fn run(
    config: ClientConfig,
    key: String,
    mut status: watch::Receiver<ProxyStatus>,
) {
    let mut reporter = Reporter {
        config,
        key,
        client: None,
        lease: None,
        dirty: true,
        failing: false,
    };
    let mut next = Instant::now();
    loop {
        tokio::select! {
            changed = status.changed() => match changed {
                Ok(()) => reporter.dirty = true,
                Err(_) => break,
            },
            () = tokio::time::sleep_until(next) => {}
        }
        let current = status.borrow_and_update().clone();
        next = Instant::now()
            + match reporter.step(&current).await {
                Ok(()) => KEEP_ALIVE_EVERY,
                Err(_) => RETRY_EVERY,
            };
    }
    reporter.revoke().await;
}

struct Reporter {
    config: ClientConfig,
    key: String,
    client: Option<Client>,
    lease: Option<u64>,
    /// The stored status is not the latest (or its lease was lost with it).
    dirty: bool,
    /// Logs a failure once, not every second.
    failing: bool,
}

impl Reporter {
    async fn step(&mut self, status: &ProxyStatus) -> Result<(), ClientError> {
        match self.try_step(status).await {
            Ok(()) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("reporting the proxy status at {} again", self.key);
                }
                Ok(())
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!("cannot report the proxy status at {}: {e}", self.key);
                }
                // A write is never failed over by the client: reconnect to whichever answers.
                if e.code() != Some(Code::NotFound) {
                    self.client = None;
                }
                Err(e)
            }
        }
    }

    async fn try_step(&mut self, status: &ProxyStatus) -> Result<(), ClientError> {
        let client = match &mut self.client {
            Some(client) => client,
            None => self
                .client
                .insert(Client::connect(self.config.clone()).await?),
        };
        if let Some(id) = self.lease {
            match client.lease_keep_alive(id).await {
                Ok(_) => {}
                Err(e) if e.code() == Some(Code::NotFound) => {
                    self.lease = None;
                    self.dirty = true;
                }
                Err(e) => return Err(e),
            }
        }
        let lease = match self.lease {
            Some(id) => id,
            None => {
                let id = client.lease_grant(LEASE_TTL).await?.id;
                self.dirty = true;
                *self.lease.insert(id)
            }
        };
        if self.dirty {
            let req = pb::PutRequest {
                key: self.key.clone().into_bytes(),
                value: serde_json::to_vec(status).expect("plain data"),
                lease,
                ..Default::default()
            };
            if let Err(e) = client.put(req).await {
                if e.code() == Some(Code::NotFound) {
                    // The lease expired between the keep-alive and the put.
                    self.lease = None;
                }
                return Err(e);
            }
            self.dirty = false;
        }
        Ok(())
    }

    async fn revoke(&mut self) {
        let (Some(client), Some(lease)) = (self.client.as_mut(), self.lease) else {
            return;
        };
        match tokio::time::timeout(REVOKE_WITHIN, client.lease_revoke(lease)).await {
            Ok(Ok(_)) => tracing::info!("removed the proxy status at {}", self.key),
            // It expires by itself within the TTL.
            Ok(Err(e)) => tracing::debug!("revoking the status lease: {e}"),
            Err(_) => tracing::debug!("revoking the status lease timed out"),
        }
    }
}
