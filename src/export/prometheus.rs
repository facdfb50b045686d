//! The Prometheus exposition of the metric catalogue, in both formats a
//! scraper may ask for: the text format 0.0.4 (the default, what `promtool
//! check metrics` reads) and OpenMetrics 1.0 (when the `Accept` header asks
//! for it, as Prometheus does). Every probe is read once per scrape, so all
//! of one probe's numbers come from one consistent snapshot and `sent =
//! delivered + dead_lettered + lost + publish_failed + in_flight` holds in every scrape,
//! whichever format carries it.
//!
//! One walk of the catalogue builds the families; `prometheus-client`
//! writes OpenMetrics and the `prometheus` crate's text encoder writes 0.0.4,
//! so neither format's escaping is hand-written here.

use super::catalogue::{Kind, Measure, Metric, Read, Rows, Sample, Sources, Value, CATALOGUE};
use crate::stats::Buckets;
use prometheus::proto as text;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

type Labels = Vec<(&'static str, String)>;

/// What `/metrics` serves, from the scrape's `Accept` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// OpenMetrics, answered with the version asked for (1.0.0, or 0.0.1
    /// when no version is named, as the Go client does; the two differ
    /// only in what this exposition does not use).
    OpenMetrics { v1: bool },
}

impl Format {
    /// Picks the format as Prometheus' Go client does: the acceptable
    /// media type with the highest `q` (the first among equals) that chirp
    /// can write; the text format when none is, or there is no header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Text;
        };
        let mut offers: Vec<(f32, Format)> = Vec::new();
        for item in accept.split(',') {
            let mut parts = item.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default().to_ascii_lowercase();
            let (mut q, mut version) = (1.0_f32, None);
            for p in parts {
                if let Some((k, v)) = p.split_once('=') {
                    let v = v.trim().trim_matches('"');
                    match k.trim().to_ascii_lowercase().as_str() {
                        "q" => q = v.parse().unwrap_or(0.0),
                        "version" => version = Some(v.to_owned()),
                        _ => {}
                    }
                }
            }
            // Wildcards name no format: they leave the choice to the
            // fallback (the text format), as in the Go client.
            let format = match (media.as_str(), version.as_deref()) {
                ("application/openmetrics-text", Some("1.0.0")) => Format::OpenMetrics { v1: true },
                ("application/openmetrics-text", None | Some("0.0.1")) => {
                    Format::OpenMetrics { v1: false }
                }
                ("text/plain", None | Some("0.0.4")) => Format::Text,
                _ => continue,
            };
            if q > 0.0 {
                offers.push((q, format));
            }
        }
        // Stable: the first of equal preference wins.
        offers.sort_by(|a, b| b.0.total_cmp(&a.0));
        offers.first().map_or(Format::Text, |(_, f)| *f)
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics { v1: true } => {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            }
            Format::OpenMetrics { v1: false } => {
                "application/openmetrics-text; version=0.0.1; charset=utf-8"
            }
        }
    }
}

/// One series' value.
enum Point {
    Int(u64),
    Float(f64),
    Histogram(Buckets),
    /// An info metric: its labels are the information, its value 1.
    Info,
}

/// One metric with its series, as both encoders read it.
struct Family {
    /// The catalogue's name (with `_total` on counters, `_info` on info).
    name: &'static str,
    help: &'static str,
    kind: Kind,
    series: Vec<(Labels, Point)>,
}

/// Reads everything `/metrics` shows.
#[derive(Debug)]
pub struct Exposition {
    src: Sources,
    environment: String,
}

impl Exposition {
    pub fn new(environment: &str, src: Sources) -> Exposition {
        Exposition {
            src,
            environment: environment.to_owned(),
        }
    }

    /// The exposition in `format`. Every probe is read once, up front;
    /// the families are then built and written one at a time, so a scrape
    /// holds one metric's series beside the text, not every metric's (with
    /// 10,000 probes, the difference between ~100 MB and 1.5 GB at peak).
    pub fn render(&self, format: Format) -> String {
        let rows = Rows::read(&self.src, Instant::now(), true);
        let families = Families {
            exposition: self,
            rows: std::sync::Mutex::new(rows),
        };
        match format {
            Format::Text => {
                let mut out = String::new();
                families.each(|f| out.push_str(&encode_text(std::slice::from_ref(f))));
                out
            }
            Format::OpenMetrics { .. } => {
                let mut registry = Registry::default();
                registry.register_collector(Box::new(OpenMetrics(families.into_owned())));
                let mut out = String::new();
                // Writing to a String cannot fail.
                let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
                out
            }
        }
    }

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
            // chirp's own metrics (process, listener, exports, reload): the
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

