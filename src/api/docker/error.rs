//! Errors of the Docker Engine API and the status code Docker answers each with. Every error is
//! `{"message": "..."}` with `Content-Type: application/json`, as Docker's clients expect.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use shoal_raft::StoreError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum DockerError {
    /// 400: a malformed body, parameter or filter.
    #[error("{0}")]
    BadRequest(String),
    /// 403: the operator's policy refuses it, or a browser's or foreign host's request.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such container, image, network, exec instance or endpoint.
    #[error("{0}")]
    NotFound(String),
    /// 409: a name in use, a running container removed without force...
    #[error("{0}")]
    Conflict(String),
    /// 413: a body over the limit.
    #[error("{0}")]
    TooLarge(String),
    /// 501: an endpoint of Docker's API that shoal does not serve.
    #[error("{0}")]
    NotImplemented(String),
    /// 500: a node's engine failed, a task could not be placed...
    #[error("{0}")]
    Internal(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl DockerError {
    pub(crate) fn no_such_container(query: &str) -> DockerError {
        DockerError::NotFound(format!("No such container: {query}"))
    }

    fn status(&self) -> StatusCode {
        match self {
            DockerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            DockerError::Forbidden(_) => StatusCode::FORBIDDEN,
            DockerError::NotFound(_) => StatusCode::NOT_FOUND,
            DockerError::Conflict(_) => StatusCode::CONFLICT,
            DockerError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DockerError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            DockerError::Store(StoreError::Invalid(_)) => StatusCode::BAD_REQUEST,
            DockerError::Internal(_) | DockerError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<super::policy::Denied> for DockerError {
    fn from(denied: super::policy::Denied) -> Self {
        DockerError::Forbidden(denied.to_string())
    }
}

impl IntoResponse for DockerError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED {
            tracing::warn!(%status, "docker API: {self}");
        }
        json_response(status, &serde_json::json!({ "message": self.to_string() }))
    }
}

/// A JSON body with Docker's exact content type.
pub(crate) fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
