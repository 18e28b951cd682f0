//! The metrics listener (`--metrics-addr`) of managers and agents: `GET /metrics` over mutual
//! TLS, a client certificate of one of the roles `security::policy` gives `Method::MetricsRead`
//! required at the handshake (an operator's or a manager's), revoked ones refused. It serves
//! whether or not the Consul-compatible API is on; that API's `/metrics` shows the same page.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use shoal_tls::Credentials;
use tokio::net::TcpListener;

use crate::api::conn::{self, ConnLimits, ConnStats};
use crate::security::policy;

/// Writes the page afresh at each scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Connections a metrics listener keeps open at once (Prometheus keeps one per target).
const MAX_CONNECTIONS: usize = 64;

/// One process's metrics listener.
pub struct MetricsServer {
    /// The process's own credentials: its certificate is the server's, its roots check clients.
    pub creds: Credentials,
    pub render: Render,
}

/// Serves `/metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    server: MetricsServer,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let roles = policy::Method::MetricsRead.roles();
    let app = Router::new()
        .fallback(answer)
        .with_state(server.render.clone());
    let server = conn::Server {
        what: "metrics",
        limits: ConnLimits {
            max_connections: MAX_CONNECTIONS,
            ..ConnLimits::default()
        },
        stats: Arc::new(ConnStats::default()),
        tls: Some(conn::Tls::new(&server.creds, roles, "metrics")),
    };
    conn::serve(listener, app, server, shutdown).await
}

async fn answer(State(render): State<Render>, method: Method, uri: Uri) -> Response {
    let error = |status: StatusCode, message: String| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::json!({ "message": message }).to_string(),
        )
            .into_response()
    };
    if uri.path() != "/metrics" {
        return error(
            StatusCode::NOT_FOUND,
            format!("{} is not served here: metrics are at /metrics", uri.path()),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} /metrics: only GET is allowed"),
        );
    }
    page(render().await)
}

/// A metrics page as an HTTP answer.
pub(crate) fn page(text: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, super::text::CONTENT_TYPE)],
        text,
    )
        .into_response()
}
