//! The Prometheus exposition of the metric catalogue: a collector that reads
//! every probe at scrape time, so all of one probe's numbers come from one
//! consistent snapshot and `sent = delivered + lost + publish_failed +
//! in_flight` holds in every scrape.

use super::catalogue::{Kind, Measure, Read, Rows, Sample, Sources, Value, CATALOGUE};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::fmt::Error;
use tokio::time::Instant;

type Labels = Vec<(&'static str, String)>;

#[derive(Debug)]
struct Exposition {
    src: Sources,
    environment: String,
}

/// The registry behind `/metrics`.
pub fn registry(environment: &str, src: Sources) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition {
        src,
        environment: environment.to_owned(),
    }));
    registry
}

/// Writes the exposition text.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

impl Exposition {
    /// `probe`, `environment`, `inject`, `catch` of the probe `s` belongs
    /// to (`partition` in per-partition mode), then `extra`.
    fn labels_of(&self, rows: &Rows, s: &Sample, extra: &[(&'static str, &'static str)]) -> Labels {
        let mut l = match s.probe.and_then(|i| rows.probes.get(i)) {
            Some(w) => {
                let c = &w.probe.config;
                vec![
                    ("probe", c.name.clone()),
                    ("environment", self.environment.clone()),
                    ("inject", c.inject.system().to_owned()),
                    ("catch", c.catch.system().to_owned()),
                ]
            }
            // chirp's own metrics (listener, exports, reload): the
            // environment tells two chirps apart in one Prometheus.
            None => vec![("environment", self.environment.clone())],
        };
        if let Some((lane, true)) = s.lane {
            l.push(("partition", lane.id.to_string()));
        }
        l.extend(
            extra
                .iter()
                .zip(&s.labels)
                .map(|((k, _), v)| (*k, v.to_string())),
        );
        l
    }
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), Error> {
        let rows = Rows::read(&self.src, Instant::now());
        for m in CATALOGUE {
            // prometheus-client appends the `_total` and `_info` suffixes itself.
            let name = m
                .prometheus
                .trim_end_matches("_total")
                .trim_end_matches("_info");
            match m.read {
                Read::Histogram(measure) => {
                    let i = match measure {
                        Measure::EndToEnd => 0,
                        Measure::Publish => 1,
                        Measure::Lag => 2,
                    };
                    let mut f = enc.encode_descriptor(name, m.help, None, MetricType::Histogram)?;
                    for r in &rows.lanes {
                        let s = Sample {
                            labels: Vec::new(),
                            probe: Some(r.probe),
                            lane: Some((r.lane, r.per_partition)),
                            value: Value::Int(0),
                        };
                        let b = &r.buckets[i];
                        let labels = self.labels_of(&rows, &s, &[]);
                        f.encode_family(&labels)?
                            .encode_histogram::<NoLabelSet>(b.sum, b.count, &b.counts, None)?;
                    }
                }
                Read::Build => {
                    let mut f = enc.encode_descriptor(name, m.help, None, MetricType::Info)?;
                    f.encode_info(&[
                        ("version", env!("CARGO_PKG_VERSION")),
                        ("revision", crate::version::REVISION),
                        ("environment", self.environment.as_str()),
                    ])?;
                }
                _ => {
                    let samples = m.samples(&rows);
                    if samples.is_empty() {
                        continue;
                    }
                    let kind = match m.kind {
                        Kind::Counter => MetricType::Counter,
                        _ => MetricType::Gauge,
                    };
                    let mut f = enc.encode_descriptor(name, m.help, None, kind)?;
                    for s in &samples {
                        let labels = self.labels_of(&rows, s, m.labels);
                        let mut e = f.encode_family(&labels)?;
                        match (m.kind, &s.value) {
                            (Kind::Counter, Value::Int(v)) => {
                                e.encode_counter::<NoLabelSet, u64, u64>(v, None)?
                            }
                            (Kind::Counter, Value::Float(v)) => {
                                e.encode_counter::<NoLabelSet, f64, u64>(v, None)?
                            }
                            (_, Value::Int(v)) => e.encode_gauge(&(*v as f64))?,
                            (_, Value::Float(v)) => e.encode_gauge(v)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
