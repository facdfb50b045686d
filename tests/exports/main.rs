//! The exports: OTLP against a test receiver, `/metrics` scraped by a real
//! Prometheus that evaluates `chirp rules`, the rules checked by promtool,
//! and the metric catalogue against its reference in `docs/metrics.md`.

#[path = "../support/mod.rs"]
mod support;

mod catalogue;
mod dashboards;
mod otlp;
mod prometheus;
mod rules;
