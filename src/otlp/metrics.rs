//! The OTLP metrics: the same numbers as `/metrics`, under OpenTelemetry
//! names (listed side by side in `docs/metrics.md`). Counters and gauges are
//! observed from the ledgers at each collection, like a Prometheus scrape;
//! latencies are histograms recorded as canaries resolve, aggregated as
//! base-2 exponential histograms so they merge across chirp instances.

use super::export::SignalStatus;
use crate::probe::ledger::{Counts, FailureKind};
use crate::probe::Probe;
use crate::slo::{SliState, SloState};
use crate::stats::Summary;
use opentelemetry::metrics::{AsyncInstrument, Meter};
use opentelemetry::KeyValue;
use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The histograms, by instrument name; a View makes them exponential.
pub const HISTOGRAMS: [&str; 3] = [
    "chirp.latency",
    "chirp.publish_latency",
    "chirp.schedule_lag",
];

/// One lane's numbers at one collection.
struct LaneRow {
    attrs: Vec<KeyValue>,
    counts: Counts,
    latency: (Summary, Summary),
    publish: (Summary, Summary),
    up: bool,
    interval: f64,
    deadline: f64,
}

struct SloRow {
    attrs: Vec<KeyValue>,
    state: SloState,
    threshold: Option<f64>,
}

struct Rows {
    lanes: Vec<LaneRow>,
    slos: Vec<SloRow>,
}

/// Reads every probe once per collection, so one export is as consistent
/// as one scrape. The SDK calls each of the `callbacks` instruments' callback
/// once per collection, in turn: the first call of a round reads the
/// ledgers and the others reuse that snapshot. A snapshot older than
/// `fresh_for` is never reused, whatever the count says.
struct Snapshots {
    probes: Vec<Arc<Probe>>,
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
        let rows = Arc::new(self.read());
        *last = Some(Taken {
            at: Instant::now(),
            served: 1,
            rows: Arc::clone(&rows),
        });
        rows
    }

    fn read(&self) -> Rows {
        let now = tokio::time::Instant::now();
        let mut lanes = Vec::new();
        let mut slos = Vec::new();
        for p in &self.probes {
            let Some(t) = p.telemetry() else { continue };
            let up = p.is_up();
            if let Some(state) = p.slo_state(now) {
                slos.push(SloRow {
                    attrs: t.attrs.clone(),
                    state,
                    threshold: p.config.slo.latency.map(|l| l.threshold.as_secs_f64()),
                });
            }
            for lane in p.lanes() {
                let snap = lane.ledger().snapshot(now);
                lanes.push(LaneRow {
                    attrs: t.lane_attrs(lane.partition.filter(|_| p.per_partition)),
                    counts: snap.counts,
                    latency: (snap.latency.window, snap.latency.cumulative),
                    publish: (snap.publish_latency.window, snap.publish_latency.cumulative),
                    up,
                    interval: p.config.interval.as_secs_f64(),
                    deadline: p.config.deadline.as_secs_f64(),
                });
            }
        }
        Rows { lanes, slos }
    }
}

fn with(attrs: &[KeyValue], extra: impl IntoIterator<Item = KeyValue>) -> Vec<KeyValue> {
    let mut v = attrs.to_vec();
    v.extend(extra);
    v
}

/// Keeps the observable instruments registered.
pub struct Observers {
    _held: Vec<Box<dyn Any + Send + Sync>>,
}

/// Registers observable instruments whose callbacks read one snapshot per collection.
struct Registrar<'m> {
    meter: &'m Meter,
    snaps: Arc<Snapshots>,
    held: Vec<Box<dyn Any + Send + Sync>>,
}

impl Registrar<'_> {
    /// A monotonic counter.
    fn counter(
        &mut self,
        name: &'static str,
        unit: &'static str,
        help: &'static str,
        observe: impl Fn(&Rows, &dyn AsyncInstrument<u64>) + Send + Sync + 'static,
    ) {
        let s = Arc::clone(&self.snaps);
        let c = self
            .meter
            .u64_observable_counter(name)
            .with_unit(unit)
            .with_description(help)
            .with_callback(move |o| observe(&s.rows(), o))
            .build();
        self.held.push(Box::new(c));
    }

    fn gauge(
        &mut self,
        name: &'static str,
        unit: &'static str,
        help: &'static str,
        observe: impl Fn(&Rows, &dyn AsyncInstrument<f64>) + Send + Sync + 'static,
    ) {
        let s = Arc::clone(&self.snaps);
        let g = self
            .meter
            .f64_observable_gauge(name)
            .with_unit(unit)
            .with_description(help)
            .with_callback(move |o| observe(&s.rows(), o))
            .build();
        self.held.push(Box::new(g));
    }
}

