//! chirp: a synthetic heartbeat and latency prober for event pipelines.
//! It sends signed canaries into a pipeline, catches them where the pipeline
//! hands them out, and reports what happened to every one of them.
//!
//! Layers, imports pointing down only (`tests/layering.rs` checks it):
//! `canary`, `outcome`, `stats`, `timer`, `version`, `config::{secret, vars, limits, errors, tls, de}`
//! → `transport` → `config` → `probe::ledger` → `probe` → `slo`, `history`
//! → `report` → `export` → `runtime`, `server`, `cmd`.
#![forbid(unsafe_code)]
// A panic is a crash at 3 a.m.: production code handles every error; only tests unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
// Printing macros panic on a closed pipe: output goes through `cmd::{out, err}`.
#![deny(clippy::print_stdout, clippy::print_stderr)]

pub mod canary;
pub mod cmd;
pub mod config;
pub mod export;
pub mod history;
pub mod outcome;
pub mod payload;
pub mod probe;
pub mod report;
pub mod runtime;
pub mod server;
pub mod slo;
pub mod stats;
pub mod timer;
pub mod transport;
pub mod version;
pub use version::REVISION;
