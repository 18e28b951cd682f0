//! Errors of the Docker engine boundary (`crate::engine`): each names the engine, container or
//! image it concerns. The variants a caller acts on (missing image, name or port conflict, no such
//! container) are distinct; everything else from Docker keeps the operation and container it
//! failed on.

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot reach the Docker engine at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: bollard::errors::Error,
    },

    #[error("Docker engine at {endpoint}: {op}: {source}")]
    Engine {
        endpoint: String,
        op: &'static str,
        source: bollard::errors::Error,
    },

    #[error("image {image} not present on this node")]
    ImageMissing { image: String },

    #[error("container name {name} is already in use")]
    NameConflict { name: String },

    #[error("container {container}: a published host port is already in use: {detail}")]
    PortConflict { container: String, detail: String },

    #[error("no such container: {container}")]
    NotFound { container: String },

    #[error("creating container {name} from image {image}: {source}")]
    Create {
        name: String,
        image: String,
        source: bollard::errors::Error,
    },

    #[error("{op} container {container}: {source}")]
    Docker {
        op: &'static str,
        container: String,
        source: bollard::errors::Error,
    },

    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
}

/// The HTTP status and message of an error the engine answered with (not a transport failure).
pub(crate) fn engine_status(e: &bollard::errors::Error) -> Option<(u16, &str)> {
    match e {
        bollard::errors::Error::DockerResponseServerError {
            status_code,
            message,
        } => Some((*status_code, message.as_str())),
        _ => None,
    }
}

impl RuntimeError {
    /// Maps an error on an existing container: 404 becomes `NotFound`, the rest keeps `op`.
    pub(crate) fn on(
        op: &'static str,
        container: &str,
    ) -> impl FnOnce(bollard::errors::Error) -> Self {
        let container = container.to_string();
        move |source| match engine_status(&source) {
            Some((404, _)) => RuntimeError::NotFound { container },
            _ => RuntimeError::Docker {
                op,
                container,
                source,
            },
        }
    }

    /// Whether the engine itself is unreachable (as opposed to refusing one request): the agent reports
    /// its node's engine as down rather than failing a task.
    pub fn is_engine_unreachable(&self) -> bool {
        match self {
            RuntimeError::Connect { .. } => true,
            RuntimeError::Engine { source, .. }
            | RuntimeError::Create { source, .. }
            | RuntimeError::Docker { source, .. } => is_transport(source),
            _ => false,
        }
    }
}

fn is_transport(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::IOError { .. }
            | E::HyperResponseError { .. }
            | E::HyperLegacyError { .. }
            | E::RequestTimeoutError
            | E::SocketNotFoundError(_)
    )
}
