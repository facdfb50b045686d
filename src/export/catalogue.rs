//! Every metric chirp exports, once: its Prometheus name, its OpenTelemetry
//! name, type, unit, extra labels, help text, and how to read it from a
//! snapshot. Both exporters walk this table, and a test compares it with
//! `docs/metrics.md`, so the two exports and the reference cannot drift apart.

use super::listener::Rejection;
use super::process::ProcessRow;
pub use super::sources::{Live, ReloadStatus, Running, Sources};
use crate::outcome::{Counts, FailureKind, LaneId};
use crate::report::Watched;
use crate::slo::{SliState, SloState};
use crate::stats::{Buckets, Summary};
use std::borrow::Cow;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A gauge in Prometheus, an up-down counter in OTLP.
    UpDown,
    Histogram,
    Info,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge | Kind::UpDown => "gauge",
            Kind::Histogram => "histogram",
            Kind::Info => "info",
        }
    }
}

/// Where a metric is documented in `docs/metrics.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Outcomes,
    Observations,
    Latency,
    Slo,
    Probe,
    Transport,
    Listener,
    Export,
    Config,
    Process,
}

impl Group {
    pub const ALL: [Group; 10] = [
        Group::Outcomes,
        Group::Observations,
        Group::Latency,
        Group::Slo,
        Group::Probe,
        Group::Transport,
        Group::Listener,
        Group::Export,
        Group::Config,
        Group::Process,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Outcomes => "outcomes",
            Group::Observations => "observations",
            Group::Latency => "latency",
            Group::Slo => "slo",
            Group::Probe => "probe",
            Group::Transport => "transport",
            Group::Listener => "listener",
            Group::Export => "export",
            Group::Config => "config",
            Group::Process => "process",
        }
    }
}

/// Which latency a histogram holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    EndToEnd,
    Publish,
    Lag,
}

/// How a metric's values are read from one collection's [`Rows`].
#[derive(Clone, Copy)]
pub enum Read {
    /// One value per lane.
    Count(fn(&Counts) -> u64),
    /// One value per lane and failure kind (label `kind` / `error.type`).
    FailedByKind,
    Lane(fn(&LaneRow) -> f64),
    /// Percentiles per lane, over the last minute and since start (labels `percentile`, `window`).
    Quantiles(fn(&LaneRow) -> (Summary, Summary)),
    /// Recorded as canaries resolve (OTLP); read from the ledger's buckets (Prometheus).
    Histogram(Measure),
    /// Per probe with objectives; per SLI when `per_sli` (label `sli`).
    SloTotal {
        per_sli: bool,
        pick: fn(&SloState, &str) -> u64,
    },
    Sli(fn(&SliState) -> f64),
    /// Per SLI and window (labels `sli`, `window`).
    BurnRate,
    Slo(fn(&SloRow) -> Option<f64>),
    /// chirp's version (label `version`).
    Build,
    /// OTLP exports by signal (label `signal`): attempts, or failures.
    Exports {
        failures: bool,
    },
    /// Client connections lost, by named connection and role.
    Reconnects,
    /// Requests and connections chirp's listener refused, by reason (label `reason`).
    ListenerRejected,
    /// Connections open on chirp's listener.
    ListenerOpen,
    /// The last configuration reload: (successful, Unix time of the last success).
    Reload(fn((bool, f64)) -> f64),
    /// chirp's process (Prometheus only, as client libraries export it).
    Process(fn(&ProcessRow) -> Option<f64>),
}

pub struct Metric {
    /// As exposed on `/metrics`, with `_total` on counters.
    pub prometheus: &'static str,
    /// The OTLP instrument; `None` when OTLP carries it otherwise.
    pub otel: Option<&'static str>,
    pub kind: Kind,
    /// UCUM unit of the OTLP instrument.
    pub unit: &'static str,
    /// Labels beyond the probe's own: (Prometheus, OTLP).
    pub labels: &'static [(&'static str, &'static str)],
    pub help: &'static str,
    pub group: Group,
    pub read: Read,
}

