//! The Prometheus exposition: a collector that reads every probe's ledger at
//! scrape time, so all of one probe's numbers come from one consistent
//! snapshot and the invariant `sent = delivered + lost + publish_failed +
//! in_flight` holds in every scrape. Every metric is listed in `docs/metrics.md`.

use crate::probe::ledger::{FailureKind, Snapshot};
use crate::probe::Probe;
use crate::stats::{Buckets, Summary};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use std::fmt::Error;
use std::sync::Arc;
use tokio::time::Instant;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
pub struct ProbeCollector {
    pub environment: String,
    pub probes: Vec<Arc<Probe>>,
    /// OTLP export status per signal (empty when not exporting).
    pub otlp: Vec<Arc<crate::otlp::export::SignalStatus>>,
}

struct Row {
    labels: Labels,
    snap: Snapshot,
    e2e: Buckets,
    publish: Buckets,
    lag: Buckets,
    up: bool,
    interval: f64,
    deadline: f64,
}

fn with(labels: &Labels, key: &'static str, value: &str) -> Labels {
    let mut l = labels.clone();
    l.push((key, value.to_owned()));
    l
}

fn family<T>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl Iterator<Item = (Labels, T)>,
    mut write: impl FnMut(&mut prometheus_client::encoding::MetricEncoder, T) -> Result<(), Error>,
) -> Result<(), Error> {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in rows {
        let mut f = m.encode_family(&labels)?;
        write(&mut f, value)?;
    }
    Ok(())
}

fn counter<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, u64)> + 'a,
) -> Result<(), Error> {
    family(enc, name, help, MetricType::Counter, rows, |f, v| {
        f.encode_counter::<NoLabelSet, u64, u64>(&v, None)
    })
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, f64)>,
) -> Result<(), Error> {
    family(enc, name, help, MetricType::Gauge, rows, |f, v| {
        f.encode_gauge(&v)
    })
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl Iterator<Item = (Labels, Buckets)>,
) -> Result<(), Error> {
    family(enc, name, help, MetricType::Histogram, rows, |f, b| {
        f.encode_histogram::<NoLabelSet>(b.sum, b.count, &b.counts, None)
    })
}

fn quantiles<'a>(
    rows: &'a [Row],
    pick: impl Fn(&Row) -> (Summary, Summary) + 'a,
) -> impl Iterator<Item = (Labels, f64)> + 'a {
    rows.iter().flat_map(move |r| {
        let (window, total) = pick(r);
        let mut out = Vec::with_capacity(10);
        for (span, s) in [("1m", window), ("total", total)] {
            if s.count == 0 {
                continue;
            }
            for (q, v) in s.quantiles() {
                let l = with(&with(&r.labels, "quantile", q), "window", span);
                out.push((l, v));
            }
        }
        out
    })
}

