//! Connections accepted over TLS (`shoal_tls::net::incoming`), as an axum listener: the Docker
//! and HTTP APIs serve mutual TLS with it.

/// Connections whose TLS handshake is done, for axum.
pub(crate) struct TlsListener {
    incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<shoal_tls::net::TlsConn>>,
    addr: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = shoal_tls::net::TlsConn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    let remote = conn.info().remote;
                    return (conn, remote);
                }
                Some(Err(_)) => continue,
                // The accept loop is gone: serve what is open, accept nothing more.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

impl TlsListener {
    pub(crate) fn new(
        incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<shoal_tls::net::TlsConn>>,
        addr: std::net::SocketAddr,
    ) -> TlsListener {
        TlsListener { incoming, addr }
    }
}
