//! The OTLP metrics: the metric catalogue under its OpenTelemetry names.
//! Counters and gauges are observed from the ledgers at each collection,
//! like a Prometheus scrape; latencies are histograms recorded as canaries
//! resolve (an observer of the ledgers), aggregated as base-2 exponential
//! histograms so they merge across chirp instances.

use crate::export::catalogue::{Kind, Measure, Read, Rows, Sample, Sources, Value, CATALOGUE};
use crate::outcome::{LaneId, LedgerEvent, Observer, Resolution};
use opentelemetry::metrics::{AsyncInstrument, Histogram, Meter};
use opentelemetry::KeyValue;
use std::any::Any;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The histograms' instrument names, which a View makes exponential.
pub fn histogram_names() -> impl Iterator<Item = &'static str> {
    CATALOGUE
        .iter()
        .filter(|m| m.kind == Kind::Histogram)
        .filter_map(|m| m.otel)
}

/// The latency histograms, shared by every probe.
#[derive(Clone)]
pub struct Histograms {
    latency: Histogram<f64>,
    publish: Histogram<f64>,
    lag: Histogram<f64>,
}

impl Histograms {
    pub fn new(meter: &Meter) -> Histograms {
        let make = |measure: Measure| {
            let m = CATALOGUE
                .iter()
                .find(|m| matches!(m.read, Read::Histogram(x) if x == measure))
                .and_then(|m| m.otel.map(|o| (o, m)));
            let (name, m) = match m {
                Some(x) => x,
                None => unreachable!("the catalogue has every histogram"),
            };
            meter
                .f64_histogram(name)
                .with_unit(m.unit)
                .with_description(m.help)
                .build()
        };
        Histograms {
            latency: make(Measure::EndToEnd),
            publish: make(Measure::Publish),
            lag: make(Measure::Lag),
        }
    }
}

/// Records one probe's latencies as its ledgers decide them.
pub struct LatencyObserver {
    histograms: Histograms,
    /// The probe's attributes.
    attrs: Vec<KeyValue>,
    /// With the partition, per lane (per-partition mode).
    lanes: RwLock<Vec<(u32, Arc<[KeyValue]>)>>,
    per_partition: bool,
}

impl LatencyObserver {
    pub fn new(histograms: Histograms, attrs: Vec<KeyValue>, per_partition: bool) -> Self {
        LatencyObserver {
            histograms,
            attrs,
            lanes: RwLock::new(Vec::new()),
            per_partition,
        }
    }

    fn attrs(&self, lane: LaneId) -> Arc<[KeyValue]> {
        if let Some((_, a)) = self
            .lanes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(id, _)| *id == lane.id)
        {
            return Arc::clone(a);
        }
        let a: Arc<[KeyValue]> = lane_attrs(&self.attrs, lane, self.per_partition).into();
        self.lanes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((lane.id, Arc::clone(&a)));
        a
    }
}

impl Observer for LatencyObserver {
    fn observe(&self, lane: LaneId, events: &[LedgerEvent]) {
        let attrs = self.attrs(lane);
        for e in events {
            match e {
                LedgerEvent::Sent { lag, .. } => {
                    self.histograms.lag.record(lag.as_secs_f64(), &attrs)
                }
                LedgerEvent::Acknowledged { latency, .. } => self
                    .histograms
                    .publish
                    .record(latency.as_secs_f64(), &attrs),
                LedgerEvent::Resolved {
                    resolution: Resolution::Delivered { latency },
                    ..
                } => self
                    .histograms
                    .latency
                    .record(latency.as_secs_f64(), &attrs),
                LedgerEvent::Resolved { .. } | LedgerEvent::Caught { .. } => {}
            }
        }
    }
}

/// A probe's attributes plus, in per-partition mode, the lane's partition.
pub fn lane_attrs(probe: &[KeyValue], lane: LaneId, per_partition: bool) -> Vec<KeyValue> {
    let mut a = probe.to_vec();
    if let (true, Some(p)) = (per_partition, lane.partition) {
        a.push(KeyValue::new(
            "messaging.destination.partition.id",
            p.to_string(),
        ));
    }
    a
}

/// Reads every probe once per collection, so one export is as consistent
/// as one scrape. The SDK calls each observable instrument's callback once
/// per collection, in turn: the first call of a round reads the ledgers and
/// the others reuse that snapshot. A snapshot older than `fresh_for` is
/// never reused, whatever the count says.
struct Snapshots {
    src: Sources,
    fresh_for: Duration,
    callbacks: std::sync::OnceLock<u64>,
    last: Mutex<Option<Taken>>,
}

