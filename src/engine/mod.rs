//! The Docker engine, through bollard: creates, inspects, signals, stops and removes containers,
//! finds a node's containers again by label, and reads what the engine holds (version, resources,
//! images, events). Used by the agent (its tasks' containers) and by `shoal proxy` (a reload
//! signal to a proxy that runs in a container). It never decides what should run.

mod error;
mod restart;
mod runtime;
mod spec;
mod status;

pub use error::RuntimeError;
pub use runtime::DockerRuntime;
pub use spec::{ContainerSpec, Owner};
pub use status::{ContainerInfo, ContainerState, EngineInfo};
