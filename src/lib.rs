//! chirp: a synthetic heartbeat and latency prober for event pipelines.
//! It sends signed canaries into a pipeline, catches them where the pipeline
//! hands them out, and reports what happened to every one of them.
#![forbid(unsafe_code)]

pub mod canary;
pub mod config;
pub mod otlp;
pub mod probe;
pub mod report;
pub mod runtime;
pub mod server;
pub mod slo;
pub mod stats;
pub mod transport;
