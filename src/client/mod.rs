//! A small client for the managers' gRPC API (`shoal.v1.Kv`, `shoal.v1.Cluster`): it talks to the
//! first reachable of several managers, bounds every connect and every call by a timeout, fails
//! reads over to another manager, and never retries a write by itself (a write whose outcome is
//! unknown is reported as such, never sent twice).

mod error;
mod watch;

use std::future::Future;
use std::time::Duration;

use shoal_proto::v1 as pb;
use shoal_proto::v1::ca_client::CaClient;
use shoal_proto::v1::cluster_client::ClusterClient;
use shoal_proto::v1::kv_client::KvClient;
use tonic::transport::{Channel, Endpoint};

pub use error::ClientError;
pub use watch::{event_revision, Watcher};

/// The manager gRPC address the CLI uses when neither `--host` nor `SHOAL_HOST` is given.
pub const DEFAULT_GRPC: &str = "127.0.0.1:7946";

/// Responses can hold a whole key space (`kv ls`); the gRPC default of 4 MiB is too small.
const MAX_MESSAGE: usize = 512 * 1024 * 1024;

/// What a client without credentials is told when a manager drops its connection.
const NO_TLS_HINT: &str = " (managers speak mutual TLS only: give --tls-dir DIR or SHOAL_TLS_DIR, a directory with ca.pem, cert.pem and key.pem from `shoal cluster client-cert`)";

/// Where to find the managers and how long to wait for them.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Manager gRPC addresses (`host:port`, or an `http://` URL), tried in order.
    pub hosts: Vec<String>,
    pub connect_timeout: Duration,
    /// Bound on one call; longer than the managers' own bounded wait for a leader, so that their
    /// clear error arrives before this one.
    pub request_timeout: Duration,
    /// The certificate to present (managers speak only mutual TLS). None: plaintext, which
    /// managers refuse; for the error message and tests' doubles.
    pub tls: Option<shoal_tls::Credentials>,
}

impl ClientConfig {
    pub fn new(hosts: Vec<String>) -> Self {
        ClientConfig {
            hosts,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(15),
            tls: None,
        }
    }

    /// The same, presenting `creds`.
    pub fn with_tls(mut self, creds: shoal_tls::Credentials) -> Self {
        self.tls = Some(creds);
        self
    }
}

/// One open connection to one manager.
#[derive(Clone)]
struct Conn {
    index: usize,
    addr: String,
    channel: Channel,
}

impl Conn {
    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn cluster(&self) -> ClusterClient<Channel> {
        ClusterClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn ca(&self) -> CaClient<Channel> {
        CaClient::new(self.channel.clone())
    }
}

/// A connection to the cluster through one manager at a time.
pub struct Client {
    config: ClientConfig,
    conn: Conn,
}

impl Client {
    /// Connects to the first reachable manager of `config.hosts`.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let conn = connect_any(&config, 0).await?;
        Ok(Client { config, conn })
    }

