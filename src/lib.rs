//! opsync: a real-time operation-log sync server for offline-first apps.
//!
//! Clients push batches of opaque ops; opsync gives each its place in one strict
//! per-user order (a seq), stores the log durably, and serves it back in pages.
//! See docs/architecture.md for how a push flows through these modules.

pub mod app;
pub mod auth;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod db;
pub mod error;
pub mod fuzzing;
pub mod http;
pub mod ids;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod protocol;
pub mod realtime;
pub mod tls;
