//! The APIs a manager serves besides gRPC. Each surface is a thin translation onto the store:
//! it owns wire formats and status codes, never state of its own.

pub(crate) mod conn;
pub mod docker;
#[cfg(test)]
mod fuzz;
mod guard;
pub mod http;
#[cfg(test)]
mod test_store;

pub use self::conn::{
    ApiConns, ConnLimits, ConnStats, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS,
};