    /// The address of the manager this client currently talks to.
    pub fn addr(&self) -> &str {
        &self.conn.addr
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    pub async fn range(&mut self, req: pb::RangeRequest) -> Result<pb::RangeResponse, ClientError> {
        self.read(move |c| {
            let req = req.clone();
            async move { c.kv().range(req).await }
        })
        .await
    }

    pub async fn put(&mut self, req: pb::PutRequest) -> Result<pb::PutResponse, ClientError> {
        self.write(|c| async move { c.kv().put(req).await }).await
    }

    pub async fn delete(
        &mut self,
        req: pb::DeleteRequest,
    ) -> Result<pb::DeleteResponse, ClientError> {
        self.write(|c| async move { c.kv().delete(req).await })
            .await
    }

    pub async fn txn(&mut self, req: pb::TxnRequest) -> Result<pb::TxnResponse, ClientError> {
        self.write(|c| async move { c.kv().txn(req).await }).await
    }

    /// A typed write of cluster objects (services, service names, nodes): the one way under
    /// `/shoal/`, which `txn` refuses.
    pub async fn commit_objects(
        &mut self,
        req: pb::TxnRequest,
    ) -> Result<pb::TxnResponse, ClientError> {
        self.write(|c| async move { c.cluster().commit_objects(req).await })
            .await
    }

    pub async fn lease_grant(
        &mut self,
        ttl: Duration,
    ) -> Result<pb::LeaseGrantResponse, ClientError> {
        let req = pb::LeaseGrantRequest {
            ttl_ms: ttl.as_millis().try_into().unwrap_or(u64::MAX),
        };
        self.write(|c| async move { c.kv().lease_grant(req).await })
            .await
    }

    pub async fn lease_revoke(&mut self, id: u64) -> Result<pb::LeaseRevokeResponse, ClientError> {
        self.write(|c| async move { c.kv().lease_revoke(pb::LeaseRevokeRequest { id }).await })
            .await
    }

    pub async fn lease_keep_alive(
        &mut self,
        id: u64,
    ) -> Result<pb::LeaseKeepAliveResponse, ClientError> {
        self.write(|c| async move {
            c.kv()
                .lease_keep_alive(pb::LeaseKeepAliveRequest { id })
                .await
        })
        .await
    }

    pub async fn status(&mut self) -> Result<pb::StatusResponse, ClientError> {
        self.read(|c| async move { c.cluster().status(pb::StatusRequest::default()).await })
            .await
    }

    /// The join token of `role` (worker or manager), rotated first if `rotate`.
    pub async fn token(&mut self, role: &str, rotate: bool) -> Result<String, ClientError> {
        let req = pb::CaTokenRequest {
            role: role.to_string(),
            rotate,
        };
        let resp = if rotate {
            self.write(|c| async move { c.ca().token(req).await })
                .await?
        } else {
            self.read(|c| {
                let req = req.clone();
                async move { c.ca().token(req).await }
            })
            .await?
        };
        Ok(resp.token)
    }

    /// A client certificate for `name`, signed for the public key of `csr_pem`.
    pub async fn issue_client(
        &mut self,
        name: &str,
        csr_pem: &str,
    ) -> Result<pb::Issued, ClientError> {
        let req = pb::IssueClientRequest {
            name: name.to_string(),
            csr_pem: csr_pem.to_string(),
        };
        self.read(|c| {
            let req = req.clone();
            async move { c.ca().issue_client(req).await }
        })
        .await
    }

    /// The operators' certificate names: issued and revoked.
    pub async fn clients(&mut self) -> Result<Vec<pb::ClientCert>, ClientError> {
        let resp = self
            .read(|c| async move { c.ca().clients(pb::ClientsRequest {}).await })
            .await?;
        Ok(resp.clients)
    }

    /// Revokes the client certificates named `name`; whether the CA had issued that name.
    pub async fn revoke_client(&mut self, name: &str) -> Result<bool, ClientError> {
        let req = pb::RevokeClientRequest {
            name: name.to_string(),
        };
        let resp = self
            .write(|c| async move { c.ca().revoke_client(req).await })
            .await?;
        Ok(resp.known)
    }

    /// Starts a root CA rotation.
    pub async fn rotate_ca(&mut self) -> Result<pb::RotateResponse, ClientError> {
        self.write(|c| async move { c.ca().rotate(pb::RotateRequest {}).await })
            .await
    }

    /// The CA's public state.
    pub async fn ca_info(&mut self) -> Result<pb::CaInfo, ClientError> {
        self.read(|c| async move { c.ca().info(pb::CaInfoRequest {}).await })
            .await
    }

    /// Removes node `id` (`force`: even while READY); its certificate is revoked.
    pub async fn remove_node(&mut self, id: &str, force: bool) -> Result<(), ClientError> {
        let req = pb::RemoveNodeRequest {
            id: id.to_string(),
            force,
        };
        self.write(|c| async move { c.cluster().remove_node(req).await })
            .await?;
        Ok(())
    }

    pub async fn remove_manager(
        &mut self,
        id: u64,
    ) -> Result<pb::RemoveManagerResponse, ClientError> {
        self.write(|c| async move {
            c.cluster()
                .remove_manager(pb::RemoveManagerRequest { id })
                .await
        })
        .await
    }

    /// Watches `key` (or every key under it with `prefix`) from `start_revision` (0: from now),
    /// following the managers in `hosts` if the one it listens to goes away.
    pub async fn watch(
        &mut self,
        key: Vec<u8>,
        prefix: bool,
        start_revision: u64,
    ) -> Result<Watcher, ClientError> {
        Watcher::start(self, key, prefix, start_revision).await
    }

    /// A write goes to the current manager once. Its error is returned as is: the caller decides.
    async fn write<T, F, Fut>(&mut self, f: F) -> Result<T, ClientError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        call(&self.config, &self.conn, true, f).await
    }

