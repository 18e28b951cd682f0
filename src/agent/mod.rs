//! `shoal agent`: runs the tasks assigned to its node on the local Docker engine. So far its container
//! runtime over bollard; the session with the leader and the task loop build on it.

mod runtime;

pub use runtime::{
    ContainerInfo, ContainerSpec, ContainerState, DockerRuntime, EngineInfo, Owner, PortSpec,
    Protocol, PublishedPort, RestartPolicy, RuntimeError, NODE_LABEL, SERVICE_LABEL, TASK_LABEL,
};
