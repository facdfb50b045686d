//! `chirp validate`: parse, interpolate and validate without touching the
//! network; print every error at once, or what the file sets up.

use super::{load, out, Exit};
use std::path::Path;

pub fn run(path: &Path) -> Exit {
    let Some(config) = load(path) else {
        return Exit::Usage;
    };
    let n = config.probes.len();
    out(&format!(
        "{}: ok ({n} probe{}, environment `{}`)\n",
        std::path::absolute(path)
            .unwrap_or_else(|_| path.to_owned())
            .display(),
        if n == 1 { "" } else { "s" },
        config.environment
    ));
    if let Some(o) = &config.otlp {
        let show = |s: &Option<crate::config::SignalConfig>| match s {
            Some(s) => format!("to {} over {}", s.endpoint, s.protocol.as_str()),
            None => "off".to_owned(),
        };
        out(&format!(
            "OTLP: metrics {} every {}; traces {}\n",
            show(&o.metrics),
            humantime::format_duration(o.interval),
            show(&o.traces)
        ));
    }
    Exit::Ok
}
