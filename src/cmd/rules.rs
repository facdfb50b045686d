//! `chirp rules`: Prometheus recording rules and burn-rate alerts for the
//! configured SLOs (see `slo::rules`).

use super::{load, out, warn, Exit};
use std::path::Path;

pub fn run(path: &Path) -> Exit {
    match load(path) {
        Some(c) => {
            if !c.prometheus {
                warn("export.prometheus is false: these rules read chirp's Prometheus metrics, and ChirpAbsent fires whenever they are missing. Over OTLP, write the equivalent rules for your backend.");
            }
            out(&crate::slo::rules::render(&c));
            Exit::Ok
        }
        None => Exit::Usage,
    }
}
