//! The load generator's driver for shoal: one gRPC connection (`shoal.v1.Kv`) to one manager.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use shoal_proto::v1::kv_client::KvClient;
use shoal_proto::v1::{PutRequest, RangeRequest};
use shoal_tls::Credentials;
use tonic::transport::Channel;

use crate::cluster;
use crate::load::KvDriver;

/// Bound on one request: a request that takes longer counts as an error, the bench goes on.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct ShoalDriver {
    kv: KvClient<Channel>,
}

impl ShoalDriver {
    /// Opens a connection of its own (not shared with other clients) to `addr`, mutual TLS
    /// presenting `tls`.
    pub(crate) async fn connect(addr: SocketAddr, tls: &Credentials) -> Result<ShoalDriver> {
        let endpoint = cluster::endpoint(addr)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true);
        let channel = cluster::connect(endpoint, tls)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(ShoalDriver {
            kv: KvClient::new(channel),
        })
    }
}

impl KvDriver for ShoalDriver {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.kv
            .put(PutRequest {
                key,
                value,
                ..Default::default()
            })
            .await
            .map_err(status)?;
        Ok(())
    }

    async fn get(&mut self, key: Vec<u8>, stale: bool) -> Result<Option<Vec<u8>>> {
        let req = RangeRequest {
            key,
            stale,
            ..Default::default()
        };
        let resp = self.kv.range(req).await.map_err(status)?.into_inner();
        Ok(resp.kvs.into_iter().next().map(|kv| kv.value))
    }
}

/// `code: message`, short enough to group identical failures.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