type Pick = fn(&Counts) -> u64;
const COUNTERS: [(&str, &str, &str, Pick); 9] = [
    (
        "chirp.canaries.sent",
        "{canary}",
        "Canaries sent (each ends delivered, lost or publish_failed, or is in flight).",
        |c| c.sent,
    ),
    (
        "chirp.canaries.delivered",
        "{canary}",
        "Canaries caught for the first time before their deadline.",
        |c| c.delivered,
    ),
    (
        "chirp.canaries.lost",
        "{canary}",
        "Canaries not caught by their deadline.",
        |c| c.lost,
    ),
    (
        "chirp.canaries.duplicate",
        "{canary}",
        "Catches of a canary that was already delivered.",
        |c| c.duplicate,
    ),
    (
        "chirp.canaries.late",
        "{canary}",
        "Catches of a canary after it was resolved as lost or publish_failed.",
        |c| c.late,
    ),
    (
        "chirp.canaries.reordered",
        "{canary}",
        "Delivered canaries caught after a higher sequence of the same probe.",
        |c| c.reordered,
    ),
    (
        "chirp.messages.foreign",
        "{message}",
        "Messages at the sink with a valid token of another run, instance or probe.",
        |c| c.foreign,
    ),
    (
        "chirp.messages.rejected",
        "{message}",
        "Messages at the sink with a bad signature or a malformed token.",
        |c| c.rejected,
    ),
    (
        "chirp.messages.unrelated",
        "{message}",
        "Messages at the sink with no canary token.",
        |c| c.unrelated,
    ),
];

type LanePick = fn(&LaneRow) -> f64;
const LANE_GAUGES: [(&str, &str, &str, LanePick); 3] = [
    (
        "chirp.probe.up",
        "",
        "1 when the probe's inject and catch clients are connected.",
        |r| if r.up { 1.0 } else { 0.0 },
    ),
    (
        "chirp.probe.interval",
        "s",
        "Configured time between canaries.",
        |r| r.interval,
    ),
    (
        "chirp.probe.deadline",
        "s",
        "Configured deadline after which a canary is lost.",
        |r| r.deadline,
    ),
];

type QuantilePick = fn(&LaneRow) -> (Summary, Summary);
const QUANTILES: [(&str, &str, QuantilePick); 2] = [
    ("chirp.latency.quantile", "End-to-end latency percentiles from HDR histograms, over the last minute (window=1m) and since start (window=total).", |r| r.latency),
    ("chirp.publish_latency.quantile", "Publish latency percentiles from HDR histograms.", |r| r.publish),
];

type SloTotal = fn(&SloState, &str) -> u64;
/// (name, unit, help, per SLI, value)
const SLO_TOTALS: [(&str, &str, &str, bool, SloTotal); 5] = [
    (
        "chirp.sli.events",
        "{canary}",
        "Canaries resolved (delivered, lost or publish_failed), per SLI.",
        true,
        |s, _| s.totals.events,
    ),
    (
        "chirp.sli.good",
        "{canary}",
        "Resolved canaries that were good for the SLI.",
        true,
        |s, sli| {
            if sli == "latency" {
                s.totals.latency_good
            } else {
                s.totals.delivery_good
            }
        },
    ),
    (
        "chirp.slo.slices.good",
        "{slice}",
        "Time slices in which every objective held.",
        false,
        |s, _| s.totals.slices_good,
    ),
    (
        "chirp.slo.slices",
        "{slice}",
        "Time slices with data (good or bad).",
        false,
        |s, _| s.totals.slices_good + s.totals.slices_bad,
    ),
    (
        "chirp.slo.slices.no_data",
        "{slice}",
        "Time slices in which no canary resolved.",
        false,
        |s, _| s.totals.slices_no_data,
    ),
];

type SliPick = fn(&SliState) -> f64;
const SLI_GAUGES: [(&str, &str, &str, SliPick); 3] = [
    (
        "chirp.slo.objective",
        "1",
        "The objective, as a ratio (0.999 for 99.9%).",
        |x| x.objective,
    ),
    (
        "chirp.slo.compliance",
        "1",
        "Good / resolved canaries over the SLO period, in this process.",
        |x| x.compliance,
    ),
    (
        "chirp.slo.error_budget.remaining",
        "1",
        "Share of the period's error budget left (negative when overspent).",
        |x| x.error_budget_remaining,
    ),
];

