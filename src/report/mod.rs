//! What chirp tells people: per-probe reports for `/api/probes`, the status
//! page and `chirp check`, and the text table; `check` adds its verdicts
//! (`check.rs`). Reports read a probe together with its SLO engine.

pub mod check;

use crate::outcome::{Counts, FailureKind};
use crate::probe::ledger::Latencies;
use crate::probe::Probe;
use crate::slo::SloObserver;
use crate::stats::Summary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use tokio::time::Instant;

/// A running probe with its SLO engine: what reports and exporters read.
#[derive(Debug, Clone)]
pub struct Watched {
    pub probe: Arc<Probe>,
    pub slo: Option<Arc<SloObserver>>,
    /// The last hour, minute by minute (the status page).
    pub history: Arc<crate::history::History>,
}

/// Everything known about one probe at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub name: String,
    pub inject: &'static str,
    pub catch: &'static str,
    pub interval_seconds: f64,
    pub deadline_seconds: f64,
    pub up: bool,
    pub counts: Counts,
    pub publish_failed_by_kind: BTreeMap<&'static str, u64>,
    /// End-to-end latency, seconds.
    pub latency: Latencies,
    pub publish_latency: Latencies,
    pub schedule_lag: Latencies,
    /// SLO state, when the probe has objectives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slo: Option<crate::slo::SloState>,
    #[serde(skip)]
    pub slo_threshold: Option<f64>,
    /// Per-partition rows, in per-partition mode (Kafka `partitions:`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<PartitionReport>,
}

/// One partition of a per-partition probe.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionReport {
    pub partition: u32,
    pub counts: Counts,
    pub latency: Latencies,
    pub publish_latency: Latencies,
}

