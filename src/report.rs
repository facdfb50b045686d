//! What chirp tells people: per-probe reports for `/api/probes`, the status
//! page and `chirp check`, the text table, and the pass/fail evaluation of
//! `check`'s gates.

use crate::probe::ledger::{Counts, FailureKind, Latencies};
use crate::probe::Probe;
use crate::stats::Summary;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;
use tokio::time::Instant;

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
    pub fn of(p: &Probe, now: Instant) -> Self {
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
            slo: p.slo_state(now),
            slo_threshold: p.config.slo.latency.map(|l| l.threshold.as_secs_f64()),
            partitions: if p.per_partition {
                p.lanes()
                    .iter()
                    .map(|lane| {
                        let s = lane.ledger().snapshot(now);
                        PartitionReport {
                            partition: lane.id,
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

fn cell(s: &Summary, pick: fn(&Summary) -> f64) -> String {
    if s.count == 0 {
        "-".into()
    } else {
        human_seconds(pick(s))
    }
}

fn row(name: &str, c: &Counts, s: &Summary) -> Vec<String> {
    vec![
        name.to_owned(),
        c.sent.to_string(),
        c.delivered.to_string(),
        c.lost.to_string(),
        c.publish_failed.to_string(),
        c.in_flight.to_string(),
        c.duplicate.to_string(),
        c.late.to_string(),
        c.reordered.to_string(),
        cell(s, |s| s.p50),
        cell(s, |s| s.p90),
        cell(s, |s| s.p99),
        cell(s, |s| s.p999),
        cell(s, |s| s.max),
    ]
}

/// The per-probe table (with a row per partition in per-partition mode)
/// shown by `check` and the status page.
pub fn text_table(rows: &[ProbeReport], span: Span) -> String {
    let header = [
        "PROBE",
        "SENT",
        "DELIVERED",
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
                "{} {:.3}% (objective {}%), budget left {:.1}%, burn 1h {:.2}x 6h {:.2}x",
                s.sli,
                s.compliance * 100.0,
                s.objective * 100.0,
                s.error_budget_remaining * 100.0,
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

/// `check`'s pass/fail gates from the command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gates {
    /// Highest acceptable share of sent canaries not delivered, in percent.
    pub max_loss_percent: Option<f64>,
    /// Highest acceptable end-to-end p99.
    pub max_p99: Option<Duration>,
}

/// One objective's result.
#[derive(Debug, Clone, Serialize)]
pub struct Objective {
    pub name: &'static str,
    pub measured: f64,
    pub target: f64,
    pub unit: &'static str,
    pub met: bool,
}

/// Evaluates the gates for one probe over the whole run.
pub fn evaluate(r: &ProbeReport, gates: &Gates) -> Vec<Objective> {
    let mut out = Vec::new();
    let c = &r.counts;
    if let Some(max) = gates.max_loss_percent {
        let bad = c.lost + c.publish_failed;
        let loss = if c.sent == 0 {
            100.0
        } else {
            bad as f64 * 100.0 / c.sent as f64
        };
        out.push(Objective {
            name: "max_loss",
            measured: loss,
            target: max,
            unit: "percent",
            met: c.sent > 0 && loss <= max,
        });
    }
    if let Some(slo) = &r.slo {
        // Each configured objective, over every canary the run resolved.
        let t = &slo.totals;
        for sli in &slo.slis {
            let good = if sli.sli == "latency" {
                t.latency_good
            } else {
                t.delivery_good
            };
            let measured = if t.events == 0 {
                0.0
            } else {
                good as f64 * 100.0 / t.events as f64
            };
            let target = sli.objective * 100.0;
            out.push(Objective {
                name: if sli.sli == "latency" {
                    "latency_slo"
                } else {
                    "delivery_slo"
                },
                measured,
                target,
                unit: "percent",
                met: t.events > 0 && good as f64 >= sli.objective * t.events as f64 - 1e-9,
            });
        }
    }
    if let Some(max) = gates.max_p99 {
        let s = &r.latency.cumulative;
        let p99 = if s.count == 0 { f64::INFINITY } else { s.p99 };
        out.push(Objective {
            name: "max_p99",
            measured: p99,
            target: max.as_secs_f64(),
            unit: "seconds",
            met: s.count > 0 && p99 <= max.as_secs_f64(),
        });
    }
    out
}

/// What an objective compares, for people: `latency_slo` → "delivered within 500ms".
pub fn describe(r: &ProbeReport, o: &Objective) -> String {
    match o.name {
        "latency_slo" => format!(
            "share of canaries delivered within {}",
            r.slo_threshold
                .map(human_seconds)
                .unwrap_or_else(|| "the threshold".into())
        ),
        "delivery_slo" => "share of canaries delivered before the deadline".into(),
        "max_loss" => "share of canaries lost or refused".into(),
        "max_p99" => "end-to-end p99 latency".into(),
        other => other.to_owned(),
    }
}

/// "99.512%" or "12.3ms", for an objective's measured value or target.
pub fn format_value(o: &Objective, v: f64) -> String {
    match o.unit {
        "seconds" if v.is_finite() => human_seconds(v),
        "seconds" => "no data".into(),
        _ => format!("{v:.3}%"),
    }
}

/// A JUnit XML report: one test suite, one test case per probe objective.
pub fn junit(evaluated: &[(ProbeReport, Vec<Objective>)], elapsed_s: f64) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let cases: usize = evaluated.iter().map(|(_, o)| o.len()).sum();
    let failures: usize = evaluated
        .iter()
        .map(|(_, o)| o.iter().filter(|x| !x.met).count())
        .sum();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"chirp check\" tests=\"{cases}\" failures=\"{failures}\" time=\"{elapsed_s:.3}\">\n  <testsuite name=\"chirp check\" tests=\"{cases}\" failures=\"{failures}\" errors=\"0\" time=\"{elapsed_s:.3}\">\n"
    );
    for (r, objectives) in evaluated {
        for o in objectives {
            let (measured, target) = (format_value(o, o.measured), format_value(o, o.target));
            let bound = if o.unit == "seconds" || o.name == "max_loss" {
                "at most"
            } else {
                "at least"
            };
            out.push_str(&format!(
                "    <testcase classname=\"chirp.{}\" name=\"{}\" time=\"0\">\n",
                esc(&r.name),
                esc(o.name)
            ));
            let text = format!(
                "{}: {}: measured {measured}, objective {bound} {target} ({} canaries sent)",
                r.name,
                describe(r, o),
                r.counts.sent
            );
            if o.met {
                out.push_str(&format!("      <system-out>{}</system-out>\n", esc(&text)));
            } else {
                out.push_str(&format!(
                    "      <failure message=\"{}\" type=\"objective\">{}</failure>\n",
                    esc(&format!(
                        "{}: measured {measured}, objective {bound} {target}",
                        o.name
                    )),
                    esc(&text)
                ));
            }
            out.push_str("    </testcase>\n");
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
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
}