/// Registers every observed counter and gauge of `probes` on `meter`.
pub fn observe(
    meter: &Meter,
    probes: Vec<Arc<Probe>>,
    status: Vec<Arc<SignalStatus>>,
    interval: Duration,
) -> Observers {
    let snaps = Arc::new(Snapshots {
        probes,
        fresh_for: (interval / 4).min(Duration::from_secs(1)),
        callbacks: std::sync::OnceLock::new(),
        last: Mutex::new(None),
    });
    let mut r = Registrar {
        meter,
        snaps: Arc::clone(&snaps),
        held: Vec::new(),
    };
    for (name, unit, help, pick) in COUNTERS {
        r.counter(name, unit, help, move |rows, o| {
            for l in &rows.lanes {
                o.observe(pick(&l.counts), &l.attrs);
            }
        });
    }
    r.counter(
        "chirp.canaries.publish_failed",
        "{canary}",
        "Canaries the producer refused, by kind of failure (error.type).",
        |rows, o| {
            for l in &rows.lanes {
                for k in FailureKind::ALL {
                    let attrs = with(&l.attrs, [KeyValue::new("error.type", k.as_str())]);
                    o.observe(l.counts.failed(k), &attrs);
                }
            }
        },
    );
    let s = Arc::clone(&snaps);
    r.held.push(Box::new(
        meter
            .i64_observable_up_down_counter("chirp.canaries.in_flight")
            .with_unit("{canary}")
            .with_description("Canaries sent and not yet resolved.")
            .with_callback(move |o| {
                for l in &s.rows().lanes {
                    o.observe(
                        i64::try_from(l.counts.in_flight).unwrap_or(i64::MAX),
                        &l.attrs,
                    );
                }
            })
            .build(),
    ));
    for (name, unit, help, pick) in LANE_GAUGES {
        r.gauge(name, unit, help, move |rows, o| {
            for l in &rows.lanes {
                o.observe(pick(l), &l.attrs);
            }
        });
    }
    for (name, help, pick) in QUANTILES {
        r.gauge(name, "s", help, move |rows, o| {
            for l in &rows.lanes {
                let (window, total) = pick(l);
                observe_quantiles(o, &l.attrs, "1m", &window);
                observe_quantiles(o, &l.attrs, "total", &total);
            }
        });
    }
    observe_slo(&mut r);
    // Every instrument so far reads the snapshot.
    let _ = snaps.callbacks.set(r.held.len() as u64);

    let mut held = r.held;
    for (name, help, failures) in [
        (
            "chirp.otlp.exports",
            "OTLP export attempts, by signal.",
            false,
        ),
        (
            "chirp.otlp.export.failures",
            "OTLP exports that failed (collector unreachable, slow or refusing), by signal.",
            true,
        ),
    ] {
        let status = status.clone();
        held.push(Box::new(
            meter
                .u64_observable_counter(name)
                .with_unit("{export}")
                .with_description(help)
                .with_callback(move |o| {
                    for st in &status {
                        let (exports, failed) = st.counts();
                        let v = if failures { failed } else { exports };
                        o.observe(v, &[KeyValue::new("signal", st.signal)]);
                    }
                })
                .build(),
        ));
    }
    Observers { _held: held }
}

fn observe_quantiles(
    o: &dyn AsyncInstrument<f64>,
    attrs: &[KeyValue],
    window: &'static str,
    s: &Summary,
) {
    if s.count == 0 {
        return;
    }
    for (q, v) in s.quantiles() {
        let a = with(
            attrs,
            [
                KeyValue::new("quantile", q),
                KeyValue::new("window", window),
            ],
        );
        o.observe(v, &a);
    }
}

fn observe_slo(r: &mut Registrar) {
    for (name, unit, help, per_sli, pick) in SLO_TOTALS {
        r.counter(name, unit, help, move |rows, o| {
            for s in &rows.slos {
                if per_sli {
                    for x in &s.state.slis {
                        let a = with(&s.attrs, [KeyValue::new("sli", x.sli)]);
                        o.observe(pick(&s.state, x.sli), &a);
                    }
                } else {
                    o.observe(pick(&s.state, ""), &s.attrs);
                }
            }
        });
    }
    for (name, unit, help, pick) in SLI_GAUGES {
        r.gauge(name, unit, help, move |rows, o| {
            for s in &rows.slos {
                for x in &s.state.slis {
                    o.observe(pick(x), &with(&s.attrs, [KeyValue::new("sli", x.sli)]));
                }
            }
        });
    }
    r.gauge(
        "chirp.slo.burn_rate",
        "",
        "Bad share over the window divided by the allowed bad share.",
        |rows, o| {
            for s in &rows.slos {
                for x in &s.state.slis {
                    for (w, b) in &x.burn_rates {
                        let a = with(
                            &s.attrs,
                            [KeyValue::new("sli", x.sli), KeyValue::new("window", *w)],
                        );
                        o.observe(*b, &a);
                    }
                }
            }
        },
    );
    r.gauge(
        "chirp.slo.slice_compliance",
        "1",
        "Good slices / slices with data over the SLO period, in this process.",
        |rows, o| {
            for s in &rows.slos {
                o.observe(s.state.slice_compliance, &s.attrs);
            }
        },
    );
    r.gauge(
        "chirp.slo.latency_threshold",
        "s",
        "The latency SLI's threshold.",
        |rows, o| {
            for s in rows
                .slos
                .iter()
                .filter_map(|s| s.threshold.map(|t| (t, &s.attrs)))
            {
                o.observe(s.0, s.1);
            }
        },
    );
}