const KIND: &[(&str, &str)] = &[("kind", "error.type")];
// Not `quantile`: Prometheus keeps that label for summaries (`promtool check
// metrics` refuses it on a gauge).
const QUANTILE: &[(&str, &str)] = &[("percentile", "percentile"), ("window", "window")];
const SLI: &[(&str, &str)] = &[("sli", "sli")];
const BURN: &[(&str, &str)] = &[("sli", "sli"), ("window", "window")];
const NONE: &[(&str, &str)] = &[];

macro_rules! metric {
    ($group:ident, $prom:literal, $otel:expr, $kind:ident, $unit:literal, $labels:expr, $read:expr, $help:literal) => {
        Metric {
            prometheus: $prom,
            otel: $otel,
            kind: Kind::$kind,
            unit: $unit,
            labels: $labels,
            help: $help,
            group: Group::$group,
            read: $read,
        }
    };
}

fn sli_good(s: &SloState, sli: &str) -> u64 {
    if sli == "latency" {
        s.totals.latency_good
    } else {
        s.totals.delivery_good
    }
}

pub const CATALOGUE: &[Metric] = &[
    metric!(Outcomes, "chirp_canaries_sent_total", Some("chirp.canaries.sent"), Counter, "{canary}", NONE, Read::Count(|c| c.sent),
        "Canaries sent, one per schedule slot; each ends delivered, dead_lettered, lost or publish_failed, or is in flight."),
    metric!(Outcomes, "chirp_canaries_delivered_total", Some("chirp.canaries.delivered"), Counter, "{canary}", NONE, Read::Count(|c| c.delivered),
        "Canaries caught for the first time before their deadline."),
    metric!(Outcomes, "chirp_canaries_dead_lettered_total", Some("chirp.canaries.dead_lettered"), Counter, "{canary}", NONE, Read::Count(|c| c.dead_lettered),
        "Canaries caught first on the pipeline's dead-letter queue before their deadline (the pipeline rejected them); bad for both SLIs."),
    metric!(Outcomes, "chirp_canaries_lost_total", Some("chirp.canaries.lost"), Counter, "{canary}", NONE, Read::Count(|c| c.lost),
        "Canaries not caught by their deadline."),
    metric!(Outcomes, "chirp_canaries_publish_failed_total", Some("chirp.canaries.publish_failed"), Counter, "{canary}", KIND, Read::FailedByKind,
        "Canaries the producer refused, by kind: timeout, auth, throttled, unavailable, rejected, other (all six always exported)."),
    metric!(Outcomes, "chirp_canaries_in_flight", Some("chirp.canaries.in_flight"), UpDown, "{canary}", NONE, Read::Count(|c| c.in_flight),
        "Canaries sent and not yet resolved."),
    metric!(Observations, "chirp_canaries_duplicate_total", Some("chirp.canaries.duplicate"), Counter, "{canary}", NONE, Read::Count(|c| c.duplicate),
        "Catches of a canary that was already delivered or dead-lettered."),
    metric!(Observations, "chirp_canaries_late_total", Some("chirp.canaries.late"), Counter, "{canary}", NONE, Read::Count(|c| c.late),
        "Catches of a canary after it was resolved as lost or publish_failed (its outcome does not change)."),
    metric!(Observations, "chirp_canaries_reordered_total", Some("chirp.canaries.reordered"), Counter, "{canary}", NONE, Read::Count(|c| c.reordered),
        "Delivered canaries caught after a higher sequence of the same probe (or partition)."),
    metric!(Observations, "chirp_messages_foreign_total", Some("chirp.messages.foreign"), Counter, "{message}", NONE, Read::Count(|c| c.foreign),
        "Messages at the sink with a valid token of another run, instance or probe."),
    metric!(Observations, "chirp_messages_rejected_total", Some("chirp.messages.rejected"), Counter, "{message}", NONE, Read::Count(|c| c.rejected),
        "Messages at the sink with a bad signature or a malformed token, and unsigned or badly signed webhooks."),
    metric!(Observations, "chirp_messages_unrelated_total", Some("chirp.messages.unrelated"), Counter, "{message}", NONE, Read::Count(|c| c.unrelated),
        "Messages at the sink with no canary token."),
    metric!(Latency, "chirp_latency_seconds", Some("chirp.latency"), Histogram, "s", NONE, Read::Histogram(Measure::EndToEnd),
        "End-to-end latency of delivered canaries, from the intended send time (the schedule slot) to the catch."),
    metric!(Latency, "chirp_publish_latency_seconds", Some("chirp.publish_latency"), Histogram, "s", NONE, Read::Histogram(Measure::Publish),
        "Time from the send call to the broker's acknowledgement."),
    metric!(Latency, "chirp_schedule_lag_seconds", Some("chirp.schedule_lag"), Histogram, "s", NONE, Read::Histogram(Measure::Lag),
        "Actual minus intended send time."),
    metric!(Latency, "chirp_latency_quantile_seconds", Some("chirp.latency.quantile"), Gauge, "s", QUANTILE, Read::Quantiles(|r| r.latency),
        "End-to-end latency percentiles from HDR histograms, over the last minute (window=1m) and since start (window=total)."),
    metric!(Latency, "chirp_publish_latency_quantile_seconds", Some("chirp.publish_latency.quantile"), Gauge, "s", QUANTILE, Read::Quantiles(|r| r.publish),
        "Publish latency percentiles from HDR histograms, over the last minute and since start."),
    metric!(Slo, "chirp_sli_events_total", Some("chirp.sli.events"), Counter, "{canary}", SLI, Read::SloTotal { per_sli: true, pick: |s, _| s.totals.events },
        "Canaries resolved (delivered, dead_lettered, lost or publish_failed), per SLI."),
    metric!(Slo, "chirp_sli_good_total", Some("chirp.sli.good"), Counter, "{canary}", SLI, Read::SloTotal { per_sli: true, pick: sli_good },
        "Resolved canaries good for the SLI: delivered (delivery), delivered within the threshold (latency)."),
    metric!(Slo, "chirp_slo_slices_good_total", Some("chirp.slo.slices.good"), Counter, "{slice}", NONE, Read::SloTotal { per_sli: false, pick: |s, _| s.totals.slices_good },
        "Time slices in which every objective held."),
    metric!(Slo, "chirp_slo_slices_total", Some("chirp.slo.slices"), Counter, "{slice}", NONE, Read::SloTotal { per_sli: false, pick: |s, _| s.totals.slices_good + s.totals.slices_bad },
        "Time slices with data (good or bad); slices in which nothing resolved are not counted."),
    metric!(Slo, "chirp_slo_slices_no_data_total", Some("chirp.slo.slices.no_data"), Counter, "{slice}", NONE, Read::SloTotal { per_sli: false, pick: |s, _| s.totals.slices_no_data },
        "Time slices in which no canary resolved."),
    metric!(Slo, "chirp_slo_objective_ratio", Some("chirp.slo.objective"), Gauge, "1", SLI, Read::Sli(|x| x.objective),
        "The objective, as a ratio (0.999 for 99.9%)."),
    metric!(Slo, "chirp_slo_compliance_ratio", Some("chirp.slo.compliance"), Gauge, "1", SLI, Read::Sli(|x| x.compliance),
        "Good / resolved canaries over the SLO period, in this process (1 before any resolved)."),
    metric!(Slo, "chirp_slo_error_budget_canaries", Some("chirp.slo.error_budget.allowance"), Gauge, "{canary}", SLI, Read::Sli(|x| x.error_budget_canaries),
        "Canaries that may fail over the SLO period: (1 - objective) x period / interval, for every lane (partition)."),
    metric!(Slo, "chirp_slo_error_budget_spent_canaries", Some("chirp.slo.error_budget.spent"), Gauge, "{canary}", SLI, Read::Sli(|x| x.error_budget_spent as f64),
        "Canaries bad for the SLI over the SLO period, in this process."),
    metric!(Slo, "chirp_slo_error_budget_remaining_ratio", Some("chirp.slo.error_budget.remaining"), Gauge, "1", SLI, Read::Sli(|x| x.error_budget_remaining),
        "Share of the period's canary allowance not yet spent: 1 - spent / allowance; negative when overspent."),
    metric!(Slo, "chirp_slo_burn_rate", Some("chirp.slo.burn_rate"), Gauge, "", BURN, Read::BurnRate,
        "Bad share over the window (5m, 30m, 1h, 6h, 1d, 3d) divided by the allowed bad share; 1 spends the budget exactly over the period."),
    metric!(Slo, "chirp_slo_slice_compliance_ratio", Some("chirp.slo.slice_compliance"), Gauge, "1", NONE, Read::Slo(|s| Some(s.state.slice_compliance)),
        "Good slices / slices with data over the SLO period, in this process."),
    metric!(Slo, "chirp_slo_latency_threshold_seconds", Some("chirp.slo.latency_threshold"), Gauge, "s", NONE, Read::Slo(|s| s.threshold),
        "The latency SLI's threshold (also an exact bucket bound of chirp_latency_seconds)."),
    metric!(Probe, "chirp_probe_up", Some("chirp.probe.up"), Gauge, "", NONE, Read::Lane(|r| if r.up { 1.0 } else { 0.0 }),
        "1 when the probe's inject and catch clients are connected."),
    metric!(Probe, "chirp_last_caught_timestamp_seconds", Some("chirp.last_caught.timestamp"), Gauge, "s", NONE, Read::Lane(|r| r.last_caught),
        "Unix time of the last catch of one of the probe's canaries (delivered, late or duplicate); the probe's start until the first."),
    metric!(Probe, "chirp_probe_interval_seconds", Some("chirp.probe.interval"), Gauge, "s", NONE, Read::Lane(|r| r.interval),
        "Configured time between canaries."),
    metric!(Probe, "chirp_probe_deadline_seconds", Some("chirp.probe.deadline"), Gauge, "s", NONE, Read::Lane(|r| r.deadline),
        "Configured deadline after which an uncaught canary is lost."),
    metric!(Probe, "chirp_build_info", None, Info, "", &[("version", "service.version"), ("revision", "chirp.revision")], Read::Build,
        "chirp's version and source revision (in OTLP, the resource attributes service.version and chirp.revision); 1 while chirp is scraped, so its absence means chirp is down."),
    metric!(Transport, "chirp_transport_reconnects_total", Some("chirp.transport.reconnects"), Counter, "{reconnect}", &[("connection", "connection"), ("role", "role")], Read::Reconnects,
        "Times a client connection was lost (chirp reconnects, or is reconnecting), by named connection and role: NATS has a client for injects and one for catches; a Kafka connection counts as one client; SQS, which has no connection to lose, counts each time an end stopped reaching it."),
    metric!(Listener, "chirp_http_requests_rejected_total", Some("chirp.http.requests.rejected"), Counter, "{request}", &[("reason", "reason")], Read::ListenerRejected,
        "Requests and connections chirp's listener refused, by reason: connections (at listen.max_connections), tls, header_timeout, body_timeout, body_too_large, malformed, unauthorized (all seven exported while the listener runs)."),
    metric!(Listener, "chirp_http_connections", Some("chirp.http.connections"), UpDown, "{connection}", NONE, Read::ListenerOpen,
        "Connections open on chirp's listener."),
    metric!(Export, "chirp_otlp_exports_total", Some("chirp.otlp.exports"), Counter, "{export}", &[("signal", "signal")], Read::Exports { failures: false },
        "OTLP export attempts, by signal (metrics, traces); only while OTLP export is on."),
    metric!(Export, "chirp_otlp_export_failures_total", Some("chirp.otlp.export.failures"), Counter, "{export}", &[("signal", "signal")], Read::Exports { failures: true },
        "OTLP exports that failed (collector unreachable, slow or refusing), by signal."),
    metric!(Config, "chirp_config_last_reload_successful", Some("chirp.config.last_reload.successful"), Gauge, "", NONE, Read::Reload(|(ok, _)| if ok { 1.0 } else { 0.0 }),
        "1 when the last configuration load (the start, SIGHUP or POST /-/reload) succeeded, 0 when the file on disk is not what runs."),
    metric!(Config, "chirp_config_last_reload_success_timestamp_seconds", Some("chirp.config.last_reload.success_timestamp"), Gauge, "s", NONE, Read::Reload(|(_, at)| at),
        "Unix time of the last successful configuration load."),
    metric!(Process, "process_cpu_seconds_total", None, Counter, "s", NONE, Read::Process(|p| Some(p.cpu_seconds)),
        "User and system CPU time chirp has used, in seconds."),
    metric!(Process, "process_resident_memory_bytes", None, Gauge, "By", NONE, Read::Process(|p| Some(p.resident_bytes)),
        "chirp's resident set size (memory in RAM), in bytes."),
    metric!(Process, "process_virtual_memory_bytes", None, Gauge, "By", NONE, Read::Process(|p| Some(p.virtual_bytes)),
        "chirp's virtual memory size, in bytes."),
    metric!(Process, "process_open_fds", None, Gauge, "", NONE, Read::Process(|p| Some(p.open_fds)),
        "File descriptors chirp has open (sockets included)."),
    metric!(Process, "process_max_fds", None, Gauge, "", NONE, Read::Process(|p| p.max_fds),
        "chirp's limit of open file descriptors (the soft limit; absent when unlimited)."),
    metric!(Process, "process_start_time_seconds", None, Gauge, "s", NONE, Read::Process(|p| Some(p.start_time)),
        "Unix time chirp's process started."),
];

