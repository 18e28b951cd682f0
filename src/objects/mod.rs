//! The cluster's objects (nodes, services, tasks, the proxy config) as the control plane sees
//! them: an index kept by the state machine's apply on every manager, immutable views of it,
//! typed writes with their expectations, fenced batched commits, and resolving what an operator
//! typed to one object. Everything that reads or writes objects goes through here; nothing else
//! decodes them from the store but the CLI, which reads them over the client API.

mod index;
mod memory;
mod resolve;
mod store;
mod view;
mod write;

#[cfg(test)]
mod tests;

pub use self::index::Index;
pub use self::memory::MemoryObjects;
pub use self::resolve::{resolve, Named, Unresolved};
pub use self::store::{ObjectStore, Objects};
pub use self::view::{Change, Versioned, View};
pub use self::write::{term_value, Commit, Expect, Write};
