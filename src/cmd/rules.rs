//! `chirp rules`: Prometheus recording rules and burn-rate alerts for the
//! configured SLOs (see `slo::rules`).

use super::{load, out, Exit};
use std::path::Path;

pub fn run(path: &Path) -> Exit {
    match load(path) {
        Some(c) => {
            out(&crate::slo::rules::render(&c));
            Exit::Ok
        }
        None => Exit::Usage,
    }
}