    /// Catalogue metric `m` read from `rows`, if it has at least one
    /// series (histograms and the build info always have theirs).
    fn family(&self, m: &Metric, rows: &mut Rows) -> Option<Family> {
        {
            let series: Vec<(Labels, Point)> = match m.read {
                Read::Histogram(measure) => {
                    let i = match measure {
                        Measure::EndToEnd => 0,
                        Measure::Publish => 1,
                        Measure::Lag => 2,
                    };
                    (0..rows.lanes.len())
                        .map(|n| {
                            let r = &rows.lanes[n];
                            let s = Sample {
                                labels: Vec::new(),
                                probe: Some(r.probe),
                                lane: Some((r.lane, r.per_partition)),
                                value: Value::Int(0),
                            };
                            let labels = self.labels_of(rows, &s, &[]);
                            // Each histogram is read once per scrape.
                            let b = std::mem::take(&mut rows.lanes[n].buckets[i]);
                            (labels, Point::Histogram(b))
                        })
                        .collect()
                }
                Read::Build => vec![(
                    vec![
                        ("version", env!("CARGO_PKG_VERSION").to_owned()),
                        ("revision", crate::version::REVISION.to_owned()),
                        ("environment", self.environment.clone()),
                    ],
                    Point::Info,
                )],
                _ => m
                    .samples(rows)
                    .iter()
                    .map(|s| {
                        let point = match (m.kind, &s.value) {
                            (Kind::Counter, Value::Int(v)) => Point::Int(*v),
                            (Kind::Counter, Value::Float(v)) => Point::Float(*v),
                            (_, Value::Int(v)) => Point::Float(*v as f64),
                            (_, Value::Float(v)) => Point::Float(*v),
                        };
                        (self.labels_of(rows, s, m.labels), point)
                    })
                    .collect(),
            };
            // A family with no series is left out (the text format has no
            // way to say it, and an empty OpenMetrics family says nothing).
            (!series.is_empty()).then_some(Family {
                name: m.prometheus,
                help: m.help,
                kind: m.kind,
                series,
            })
        }
    }
}

/// The catalogue's families over one read of every probe, built on demand.
struct Families<'a> {
    exposition: &'a Exposition,
    rows: std::sync::Mutex<Rows>,
}

impl Families<'_> {
    /// Builds each family in catalogue order, hands it to `f`, and drops it.
    fn each(&self, mut f: impl FnMut(&Family)) {
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        for m in CATALOGUE {
            if let Some(family) = self.exposition.family(m, &mut rows) {
                f(&family);
            }
        }
    }

    /// For the OpenMetrics collector, which must own what it encodes: the
    /// read rows, with the families still to be built as it writes.
    fn into_owned(self) -> LazyFamilies {
        LazyFamilies {
            environment: self.exposition.environment.clone(),
            src: self.exposition.src.clone(),
            rows: self.rows,
        }
    }
}

/// [`Families`] owning what it needs, for `prometheus-client`'s registry.
struct LazyFamilies {
    environment: String,
    src: Sources,
    rows: std::sync::Mutex<Rows>,
}

/// The text format 0.0.4, by the `prometheus` crate's encoder.
fn encode_text(families: &[Family]) -> String {
    let families: Vec<text::MetricFamily> = families
        .iter()
        .map(|f| {
            let mut mf = text::MetricFamily::default();
            mf.set_name(f.name.to_owned());
            mf.set_help(f.help.to_owned());
            mf.set_field_type(match f.kind {
                Kind::Counter => text::MetricType::COUNTER,
                Kind::Histogram => text::MetricType::HISTOGRAM,
                // An info metric is a gauge of 1 in this format.
                Kind::Gauge | Kind::UpDown | Kind::Info => text::MetricType::GAUGE,
            });
            let metrics = f
                .series
                .iter()
                .map(|(labels, point)| {
                    let mut m = text::Metric::from_label(
                        labels
                            .iter()
                            .map(|(k, v)| {
                                let mut l = text::LabelPair::default();
                                l.set_name((*k).to_owned());
                                l.set_value(v.clone());
                                l
                            })
                            .collect(),
                    );
                    let value = match point {
                        Point::Int(v) => *v as f64,
                        Point::Float(v) => *v,
                        Point::Info => 1.0,
                        Point::Histogram(b) => {
                            m.set_histogram(text_histogram(b));
                            return m;
                        }
                    };
                    if f.kind == Kind::Counter {
                        let mut c = text::Counter::default();
                        c.set_value(value);
                        m.set_counter(c);
                    } else {
                        let mut g = text::Gauge::default();
                        g.set_value(value);
                        m.set_gauge(g);
                    }
                    m
                })
                .collect();
            mf.set_metric(metrics);
            mf
        })
        .collect();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        // Only a family without series fails, and none is built.
        .unwrap_or_default()
}