/// One lane's numbers at one collection.
pub struct LaneRow {
    /// Index of the probe in the exporter's list.
    pub probe: usize,
    /// The lane; exporters label it only in per-partition mode.
    pub lane: LaneId,
    pub per_partition: bool,
    pub counts: Counts,
    /// (last minute, since start).
    pub latency: (Summary, Summary),
    pub publish: (Summary, Summary),
    /// Prometheus buckets of end-to-end, publish and lag.
    pub buckets: [Buckets; 3],
    pub up: bool,
    pub interval: f64,
    pub deadline: f64,
    /// Unix seconds of the lane's last catch (its start until the first).
    pub last_caught: f64,
}

/// One probe's SLO state at one collection.
pub struct SloRow {
    pub probe: usize,
    pub state: SloState,
    pub threshold: Option<f64>,
}

/// Everything one scrape or one OTLP collection reads, taken at once per
/// probe, so the invariant holds within a collection.
#[derive(Default)]
pub struct Rows {
    /// The probes read, in the order `probe` indices refer to.
    pub probes: Vec<Watched>,
    /// (last reload successful, its Unix time).
    pub reload: (bool, f64),
    pub lanes: Vec<LaneRow>,
    pub slos: Vec<SloRow>,
    /// (signal, exports, failures).
    pub exports: Vec<(&'static str, u64, u64)>,
    /// (connection, role, times lost).
    pub links: Vec<(String, &'static str, u64)>,
    /// The listener's rejections by reason, and its open connections.
    pub listener: Option<(Vec<(Rejection, u64)>, u64)>,
    /// chirp's process, when `/proc` can be read.
    pub process: Option<ProcessRow>,
}

impl Rows {
    /// Reads every source (the process too, with `process`: only
    /// Prometheus exports it).
    pub fn read(src: &Sources, now: Instant, process: bool) -> Rows {
        let running = src.live.get();
        let mut rows = Rows {
            probes: running.probes.clone(),
            reload: src.reload.read(),
            process: if process { ProcessRow::read() } else { None },
            ..Rows::default()
        };
        for (i, w) in running.probes.iter().enumerate() {
            let p = &w.probe;
            let up = p.is_up();
            if let Some(slo) = &w.slo {
                rows.slos.push(SloRow {
                    probe: i,
                    state: slo.state(now, p.lanes().len()),
                    threshold: p.config.slo.latency.map(|l| l.threshold.as_secs_f64()),
                });
            }
            for lane in p.lanes() {
                let mut l = lane.ledger();
                let snap = l.snapshot(now);
                rows.lanes.push(LaneRow {
                    probe: i,
                    lane: lane.id,
                    per_partition: p.per_partition,
                    counts: snap.counts,
                    latency: (snap.latency.window, snap.latency.cumulative),
                    publish: (snap.publish_latency.window, snap.publish_latency.cumulative),
                    buckets: [l.e2e.buckets(), l.publish.buckets(), l.lag.buckets()],
                    up,
                    interval: p.config.interval.as_secs_f64(),
                    deadline: p.config.deadline.as_secs_f64(),
                    last_caught: crate::canary::wall(l.last_caught())
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64()),
                });
            }
        }
        rows.exports = src
            .otlp
            .iter()
            .map(|s| {
                let (exports, failures) = s.counts();
                (s.signal, exports, failures)
            })
            .collect();
        rows.links = running
            .links
            .iter()
            .map(|l| (l.connection.clone(), l.role, l.reconnects()))
            .collect();
        rows.listener = src.listener.as_ref().map(|l| {
            let rejected = Rejection::ALL.map(|r| (r, l.rejected(r))).to_vec();
            (rejected, l.open())
        });
        rows
    }
}

/// One value of a metric: extra label values (in the order of
/// `Metric::labels`), the lane or probe it belongs to, and the number.
pub struct Sample {
    pub labels: Vec<Cow<'static, str>>,
    /// The lane row (lane metrics) or, with `lane: None`, the probe index (SLO metrics).
    pub probe: Option<usize>,
    pub lane: Option<(LaneId, bool)>,
    pub value: Value,
}

pub enum Value {
    Int(u64),
    Float(f64),
}

impl Metric {
    /// The metric's samples in `rows` (histograms and the build info have none here).
    pub fn samples(&self, rows: &Rows) -> Vec<Sample> {
        let lane = |r: &LaneRow, labels: Vec<&'static str>, value| Sample {
            labels: labels.into_iter().map(Cow::Borrowed).collect(),
            probe: Some(r.probe),
            lane: Some((r.lane, r.per_partition)),
            value,
        };
        let slo = |s: &SloRow, labels: Vec<&'static str>, value| Sample {
            labels: labels.into_iter().map(Cow::Borrowed).collect(),
            probe: Some(s.probe),
            lane: None,
            value,
        };
        let mut out = Vec::new();
        match self.read {
            Read::Count(pick) => out.extend(
                rows.lanes
                    .iter()
                    .map(|r| lane(r, vec![], Value::Int(pick(&r.counts)))),
            ),
            Read::FailedByKind => {
                for r in &rows.lanes {
                    for k in FailureKind::ALL {
                        out.push(lane(r, vec![k.as_str()], Value::Int(r.counts.failed(k))));
                    }
                }
            }
            Read::Lane(pick) => out.extend(
                rows.lanes
                    .iter()
                    .map(|r| lane(r, vec![], Value::Float(pick(r)))),
            ),
            Read::Quantiles(pick) => {
                for r in &rows.lanes {
                    let (window, total) = pick(r);
                    for (w, s) in [("1m", window), ("total", total)] {
                        if s.count == 0 {
                            continue;
                        }
                        for (q, v) in s.quantiles() {
                            out.push(lane(r, vec![q, w], Value::Float(v)));
                        }
                    }
                }
            }
            Read::SloTotal { per_sli, pick } => {
                for s in &rows.slos {
                    if per_sli {
                        for x in &s.state.slis {
                            out.push(slo(s, vec![x.sli], Value::Int(pick(&s.state, x.sli))));
                        }
                    } else {
                        out.push(slo(s, vec![], Value::Int(pick(&s.state, ""))));
                    }
                }
            }
            Read::Sli(pick) => {
                for s in &rows.slos {
                    for x in &s.state.slis {
                        out.push(slo(s, vec![x.sli], Value::Float(pick(x))));
                    }
                }
            }
            Read::BurnRate => {
                for s in &rows.slos {
                    for x in &s.state.slis {
                        for (w, b) in &x.burn_rates {
                            out.push(slo(s, vec![x.sli, w], Value::Float(*b)));
                        }
                    }
                }
            }
            Read::Slo(pick) => {
                for s in &rows.slos {
                    if let Some(v) = pick(s) {
                        out.push(slo(s, vec![], Value::Float(v)));
                    }
                }
            }
            Read::Exports { failures } => {
                for (signal, exports, failed) in &rows.exports {
                    let v = if failures { *failed } else { *exports };
                    out.push(Sample {
                        labels: vec![Cow::Borrowed(*signal)],
                        probe: None,
                        lane: None,
                        value: Value::Int(v),
                    });
                }
            }
            Read::Reconnects => {
                for (connection, role, n) in &rows.links {
                    out.push(Sample {
                        labels: vec![Cow::Owned(connection.clone()), Cow::Borrowed(*role)],
                        probe: None,
                        lane: None,
                        value: Value::Int(*n),
                    });
                }
            }
            Read::ListenerRejected => {
                for (why, n) in rows.listener.iter().flat_map(|(r, _)| r) {
                    out.push(Sample {
                        labels: vec![Cow::Borrowed(why.as_str())],
                        probe: None,
                        lane: None,
                        value: Value::Int(*n),
                    });
                }
            }
            Read::ListenerOpen => {
                if let Some((_, open)) = &rows.listener {
                    out.push(Sample {
                        labels: vec![],
                        probe: None,
                        lane: None,
                        value: Value::Int(*open),
                    });
                }
            }
            Read::Reload(pick) => out.push(Sample {
                labels: vec![],
                probe: None,
                lane: None,
                value: Value::Float(pick(rows.reload)),
            }),
            Read::Process(pick) => {
                if let Some(v) = rows.process.as_ref().and_then(pick) {
                    out.push(Sample {
                        labels: vec![],
                        probe: None,
                        lane: None,
                        value: Value::Float(v),
                    });
                }
            }
            Read::Histogram(_) | Read::Build => {}
        }
        out
    }
}

