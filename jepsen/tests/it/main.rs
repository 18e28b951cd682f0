//! The harness's integration test: one short combined run against real managers in network
//! namespaces, through the built `shoal-jepsen` binary. It needs root and `ip`/`iptables` (CI
//! runs as root); without them it fails with a clear message rather than passing silently.

mod combined;
