//! `chirp check`'s verdicts: the gates from the command line and the SLO
//! objectives, evaluated over the whole run, and the report in text, JSON
//! (`docs/check-report.schema.json`) and JUnit XML.

use super::{human_seconds, text_table, ProbeReport, Span};
use serde::Serialize;
use std::time::Duration;

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
    /// For a percentile gate: whether the run had enough delivered canaries
    /// to resolve it (a p99 needs 100); when not, the value compared is the
    /// maximum, and the verdict says so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolvable: Option<bool>,
}

/// Evaluates the gates for one probe over the whole run.
pub fn evaluate(r: &ProbeReport, gates: &Gates) -> Vec<Objective> {
    let mut out = Vec::new();
    let c = &r.counts;
    if let Some(max) = gates.max_loss_percent {
        let bad = c.lost + c.publish_failed + c.dead_lettered;
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
            resolvable: None,
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
                resolvable: None,
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
            resolvable: Some(s.resolves("p99")),
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
        "max_loss" => "share of canaries lost, refused or dead-lettered".into(),
        "max_p99" if o.resolvable == Some(false) => format!(
            "end-to-end p99 latency, not resolvable: {} delivered canaries cannot resolve a p99 (it needs {}), so this is their maximum",
            r.latency.cumulative.count,
            super::thousands(crate::stats::needs("p99"))
        ),
        "max_p99" => "end-to-end p99 latency".into(),
        other => other.to_owned(),
    }
}

/// One line per probe for JUnit's `<system-out>`: the run's latency
/// percentiles, each unresolvable one marked.
fn latency_lines(evaluated: &[(ProbeReport, Vec<Objective>)]) -> String {
    let mut out = String::new();
    for (r, _) in evaluated {
        let s = &r.latency.cumulative;
        if s.count == 0 {
            out.push_str(&format!("{}: no canary delivered, no latency\n", r.name));
            continue;
        }
        let parts: Vec<String> = [
            ("p50", s.p50),
            ("p90", s.p90),
            ("p95", s.p95),
            ("p99", s.p99),
            ("p999", s.p999),
        ]
        .iter()
        .map(|(n, v)| {
            let shown = n.replace("p999", "p99.9");
            if s.resolves(n) {
                format!("{shown} {}", human_seconds(*v))
            } else {
                let need = crate::stats::needs(n);
                format!(
                    "{shown} {} (not resolvable: needs {} delivered canaries)",
                    human_seconds(*v),
                    super::thousands(need)
                )
            }
        })
        .collect();
        out.push_str(&format!(
            "{}: {} delivered; {}; max {}\n",
            r.name,
            s.count,
            parts.join(", "),
            human_seconds(s.max)
        ));
    }
    out
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
    out.push_str(&format!(
        "    <system-out>{}</system-out>\n",
        esc(&latency_lines(evaluated))
    ));
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every objective was met.
    Met,
    /// An objective failed.
    Failed,
    /// A probe could publish none of its canaries: its target is unreachable.
    Unreachable,
}

/// A finished check: every probe's report and objectives.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub environment: String,
    pub elapsed: Duration,
    pub probes: Vec<(ProbeReport, Vec<Objective>)>,
}

impl CheckReport {
    pub fn new(
        environment: &str,
        reports: Vec<ProbeReport>,
        gates: &Gates,
        elapsed: Duration,
    ) -> Self {
        let probes = reports
            .into_iter()
            .map(|r| {
                let o = evaluate(&r, gates);
                (r, o)
            })
            .collect();
        CheckReport {
            environment: environment.to_owned(),
            elapsed,
            probes,
        }
    }

    pub fn verdict(&self) -> Verdict {
        let unreachable = self.probes.iter().any(|(r, _)| {
            let c = &r.counts;
            c.sent > 0 && c.delivered == 0 && c.publish_failed == c.sent
        });
        if unreachable {
            Verdict::Unreachable
        } else if self.probes.iter().all(|(_, o)| o.iter().all(|x| x.met)) {
            Verdict::Met
        } else {
            Verdict::Failed
        }
    }

    /// The JSON report; an error (never an empty report) if it cannot be written.
    pub fn json(&self) -> Result<String, serde_json::Error> {
        let mut probes = Vec::with_capacity(self.probes.len());
        for (r, o) in &self.probes {
            let mut v = serde_json::to_value(r)?;
            v["objectives"] = serde_json::to_value(o)?;
            v["passed"] = serde_json::Value::Bool(o.iter().all(|x| x.met));
            probes.push(v);
        }
        let doc = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "environment": self.environment,
            "elapsed_seconds": self.elapsed.as_secs_f64(),
            "passed": self.verdict() == Verdict::Met,
            "probes": probes,
        });
        Ok(serde_json::to_string_pretty(&doc)? + "\n")
    }

    pub fn junit(&self) -> String {
        junit(&self.probes, self.elapsed.as_secs_f64())
    }

    pub fn text(&self) -> String {
        check_text(&self.probes, self.elapsed)
    }
}

fn check_text(evaluated: &[(ProbeReport, Vec<Objective>)], elapsed: Duration) -> String {
    let reports: Vec<ProbeReport> = evaluated.iter().map(|(r, _)| r.clone()).collect();
    let mut out = text_table(&reports, Span::Total);
    out.push('\n');
    for (r, objectives) in evaluated {
        for o in objectives {
            let bound = if o.unit == "seconds" || o.name == "max_loss" {
                "at most"
            } else {
                "at least"
            };
            out.push_str(&format!(
                "{} {}: {} measured {} (objective {bound} {}): {}\n",
                if o.met { "PASS" } else { "FAIL" },
                r.name,
                o.name,
                format_value(o, o.measured),
                format_value(o, o.target),
                describe(r, o),
            ));
        }
        if let Some(slo) = &r.slo {
            let t = &slo.totals;
            if t.slices_good + t.slices_bad > 1 {
                out.push_str(&format!(
                    "     {}: {} of {} time slices of {}s good ({} without data)\n",
                    r.name,
                    t.slices_good,
                    t.slices_good + t.slices_bad,
                    slo.slice_seconds,
                    t.slices_no_data
                ));
                for s in &slo.recent_slices {
                    let start = std::time::UNIX_EPOCH + Duration::from_secs(s.start_unix);
                    out.push_str(&format!(
                        "       {} {}: {} canaries, {} delivered, {} within the latency threshold\n",
                        humantime::format_rfc3339_seconds(start),
                        if s.good { "good" } else { "BAD " },
                        s.events,
                        s.delivery_good,
                        s.latency_good
                    ));
                }
            }
        }
    }
    out.push_str(&format!("checked in {:.1}s\n", elapsed.as_secs_f64()));
    out
}