struct Taken {
    at: Instant,
    /// Callbacks served from this snapshot.
    served: u64,
    rows: Arc<Rows>,
}

impl Snapshots {
    fn rows(&self) -> Arc<Rows> {
        let round = self.callbacks.get().copied().unwrap_or(1);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = last.as_mut() {
            if t.served < round && t.at.elapsed() < self.fresh_for {
                t.served += 1;
                return Arc::clone(&t.rows);
            }
        }
        let rows = Rows::read(&self.src, tokio::time::Instant::now(), false);
        let rows = Arc::new(rows);
        *last = Some(Taken {
            at: Instant::now(),
            served: 1,
            rows: Arc::clone(&rows),
        });
        rows
    }
}

/// Keeps the observable instruments registered.
pub struct Observers {
    _held: Vec<Box<dyn Any + Send + Sync>>,
}

/// Registers an observable instrument for every counter and gauge of the
/// catalogue; `attrs` gives a probe's attributes.
pub fn observe(
    meter: &Meter,
    src: Sources,
    attrs: fn(&crate::config::ProbeConfig) -> Vec<KeyValue>,
    interval: Duration,
) -> Observers {
    let snaps = Arc::new(Snapshots {
        src,
        fresh_for: (interval / 4).min(Duration::from_secs(1)),
        callbacks: std::sync::OnceLock::new(),
        last: Mutex::new(None),
    });
    let mut held: Vec<Box<dyn Any + Send + Sync>> = Vec::new();
    for m in CATALOGUE {
        let Some(name) = m.otel else { continue };
        if m.kind == Kind::Histogram {
            continue;
        }
        let s = Arc::clone(&snaps);
        let attributes = move |rows: &Rows, sample: &Sample| -> Vec<KeyValue> {
            let probe = sample
                .probe
                .and_then(|i| rows.probes.get(i))
                .map(|w| attrs(&w.probe.config));
            let mut kv = match (probe, sample.lane) {
                (Some(a), Some((lane, per_partition))) => lane_attrs(&a, lane, per_partition),
                (Some(a), None) => a,
                _ => Vec::new(),
            };
            kv.extend(
                m.labels
                    .iter()
                    .zip(&sample.labels)
                    .map(|((_, key), v)| KeyValue::new(*key, v.to_string())),
            );
            kv
        };
        let instrument: Box<dyn Any + Send + Sync> = match m.kind {
            Kind::Counter => Box::new(
                meter
                    .u64_observable_counter(name)
                    .with_unit(m.unit)
                    .with_description(m.help)
                    .with_callback(move |o: &dyn AsyncInstrument<u64>| {
                        let rows = s.rows();
                        for sample in m.samples(&rows) {
                            if let Value::Int(v) = sample.value {
                                o.observe(v, &attributes(&rows, &sample));
                            }
                        }
                    })
                    .build(),
            ),
            Kind::UpDown => Box::new(
                meter
                    .i64_observable_up_down_counter(name)
                    .with_unit(m.unit)
                    .with_description(m.help)
                    .with_callback(move |o: &dyn AsyncInstrument<i64>| {
                        let rows = s.rows();
                        for sample in m.samples(&rows) {
                            if let Value::Int(v) = sample.value {
                                o.observe(
                                    i64::try_from(v).unwrap_or(i64::MAX),
                                    &attributes(&rows, &sample),
                                );
                            }
                        }
                    })
                    .build(),
            ),
            Kind::Gauge => Box::new(
                meter
                    .f64_observable_gauge(name)
                    .with_unit(m.unit)
                    .with_description(m.help)
                    .with_callback(move |o: &dyn AsyncInstrument<f64>| {
                        let rows = s.rows();
                        for sample in m.samples(&rows) {
                            let v = match sample.value {
                                Value::Int(v) => v as f64,
                                Value::Float(v) => v,
                            };
                            o.observe(v, &attributes(&rows, &sample));
                        }
                    })
                    .build(),
            ),
            Kind::Histogram | Kind::Info => continue,
        };
        held.push(instrument);
    }
    // Every instrument reads the snapshot once per collection.
    let _ = snaps.callbacks.set(held.len() as u64);
    Observers { _held: held }
}