/// Cumulative buckets; the encoder adds `+Inf` (the catalogue's last
/// bound, `f64::MAX`) itself from the count.
fn text_histogram(b: &Buckets) -> text::Histogram {
    let mut h = text::Histogram::default();
    h.set_sample_count(b.count);
    h.set_sample_sum(b.sum);
    let mut cumulative = 0;
    let buckets = b
        .counts
        .iter()
        .filter_map(|(bound, n)| {
            cumulative += n;
            (*bound < f64::MAX).then(|| {
                let mut x = text::Bucket::default();
                x.set_upper_bound(*bound);
                x.set_cumulative_count(cumulative);
                x
            })
        })
        .collect();
    h.set_bucket(buckets);
    h
}

/// OpenMetrics, by `prometheus-client`.
struct OpenMetrics(LazyFamilies);

impl std::fmt::Debug for OpenMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OpenMetrics")
    }
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Collector for OpenMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let exposition = Exposition {
            src: self.0.src.clone(),
            environment: self.0.environment.clone(),
        };
        let mut rows = self.0.rows.lock().unwrap_or_else(|p| p.into_inner());
        for m in CATALOGUE {
            let Some(fam) = exposition.family(m, &mut rows) else {
                continue;
            };
            let fam = &fam;
            // prometheus-client appends the `_total` and `_info` suffixes itself.
            let name = fam
                .name
                .trim_end_matches("_total")
                .trim_end_matches("_info");
            let kind = match fam.kind {
                Kind::Counter => MetricType::Counter,
                Kind::Histogram => MetricType::Histogram,
                Kind::Info => MetricType::Info,
                Kind::Gauge | Kind::UpDown => MetricType::Gauge,
            };
            let mut f = enc.encode_descriptor(name, fam.help, None, kind)?;
            for (labels, point) in &fam.series {
                match (fam.kind, point) {
                    (_, Point::Info) => f.encode_info(labels)?,
                    (_, Point::Histogram(b)) => f
                        .encode_family(labels)?
                        .encode_histogram::<NoLabelSet>(b.sum, b.count, &b.counts, None)?,
                    (Kind::Counter, Point::Int(v)) => f
                        .encode_family(labels)?
                        .encode_counter::<NoLabelSet, u64, u64>(v, None)?,
                    (Kind::Counter, Point::Float(v)) => f
                        .encode_family(labels)?
                        .encode_counter::<NoLabelSet, f64, u64>(v, None)?,
                    (_, Point::Int(v)) => f.encode_family(labels)?.encode_gauge(&(*v as f64))?,
                    (_, Point::Float(v)) => f.encode_family(labels)?.encode_gauge(v)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::Format;

    #[test]
    fn the_format_is_negotiated_as_prometheus_clients_do() {
        let om = Format::OpenMetrics { v1: true };
        for (accept, want) in [
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain"), Format::Text),
            (Some("text/plain;version=0.0.4;q=1,*/*;q=0.1"), Format::Text),
            (Some("application/json"), Format::Text),
            (Some("application/openmetrics-text"), Format::OpenMetrics { v1: false }),
            // A wildcard is no preference for text over what follows.
            (Some("*/*,application/openmetrics-text;version=1.0.0"), om),
            // What Prometheus 2.x sends by default.
            (Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), om),
            (Some("application/openmetrics-text; version=0.0.1"), Format::OpenMetrics { v1: false }),
            // Preference is q, not order.
            (Some("application/openmetrics-text;q=0.5, text/plain;version=0.0.4"), Format::Text),
            (Some("text/plain;q=0.2,application/openmetrics-text;version=1.0.0;q=0.9"), om),
            // Versions chirp cannot write, and refusals, are skipped.
            (Some("application/openmetrics-text;version=2.0.0,text/plain"), Format::Text),
            (Some("application/openmetrics-text;q=0,text/plain;q=0.1"), Format::Text),
            (Some("application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,application/openmetrics-text;version=1.0.0;q=0.5"), om),
        ] {
            assert_eq!(Format::negotiate(accept), want, "{accept:?}");
        }
    }
}
