//! What state a probe is in (down, degraded, no data, healthy) and why:
//! the rules the page's legend and the README describe, from the facts one
//! probe's report and history give.

use super::{seconds, span};
use crate::history::HistoryView;
use crate::outcome::Counts;
use crate::probe::PublishFailure;
use crate::report::{self, ProbeReport, Watched};
use crate::slo::SloState;
use std::time::Duration;
use tokio::time::Instant;

/// "Nothing caught" makes a probe down after this many intervals (and at
/// least its deadline): the default of `alerts.silent_intervals`, so the page
/// and `ChirpNoCanaryCaught` agree.
pub const SILENT_INTERVALS: u32 = 10;

/// A probe's state, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Down,
    Degraded,
    NoData,
    Healthy,
}

impl State {
    pub const ALL: [State; 4] = [State::Down, State::Degraded, State::NoData, State::Healthy];

    /// What the page says.
    pub fn label(&self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Down => "down",
            State::NoData => "no data",
        }
    }

    /// The CSS class and `data-state` value.
    pub fn class(&self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Degraded => "degraded",
            State::Down => "down",
            State::NoData => "nodata",
        }
    }

    /// A shape beside the colour, for readers who do not tell the colours apart.
    pub fn icon(&self) -> &'static str {
        match self {
            State::Healthy => "✓",
            State::Degraded => "▲",
            State::Down => "✕",
            State::NoData => "…",
        }
    }
}

/// What the page knows of one probe at one moment: plain data, so the
/// state rules and the rendering can be tested without a running probe.
#[derive(Debug, Clone)]
pub struct Facts {
    pub name: String,
    pub inject: &'static str,
    pub catch: &'static str,
    pub interval: Duration,
    pub deadline: Duration,
    /// The inject and catch clients are connected (`chirp_probe_up`).
    pub up: bool,
    /// Since start.
    pub counts: Counts,
    /// p99 end-to-end latency over the last minute (the ledger's rolling
    /// window, as `/metrics` has it), if anything was delivered in it.
    pub p99_minute: Option<Duration>,
    /// Canaries delivered in that window (what the p99 is taken from).
    pub delivered_minute: u64,
    /// The latency SLO's threshold, if the probe has one.
    pub threshold: Option<Duration>,
    pub slo: Option<SloState>,
    pub history: HistoryView,
    /// When a canary was last caught; `None` if none ever was.
    pub last_catch: Option<Instant>,
    /// How long nothing was caught (since the schedule started, if nothing ever was).
    pub silent_for: Duration,
    pub last_failure: Option<PublishFailure>,
}

impl Facts {
    /// Reads probe `w` (its `report`, taken at `now`).
    pub fn of(w: &Watched, report: &ProbeReport, now: Instant) -> Facts {
        let p = &w.probe;
        let lanes = p.lanes();
        let last = lanes.iter().map(|l| l.ledger().last_caught()).max();
        // Silence counts from the last catch, or from the schedule's start
        // (the first slot): not from before the catch side was ready.
        let quiet_since = lanes
            .iter()
            .map(|l| {
                let l = l.ledger();
                l.last_caught().max(l.intended(0))
            })
            .max();
        // A catch at the catch point (not one on the dead-letter queue).
        let caught = lanes.iter().any(|l| l.ledger().ever_caught());
        let window = &report.latency.window;
        Facts {
            name: report.name.clone(),
            inject: report.inject,
            catch: report.catch,
            interval: p.config.interval,
            deadline: p.config.deadline,
            up: report.up,
            counts: report.counts,
            p99_minute: (window.count > 0).then(|| Duration::from_secs_f64(window.p99)),
            delivered_minute: window.count,
            threshold: p.config.slo.latency.map(|l| l.threshold),
            slo: report.slo.clone(),
            history: w.history.view(now),
            last_catch: last.filter(|_| caught),
            silent_for: quiet_since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t)),
            last_failure: p.last_publish_failure(),
        }
    }
}

/// After this long without a catch a probe is down: its deadline, or
/// [`SILENT_INTERVALS`] intervals when that is longer.
pub fn silence_limit(interval: Duration, deadline: Duration) -> Duration {
    deadline.max(interval.saturating_mul(SILENT_INTERVALS))
}

/// A burn rate of an SLI over `window`, if the probe has that SLI.
fn burn(slo: &SloState, sli: usize, window: &str) -> f64 {
    slo.slis[sli]
        .burn_rates
        .iter()
        .find(|(w, _)| *w == window)
        .map_or(0.0, |(_, b)| *b)
}

/// The state of a probe and why, by these rules, in this order:
///
/// - **down** when its clients are disconnected from the broker; or nothing
///   was caught for longer than [`silence_limit`]; or canaries resolved in
///   the last minute and none of them was delivered;
/// - **no data** when no canary has resolved yet;
/// - **degraded** when in the last minute a canary was lost or refused, or
///   p99 exceeded the latency objective's threshold; or an SLI's 1-hour
///   burn rate is above 1 (the budget goes faster than the period allows);
/// - **healthy** otherwise.
pub fn assess(f: &Facts) -> (State, String) {
    if !f.up {
        return (
            State::Down,
            "disconnected from the broker (chirp_probe_up is 0)".into(),
        );
    }
    let limit = silence_limit(f.interval, f.deadline);
    if f.silent_for > limit {
        let since = if f.last_catch.is_some() {
            ""
        } else {
            " since start"
        };
        return (
            State::Down,
            format!(
                "nothing caught for {}{since} (limit {})",
                span(f.silent_for),
                span(limit)
            ),
        );
    }
    let minute = &f.history.last_minute;
    if minute.resolved() > 0 && minute.delivered == 0 {
        return (
            State::Down,
            format!(
                "none of the {} canaries resolved in the last minute was delivered",
                report::thousands(minute.resolved())
            ),
        );
    }
    if f.counts.delivered + f.counts.dead_lettered + f.counts.lost + f.counts.publish_failed == 0 {
        return (State::NoData, "no canary has resolved yet".into());
    }
    let mut why = Vec::new();
    if minute.failed() > 0 {
        why.push(format!(
            "{} of {} lost, refused or dead-lettered in the last minute",
            report::thousands(minute.failed()),
            report::thousands(minute.resolved())
        ));
    }
    if let (Some(p99), Some(threshold)) = (f.p99_minute, f.threshold) {
        if p99 > threshold {
            why.push(format!(
                "p99 {} over the {} objective",
                seconds(p99),
                seconds(threshold)
            ));
        }
    }
    if let Some(slo) = &f.slo {
        for (i, sli) in slo.slis.iter().enumerate() {
            let b = burn(slo, i, "1h");
            if b > 1.0 {
                why.push(format!("{} budget burning {b:.1}× over 1h", sli.sli));
            }
        }
    }
    if why.is_empty() {
        (State::Healthy, String::new())
    } else {
        (State::Degraded, why.join("; "))
    }
}
