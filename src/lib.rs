//! chirp: a synthetic heartbeat and latency prober for event pipelines.
#![forbid(unsafe_code)]

pub mod canary;
pub mod config;
pub mod probe;
pub mod stats;