impl ProbeReport {
    pub fn of(w: &Watched, now: Instant) -> Self {
        let p = &w.probe;
        let snap = p.snapshot(now);
        ProbeReport {
            name: p.name().to_owned(),
            inject: p.config.inject.system(),
            catch: p.config.catch.system(),
            interval_seconds: p.config.interval.as_secs_f64(),
            deadline_seconds: p.config.deadline.as_secs_f64(),
            up: p.is_up(),
            publish_failed_by_kind: FailureKind::ALL
                .iter()
                .map(|k| (k.as_str(), snap.counts.failed(*k)))
                .collect(),
            counts: snap.counts,
            latency: snap.latency,
            publish_latency: snap.publish_latency,
            schedule_lag: snap.schedule_lag,
            slo: w.slo.as_ref().map(|s| s.state(now, p.lanes().len())),
            slo_threshold: p.config.slo.latency.map(|l| l.threshold.as_secs_f64()),
            partitions: if p.per_partition {
                p.lanes()
                    .iter()
                    .map(|lane| {
                        let s = lane.ledger().snapshot(now);
                        PartitionReport {
                            partition: lane.id.id,
                            counts: s.counts,
                            latency: s.latency,
                            publish_latency: s.publish_latency,
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }
}

/// Which latency span a table shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The last minute (the live status page).
    Window,
    /// Since start (a `check` run).
    Total,
}

/// Formats seconds for people: `850µs`, `12.3ms`, `1.25s`.
pub fn human_seconds(s: f64) -> String {
    if s < 0.001 {
        format!("{:.0}µs", s * 1e6)
    } else if s < 1.0 {
        let ms = format!("{:.3}", s * 1e3);
        format!("{}ms", ms.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{s:.3}s")
    }
}

/// A percentile's cell: `-` without data, `*` after a value the sample
/// cannot resolve (see [`unresolved_note`]).
fn cell(s: &Summary, name: &str, pick: fn(&Summary) -> f64) -> String {
    if s.count == 0 {
        "-".into()
    } else if name != "max" && !s.resolves(name) {
        format!("{}*", human_seconds(pick(s)))
    } else {
        human_seconds(pick(s))
    }
}

/// The footnote of a table with `*` cells.
pub fn unresolved_note() -> String {
    let needs: Vec<String> = crate::stats::RESOLUTION
        .iter()
        .map(|(n, need)| format!("{} {}", n.replace("p999", "p99.9"), thousands(*need)))
        .collect();
    format!(
        "* not resolvable from so few delivered canaries: it is the sample's maximum. Each percentile needs at least: {}.\n",
        needs.join(", ")
    )
}

fn row(name: &str, c: &Counts, s: &Summary) -> Vec<String> {
    vec![
        name.to_owned(),
        c.sent.to_string(),
        c.delivered.to_string(),
        c.dead_lettered.to_string(),
        c.lost.to_string(),
        c.publish_failed.to_string(),
        c.in_flight.to_string(),
        c.duplicate.to_string(),
        c.late.to_string(),
        c.reordered.to_string(),
        cell(s, "p50", |s| s.p50),
        cell(s, "p90", |s| s.p90),
        cell(s, "p99", |s| s.p99),
        cell(s, "p999", |s| s.p999),
        cell(s, "max", |s| s.max),
    ]
}

/// The per-probe table (with a row per partition in per-partition mode)
/// shown by `check` and the status page.
pub fn text_table(rows: &[ProbeReport], span: Span) -> String {
    let header = [
        "PROBE",
        "SENT",
        "DELIVERED",
        "DEAD-LETTERED",
        "LOST",
        "FAILED",
        "IN-FLIGHT",
        "DUP",
        "LATE",
        "REORDERED",
        "P50",
        "P90",
        "P99",
        "P99.9",
        "MAX",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let pick = |l: &Latencies| match span {
            Span::Window => l.window,
            Span::Total => l.cumulative,
        };
        table.push(row(&r.name, &r.counts, &pick(&r.latency)));
        for p in &r.partitions {
            table.push(row(
                &format!("  partition {}", p.partition),
                &p.counts,
                &pick(&p.latency),
            ));
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            table
                .iter()
                .map(|row| row[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &table {
        let mut line = String::new();
        for (i, v) in row.iter().enumerate() {
            let pad = widths[i] - v.chars().count();
            if i == 0 {
                let _ = write!(line, "{v}{}", " ".repeat(pad));
            } else {
                let _ = write!(line, "  {}{v}", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if table.iter().flatten().any(|c| c.ends_with('*')) {
        out.push_str(&unresolved_note());
    }
    out
}

/// `4320` → `4,320`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line per probe with objectives: compliance, budget left and burn rate
/// per SLI, and slice compliance (the status page's SLO section).
pub fn slo_lines(rows: &[ProbeReport]) -> String {
    let mut out = String::new();
    for r in rows {
        let Some(slo) = &r.slo else { continue };
        let mut parts = Vec::new();
        for s in &slo.slis {
            let burn = |w: &str| {
                s.burn_rates
                    .iter()
                    .find(|(n, _)| *n == w)
                    .map(|(_, b)| *b)
                    .unwrap_or(0.0)
            };
            parts.push(format!(
                "{} {:.3}% (objective {}%), budget left {:.1}% ({} of {} canaries spent), burn 1h {:.2}x 6h {:.2}x",
                s.sli,
                s.compliance * 100.0,
                s.objective * 100.0,
                s.error_budget_remaining * 100.0,
                thousands(s.error_budget_spent),
                thousands(s.error_budget_canaries.floor() as u64),
                burn("1h"),
                burn("6h")
            ));
        }
        let t = &slo.totals;
        parts.push(format!(
            "slices {}/{} good",
            t.slices_good,
            t.slices_good + t.slices_bad
        ));
        let _ = writeln!(out, "{}: {}", r.name, parts.join("; "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_read_naturally() {
        assert_eq!(human_seconds(0.000_85), "850µs");
        assert_eq!(human_seconds(0.0123), "12.3ms");
        assert_eq!(human_seconds(0.5), "500ms");
        assert_eq!(human_seconds(1.25), "1.250s");
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(4320), "4,320");
        assert_eq!(thousands(2_592_000), "2,592,000");
    }
}