impl Collector for ProbeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
        let now = Instant::now();
        let mut rows: Vec<Row> = Vec::new();
        let mut slos: Vec<(Labels, crate::slo::SloState, Option<f64>)> = Vec::new();
        for p in &self.probes {
            let labels = vec![
                ("probe", p.name().to_owned()),
                ("environment", self.environment.clone()),
                ("inject", p.config.inject.system().to_owned()),
                ("catch", p.config.catch.system().to_owned()),
            ];
            let up = p.is_up();
            if let Some(state) = p.slo_state(now) {
                let threshold = p.config.slo.latency.map(|l| l.threshold.as_secs_f64());
                slos.push((labels.clone(), state, threshold));
            }
            // Per-partition probes export one series per partition (sum them
            // for the probe); others one series per probe.
            for lane in p.lanes() {
                let mut l = lane.ledger();
                let labels = if p.per_partition {
                    with(&labels, "partition", &lane.id.to_string())
                } else {
                    labels.clone()
                };
                rows.push(Row {
                    labels,
                    snap: l.snapshot(now),
                    e2e: l.e2e.buckets(),
                    publish: l.publish.buckets(),
                    lag: l.lag.buckets(),
                    up,
                    interval: p.config.interval.as_secs_f64(),
                    deadline: p.config.deadline.as_secs_f64(),
                });
            }
        }
        let e = &mut enc;
        let c = |r: &Row| r.snap.counts;
        counter(
            e,
            "chirp_canaries_sent",
            "Canaries sent (each ends delivered, lost or publish_failed, or is in flight).",
            rows.iter().map(|r| (r.labels.clone(), c(r).sent)),
        )?;
        counter(
            e,
            "chirp_canaries_delivered",
            "Canaries caught for the first time before their deadline.",
            rows.iter().map(|r| (r.labels.clone(), c(r).delivered)),
        )?;
        counter(
            e,
            "chirp_canaries_lost",
            "Canaries not caught by their deadline.",
            rows.iter().map(|r| (r.labels.clone(), c(r).lost)),
        )?;
        counter(
            e,
            "chirp_canaries_publish_failed",
            "Canaries the producer refused, by kind of failure.",
            rows.iter().flat_map(|r| {
                FailureKind::ALL
                    .iter()
                    .map(|k| (with(&r.labels, "kind", k.as_str()), c(r).failed(*k)))
                    .collect::<Vec<_>>()
            }),
        )?;
        gauge(
            e,
            "chirp_canaries_in_flight",
            "Canaries sent and not yet resolved.",
            rows.iter()
                .map(|r| (r.labels.clone(), c(r).in_flight as f64)),
        )?;
        counter(
            e,
            "chirp_canaries_duplicate",
            "Catches of a canary that was already delivered.",
            rows.iter().map(|r| (r.labels.clone(), c(r).duplicate)),
        )?;
        counter(
            e,
            "chirp_canaries_late",
            "Catches of a canary after it was resolved as lost or publish_failed.",
            rows.iter().map(|r| (r.labels.clone(), c(r).late)),
        )?;
        counter(
            e,
            "chirp_canaries_reordered",
            "Delivered canaries caught after a higher sequence of the same probe.",
            rows.iter().map(|r| (r.labels.clone(), c(r).reordered)),
        )?;
        counter(
            e,
            "chirp_messages_foreign",
            "Messages at the sink with a valid token of another run, instance or probe.",
            rows.iter().map(|r| (r.labels.clone(), c(r).foreign)),
        )?;
        counter(
            e,
            "chirp_messages_rejected",
            "Messages at the sink with a bad signature or a malformed token.",
            rows.iter().map(|r| (r.labels.clone(), c(r).rejected)),
        )?;
        counter(
            e,
            "chirp_messages_unrelated",
            "Messages at the sink with no canary token.",
            rows.iter().map(|r| (r.labels.clone(), c(r).unrelated)),
        )?;
        histogram(
            e,
            "chirp_latency_seconds",
            "End-to-end latency of delivered canaries, from the intended send time.",
            rows.iter().map(|r| (r.labels.clone(), r.e2e.clone())),
        )?;
        histogram(
            e,
            "chirp_publish_latency_seconds",
            "Time from the send call to the broker's acknowledgement.",
            rows.iter().map(|r| (r.labels.clone(), r.publish.clone())),
        )?;
        histogram(
            e,
            "chirp_schedule_lag_seconds",
            "Actual minus intended send time.",
            rows.iter().map(|r| (r.labels.clone(), r.lag.clone())),
        )?;
        gauge(e, "chirp_latency_quantile_seconds", "End-to-end latency percentiles from HDR histograms, over the last minute (window=\"1m\") and since start (window=\"total\").", quantiles(&rows, |r| (r.snap.latency.window, r.snap.latency.cumulative)))?;
        gauge(
            e,
            "chirp_publish_latency_quantile_seconds",
            "Publish latency percentiles from HDR histograms.",
            quantiles(&rows, |r| {
                (
                    r.snap.publish_latency.window,
                    r.snap.publish_latency.cumulative,
                )
            }),
        )?;
        gauge(
            e,
            "chirp_probe_up",
            "1 when the probe's inject and catch clients are connected.",
            rows.iter()
                .map(|r| (r.labels.clone(), if r.up { 1.0 } else { 0.0 })),
        )?;
        gauge(
            e,
            "chirp_probe_interval_seconds",
            "Configured time between canaries.",
            rows.iter().map(|r| (r.labels.clone(), r.interval)),
        )?;
        gauge(
            e,
            "chirp_probe_deadline_seconds",
            "Configured deadline after which a canary is lost.",
            rows.iter().map(|r| (r.labels.clone(), r.deadline)),
        )?;
        encode_slo(e, &slos)?;
        if !self.otlp.is_empty() {
            // One reading per signal, so the two counters agree in a scrape.
            let counts: Vec<(&str, (u64, u64))> =
                self.otlp.iter().map(|s| (s.signal, s.counts())).collect();
            let rows = |failures: bool| {
                counts.iter().map(move |(signal, (exports, failed))| {
                    let v = if failures { *failed } else { *exports };
                    (vec![("signal", (*signal).to_owned())], v)
                })
            };
            counter(
                e,
                "chirp_otlp_exports",
                "OTLP export attempts, by signal.",
                rows(false),
            )?;
            counter(
                e,
                "chirp_otlp_export_failures",
                "OTLP exports that failed (collector unreachable, slow or refusing), by signal.",
                rows(true),
            )?;
        }
        Ok(())
    }
}