    /// A read may be asked again of every other manager, once each, when the answer says the
    /// manager (not the request) is the problem.
    async fn read<T, F, Fut>(&mut self, f: F) -> Result<T, ClientError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut last = match call(&self.config, &self.conn, false, &f).await {
            Err(e) if e.is_retryable() && self.config.hosts.len() > 1 => e,
            other => return other,
        };
        let n = self.config.hosts.len();
        for step in 1..n {
            let index = (self.conn.index + step) % n;
            let conn = match connect_one(&self.config, index).await {
                Ok(conn) => conn,
                Err(e) => {
                    last = e;
                    continue;
                }
            };
            match call(&self.config, &conn, false, &f).await {
                Ok(v) => {
                    self.conn = conn;
                    return Ok(v);
                }
                Err(e) if e.is_retryable() => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }
}

async fn call<T, F, Fut>(
    config: &ClientConfig,
    conn: &Conn,
    write: bool,
    f: F,
) -> Result<T, ClientError>
where
    F: FnOnce(Conn) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    match tokio::time::timeout(config.request_timeout, f(conn.clone())).await {
        Ok(Ok(resp)) => Ok(resp.into_inner()),
        Ok(Err(status)) => {
            let mut e = ClientError::from_status(&conn.addr, status, write);
            if let (
                None,
                ClientError::Status {
                    message,
                    transport: true,
                    ..
                },
            ) = (&config.tls, &mut e)
            {
                message.push_str(NO_TLS_HINT);
            }
            Err(e)
        }
        Err(_) => Err(ClientError::Timeout {
            addr: conn.addr.clone(),
            after: config.request_timeout,
            write,
        }),
    }
}

/// Connects to the first reachable manager, starting at `hosts[start]` and wrapping around.
async fn connect_any(config: &ClientConfig, start: usize) -> Result<Conn, ClientError> {
    if config.hosts.is_empty() {
        return Err(ClientError::BadAddress {
            addr: String::new(),
            reason: "no manager address given".into(),
        });
    }
    let n = config.hosts.len();
    let mut last = None;
    for step in 0..n {
        match connect_one(config, (start + step) % n).await {
            Ok(conn) => return Ok(conn),
            Err(e @ ClientError::BadAddress { .. }) => return Err(e),
            Err(e) => last = Some(e),
        }
    }
    let last = last.map(|e| e.to_string()).unwrap_or_default();
    Err(ClientError::Unreachable {
        hosts: config.hosts.join(","),
        last,
    })
}

async fn connect_one(config: &ClientConfig, index: usize) -> Result<Conn, ClientError> {
    let addr = config.hosts[index].trim().to_string();
    let endpoint = endpoint(&addr, config)?;
    // connect_timeout bounds the TCP connect; the outer timeout bounds the HTTP/2 handshake too.
    let connect = async {
        match &config.tls {
            Some(creds) => {
                endpoint
                    .connect_with_connector(shoal_tls::net::Connector::new(
                        creds.client_config(&[shoal_tls::Role::Manager], &[b"h2"]),
                    ))
                    .await
            }
            None => endpoint.connect().await,
        }
    };
    let channel = match tokio::time::timeout(config.connect_timeout * 2, connect).await {
        Ok(Ok(channel)) => channel,
        Ok(Err(e)) => {
            let mut reason = error_chain(&e);
            if config.tls.is_none() {
                reason.push_str(NO_TLS_HINT);
            }
            return Err(ClientError::Connect { addr, reason });
        }
        Err(_) => {
            let reason = format!("timed out after {:?}", config.connect_timeout * 2);
            return Err(ClientError::Connect { addr, reason });
        }
    };
    Ok(Conn {
        index,
        addr,
        channel,
    })
}

fn endpoint(addr: &str, config: &ClientConfig) -> Result<Endpoint, ClientError> {
    let url = if config.tls.is_some() {
        shoal_tls::net::endpoint_uri(addr)
    } else if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let endpoint = Endpoint::from_shared(url).map_err(|e| ClientError::BadAddress {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    Ok(endpoint
        .connect_timeout(config.connect_timeout)
        .tcp_nodelay(true)
        // A watch can be idle for long: pings notice a manager that vanished without a RST.
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

/// "transport error: tcp connect error: Connection refused", without repeating itself.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Splits `a,b , c` into addresses; empty parts are dropped.
pub fn parse_hosts<S: AsRef<str>>(items: &[S]) -> Vec<String> {
    items
        .iter()
        .flat_map(|s| s.as_ref().split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_split_and_trimmed() {
        assert_eq!(
            parse_hosts(&["a:1, b:2", "", "c:3,"]),
            vec!["a:1", "b:2", "c:3"]
        );
    }

    #[tokio::test]
    async fn unreachable_hosts_fail_in_bounded_time() {
        // Port 1 on loopback refuses at once.
        let config = ClientConfig::new(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]);
        let started = std::time::Instant::now();
        let err = Client::connect(config).await.err().expect("must fail");
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn bad_address_is_reported() {
        let config = ClientConfig::new(vec!["not a host".into()]);
        assert!(matches!(
            endpoint("not a host", &config),
            Err(ClientError::BadAddress { .. })
        ));
    }
}
