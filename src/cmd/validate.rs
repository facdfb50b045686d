//! `chirp validate`: parse, interpolate and validate without touching the
//! network; print every error at once, or what the file sets up.

use super::{load, Exit};
use std::path::Path;

pub fn run(path: &Path) -> Exit {
    let Some(config) = load(path) else {
        return Exit::Usage;
    };
    let n = config.probes.len();
    println!(
        "{}: ok ({n} probe{}, environment `{}`)",
        path.display(),
        if n == 1 { "" } else { "s" },
        config.environment
    );
    if let Some(o) = &config.otlp {
        let show = |s: &Option<crate::config::SignalConfig>| match s {
            Some(s) => format!("to {} over {}", s.endpoint, s.protocol.as_str()),
            None => "off".to_owned(),
        };
        println!(
            "OTLP: metrics {} every {}; traces {}",
            show(&o.metrics),
            humantime::format_duration(o.interval),
            show(&o.traces)
        );
    }
    Exit::Ok
}