/// The reference table of one group, as `docs/metrics.md` shows it.
pub fn markdown(group: Group) -> String {
    let mut out = String::from(
        "| Prometheus | OTLP | type | unit | labels | meaning |\n|---|---|---|---|---|---|\n",
    );
    for m in CATALOGUE.iter().filter(|m| m.group == group) {
        let labels: Vec<String> = m
            .labels
            .iter()
            .map(|(p, o)| {
                if p == o {
                    format!("`{p}`")
                } else {
                    format!("`{p}` / `{o}`")
                }
            })
            .collect();
        let otel = m
            .otel
            .map(|o| format!("`{o}`"))
            .unwrap_or_else(|| "—".into());
        let unit = if m.unit.is_empty() {
            String::new()
        } else {
            format!("`{}`", m.unit)
        };
        out.push_str(&format!(
            "| `{}` | {otel} | {} | {unit} | {} | {} |\n",
            m.prometheus,
            m.kind.as_str(),
            labels.join(", "),
            m.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_each_convention() {
        let mut prom: Vec<&str> = CATALOGUE.iter().map(|m| m.prometheus).collect();
        let mut otel: Vec<&str> = CATALOGUE.iter().filter_map(|m| m.otel).collect();
        prom.sort_unstable();
        otel.sort_unstable();
        assert!(prom.windows(2).all(|w| w[0] != w[1]), "{prom:?}");
        assert!(otel.windows(2).all(|w| w[0] != w[1]), "{otel:?}");
        for m in CATALOGUE {
            // chirp's own, or a process metric named as client libraries name it.
            assert!(
                m.prometheus.starts_with("chirp_")
                    || (m.group == Group::Process && m.prometheus.starts_with("process_")),
                "{}",
                m.prometheus
            );
            assert_eq!(
                m.kind == Kind::Counter,
                m.prometheus.ends_with("_total"),
                "{}",
                m.prometheus
            );
            assert!(
                m.otel.is_none_or(|o| o.starts_with("chirp.")),
                "{:?}",
                m.otel
            );
            if m.unit == "s" {
                assert!(
                    m.prometheus
                        .trim_end_matches("_total")
                        .ends_with("_seconds"),
                    "{}",
                    m.prometheus
                );
            }
        }
    }
}
