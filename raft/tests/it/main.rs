//! Integration tests of the store crate: openraft's storage conformance suite on the RocksDB
//! log and state machine.

mod suite;
