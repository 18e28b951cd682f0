//! Integration tests: the real `shoal` binary, several manager processes on loopback, kill -9,
//! restarts. One binary (see STYLE.md); the tests that start managers run one at a time.

mod authz;
mod bad_input;
mod cli;
mod cluster;
mod compose_update;
mod consul;
mod crash;
mod deploy;
mod dev;
mod docker_api;
mod docker_policy;
mod engine;
mod engine_proxy;
mod failover;
mod fleet;
mod flood;
mod full_disk;
mod health;
mod hosts;
mod http_tls;
mod membership;
mod metrics;
mod proxy;
mod quota;
mod scheduling;
mod security;
mod snapshot;
mod swarm_api;
mod ttl;
mod update;
mod watch;