fn encode_slo(
    e: &mut DescriptorEncoder,
    slos: &[(Labels, crate::slo::SloState, Option<f64>)],
) -> Result<(), Error> {
    let per_sli = |f: fn(&crate::slo::SliState, &crate::slo::SloState) -> f64| {
        slos.iter()
            .flat_map(move |(l, s, _)| s.slis.iter().map(move |x| (with(l, "sli", x.sli), f(x, s))))
    };
    counter(
        e,
        "chirp_sli_events",
        "Canaries resolved (delivered, lost or publish_failed), per SLI.",
        per_sli(|_, s| s.totals.events as f64).map(|(l, v)| (l, v as u64)),
    )?;
    counter(
        e,
        "chirp_sli_good",
        "Resolved canaries that were good for the SLI: delivered (delivery), delivered within the threshold (latency).",
        per_sli(|x, s| match x.sli {
            "latency" => s.totals.latency_good as f64,
            _ => s.totals.delivery_good as f64,
        })
        .map(|(l, v)| (l, v as u64)),
    )?;
    counter(
        e,
        "chirp_slo_slices_good",
        "Time slices in which every objective held.",
        slos.iter()
            .map(|(l, s, _)| (l.clone(), s.totals.slices_good)),
    )?;
    counter(
        e,
        "chirp_slo_slices",
        "Time slices with data (good or bad); slices where nothing resolved are not counted.",
        slos.iter()
            .map(|(l, s, _)| (l.clone(), s.totals.slices_good + s.totals.slices_bad)),
    )?;
    counter(
        e,
        "chirp_slo_slices_no_data",
        "Time slices in which no canary resolved.",
        slos.iter()
            .map(|(l, s, _)| (l.clone(), s.totals.slices_no_data)),
    )?;
    gauge(
        e,
        "chirp_slo_objective_ratio",
        "The objective, as a ratio (0.999 for 99.9%).",
        per_sli(|x, _| x.objective),
    )?;
    gauge(
        e,
        "chirp_slo_compliance_ratio",
        "Good / resolved canaries over the SLO period, in this process (1 before any resolved).",
        per_sli(|x, _| x.compliance),
    )?;
    gauge(
        e,
        "chirp_slo_error_budget_remaining_ratio",
        "Share of the period's error budget left (negative when overspent).",
        per_sli(|x, _| x.error_budget_remaining),
    )?;
    gauge(
        e,
        "chirp_slo_burn_rate",
        "Bad share over the window divided by the allowed bad share (1 spends the budget exactly over the period).",
        slos.iter().flat_map(|(l, s, _)| {
            s.slis.iter().flat_map(move |x| {
                x.burn_rates
                    .iter()
                    .map(move |(w, b)| (with(&with(l, "sli", x.sli), "window", w), *b))
            })
        }),
    )?;
    gauge(
        e,
        "chirp_slo_slice_compliance_ratio",
        "Good slices / slices with data over the SLO period, in this process.",
        slos.iter().map(|(l, s, _)| (l.clone(), s.slice_compliance)),
    )?;
    gauge(
        e,
        "chirp_slo_latency_threshold_seconds",
        "The latency SLI's threshold (a bucket bound of chirp_latency_seconds).",
        slos.iter()
            .filter_map(|(l, _, t)| t.map(|t| (l.clone(), t))),
    )?;
    Ok(())
}

/// Writes the exposition text.
pub fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
