//! Exporters: the Prometheus endpoint and OTLP push, side by side, both
//! reading the same [`catalogue`] of metrics. They observe probes; they
//! decide nothing.

pub mod catalogue;
pub mod listener;
pub mod otlp;
pub mod process;
pub mod prometheus;
pub mod sources;
