//! Interlock rebuilt: the proxy model the leader computes from RUNNING tasks with Interlock labels
//! (`labels`, `model`), the nginx and haproxy configs rendered from it (`render`), and the
//! `shoal proxy` process that applies them next to a real nginx or haproxy.

mod apply;
mod control;
mod error;
pub mod labels;
pub mod model;
mod process;
pub mod render;
mod report;
pub mod safe;

pub(crate) use control::find_program;
pub use control::ReloadMethod;
pub use error::{ApplyError, ProxyError};
pub use process::{run, ProxyProcessConfig};
