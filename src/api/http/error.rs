//! Errors of the Consul-compatible HTTP API and the status code Consul answers each with.

use axum::http::header;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use shoal_raft::InvalidRequest;
use shoal_raft::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// 400: the request is malformed (bad base64, a bad session id, an unknown parameter).
    #[error("{0}")]
    BadRequest(String),
    /// 404: no such endpoint (a missing key is an empty 404 answered by the handler).
    #[error("{0}")]
    NotFound(String),
    #[error("method {0} not allowed")]
    MethodNotAllowed(String),
    /// 413: a value or transaction over the limits.
    #[error("{0}")]
    TooLarge(String),
    /// 500: Consul answers an unknown session or datacenter this way.
    #[error("{0}")]
    Internal(String),
    /// 403: a write into `/shoal/`, the cluster's own records (answered as JSON,
    /// `{"error": "..."}`, so that scripts can tell it from Consul's plain-text errors).
    #[error(transparent)]
    Forbidden(#[from] crate::security::policy::Denied),
    /// 403: a web page's request, or one addressed to another host (`api::guard`).
    #[error("{0}")]
    Refused(String),
    /// 403: the request's ACL token does not allow it (Consul's wording).
    #[error("{0}")]
    PermissionDenied(String),
    /// 403: no token has the secret the request carries (Consul's wording).
    #[error("ACL not found")]
    AclNotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Forbidden(_)
            | ApiError::Refused(_)
            | ApiError::PermissionDenied(_)
            | ApiError::AclNotFound => StatusCode::FORBIDDEN,
            ApiError::Store(StoreError::Invalid(
                InvalidRequest::ValueTooLarge(_) | InvalidRequest::TxnTooLarge(_),
            )) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Store(StoreError::Invalid(_)) => StatusCode::BAD_REQUEST,
            ApiError::Store(StoreError::LeaseNotFound(_)) => StatusCode::NOT_FOUND,
            // The NOSPACE alarm: WebDAV's "cannot store the representation".
            ApiError::Store(StoreError::NoSpace { .. }) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            // Consul's wording, which clients and operators recognise, plus the store's reason.
            ApiError::Store(
                e @ (StoreError::NoLeader { .. }
                | StoreError::NotLeader { .. }
                | StoreError::LeaderUnreachable { .. }
                | StoreError::Stopped(_)
                | StoreError::Timeout(_)),
            ) => format!("No cluster leader: {e}"),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Forbidden(e) = &self {
            return super::json(status, &serde_json::json!({ "error": e.to_string() }));
        }
        let mut body = self.message();
        body.push('\n');
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    }
}
