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
        for p in &self.probes {
            let labels = vec![
                ("probe", p.name().to_owned()),
                ("environment", self.environment.clone()),
                ("inject", p.config.inject.system().to_owned()),
                ("catch", p.config.catch.system().to_owned()),
            ];
            let up = p.is_up();
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
        Ok(())
    }
}

/// Writes the exposition text.
pub fn render(registry: &prometheus_client::registry::Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
