//! The APIs a manager serves besides gRPC. Each surface is a thin translation onto the store:
//! it owns wire formats and status codes, never state of its own.

pub mod docker;
mod guard;
pub mod http;
mod tls;
