//! shoal: a Raft-replicated control plane for Docker hosts. The binary's pieces live here so that
//! integration tests and benchmarks can reach them; `main.rs` is a thin clap front end.
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod duration;
pub mod engine;
pub mod host;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod objects;
pub mod proxy;
pub mod scheduler;
pub mod security;
