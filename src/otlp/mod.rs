//! OTLP export of metrics and traces (opentelemetry-otlp, gRPC or
//! HTTP/protobuf). The SDK runs its own export threads: probing never waits
//! for a collector, metrics are aggregates of fixed size whatever the
//! collector does, and spans wait in a bounded queue (dropped when full).
//! Shutdown flushes both once, within the export timeout.

pub mod export;
pub mod metrics;
pub mod trace;

use crate::config::{Catch, Inject, OtlpConfig, ProbeConfig};
use crate::probe::Probe;
use export::{ExportSetupError, SignalStatus};
use opentelemetry::metrics::{Histogram, MeterProvider as _};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::metrics::{
    Aggregation, Instrument, PeriodicReader, SdkMeterProvider, Stream,
};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use std::sync::Arc;
use std::time::Duration;
use trace::{CanaryTracer, EndPoint};

/// Spans waiting for export beyond this many are dropped.
const SPAN_QUEUE: usize = 4096;

/// The running exporters.
pub struct Telemetry {
    meters: SdkMeterProvider,
    tracers: Option<SdkTracerProvider>,
    meter: opentelemetry::metrics::Meter,
    histograms: [Histogram<f64>; 3],
    interval: Duration,
    timeout: Duration,
    /// Export counts per signal, also served on `/metrics`.
    pub status: Vec<Arc<SignalStatus>>,
    observers: Option<metrics::Observers>,
}

/// One probe's instruments, shared by its lanes.
pub struct ProbeTelemetry {
    /// `probe`, `chirp.inject`, `chirp.catch`, `messaging.system` and
    /// `messaging.destination.name` (of the inject side).
    pub attrs: Vec<KeyValue>,
    latency: Histogram<f64>,
    publish: Histogram<f64>,
    lag: Histogram<f64>,
    pub tracer: Option<CanaryTracer>,
}

impl std::fmt::Debug for ProbeTelemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbeTelemetry")
            .field("attrs", &self.attrs)
            .finish()
    }
}

impl ProbeTelemetry {
    /// The attributes of one lane's series (`partition` in per-partition mode).
    pub fn lane_attrs(&self, partition: Option<i32>) -> Vec<KeyValue> {
        let mut a = self.attrs.clone();
        if let Some(p) = partition {
            a.push(KeyValue::new(
                "messaging.destination.partition.id",
                p.to_string(),
            ));
        }
        a
    }
}

/// What one lane's ledger records into.
#[derive(Debug, Clone)]
pub struct LaneTelemetry {
    pub probe: Arc<ProbeTelemetry>,
    attrs: Vec<KeyValue>,
    pub partition: Option<i32>,
}

impl LaneTelemetry {
    pub fn new(probe: Arc<ProbeTelemetry>, partition: Option<i32>) -> Self {
        LaneTelemetry {
            attrs: probe.lane_attrs(partition),
            probe,
            partition,
        }
    }

    pub fn latency(&self, d: Duration) {
        self.probe.latency.record(d.as_secs_f64(), &self.attrs);
    }

    pub fn publish(&self, d: Duration) {
        self.probe.publish.record(d.as_secs_f64(), &self.attrs);
    }

    pub fn lag(&self, d: Duration) {
        self.probe.lag.record(d.as_secs_f64(), &self.attrs);
    }

    pub fn tracer(&self) -> Option<&CanaryTracer> {
        self.probe.tracer.as_ref()
    }
}

fn inject_end(i: &Inject) -> EndPoint {
    EndPoint {
        system: i.system(),
        destination: match i {
            Inject::Nats(n) => Some(n.subject.clone()),
            Inject::Kafka(k) => Some(k.topic.clone()),
            Inject::Http(_) => None,
        },
    }
}

fn catch_end(c: &Catch) -> EndPoint {
    EndPoint {
        system: c.system(),
        destination: match c {
            Catch::Nats(n) => Some(n.subject.clone()),
            Catch::Kafka(k) => Some(k.topic.clone()),
            Catch::Http(_) => None,
        },
    }
}

/// The resource: chirp's own attributes, then those of the environment.
fn resource(config: &OtlpConfig, environment: &str) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.name", "chirp"),
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new(
            "service.instance.id",
            format!("{:032x}", rand::random::<u128>()),
        ),
        KeyValue::new("deployment.environment.name", environment.to_owned()),
    ];
    attrs.extend(
        config
            .resource
            .iter()
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    // Later values win for the same key.
    Resource::builder_empty().with_attributes(attrs).build()
}

/// The most series one instrument keeps (the SDK's default, 2000, is
/// reached by the quantile gauges of a probe on a 200-partition topic).
const MAX_SERIES: usize = 1 << 16;

/// Every instrument may have up to [`MAX_SERIES`] series; latency
/// instruments are base-2 exponential histograms (160 buckets, scale up to
/// 20: about 0.3 % relative error), with exact min and max.
fn view(i: &Instrument) -> Option<Stream> {
    let mut stream = Stream::builder().with_cardinality_limit(MAX_SERIES);
    if metrics::HISTOGRAMS.contains(&i.name()) {
        stream = stream.with_aggregation(Aggregation::Base2ExponentialHistogram {
            max_size: 160,
            max_scale: 20,
            record_min_max: true,
        });
    }
    stream.build().ok()
}

impl Telemetry {
    /// Starts the exporters. Must be called inside the tokio runtime.
    pub fn start(config: &OtlpConfig, environment: &str) -> Result<Telemetry, ExportSetupError> {
        let resource = resource(config, environment);
        let metric_status = Arc::new(SignalStatus::new(
            "metrics",
            config.metrics_endpoint.redacted(),
        ));
        let exporter = export::metric_exporter(config, Arc::clone(&metric_status))?;
        let reader = PeriodicReader::builder(exporter)
            .with_interval(config.interval)
            .build();
        let meters = SdkMeterProvider::builder()
            .with_resource(resource.clone())
            .with_reader(reader)
            .with_view(view)
            .build();
        let scope = InstrumentationScope::builder("chirp")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        let meter = meters.meter_with_scope(scope);
        let histogram = |name: &'static str, help: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(help)
                .build()
        };
        let histograms = [
            histogram(
                metrics::HISTOGRAMS[0],
                "End-to-end latency of delivered canaries, from the intended send time.",
            ),
            histogram(
                metrics::HISTOGRAMS[1],
                "Time from the send call to the broker's acknowledgement.",
            ),
            histogram(metrics::HISTOGRAMS[2], "Actual minus intended send time."),
        ];
        let mut status = vec![metric_status];
        let tracers = match &config.traces {
            None => None,
            Some(t) => {
                let trace_status = Arc::new(SignalStatus::new(
                    "traces",
                    config.traces_endpoint.redacted(),
                ));
                let exporter = export::span_exporter(config, Arc::clone(&trace_status))?;
                status.push(trace_status);
                let batch = BatchConfigBuilder::default()
                    .with_max_queue_size(SPAN_QUEUE)
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build();
                let processor = BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build();
                Some(
                    SdkTracerProvider::builder()
                        .with_resource(resource)
                        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                            t.sample_ratio,
                        ))))
                        .with_span_processor(processor)
                        .build(),
                )
            }
        };
        tracing::info!(
            protocol = config.protocol.as_str(),
            metrics = %config.metrics_endpoint,
            traces = tracers.as_ref().map(|_| config.traces_endpoint.redacted()),
            interval = %humantime::format_duration(config.interval),
            "Exporting over OTLP."
        );
        Ok(Telemetry {
            meters,
            tracers,
            meter,
            histograms,
            interval: config.interval,
            timeout: config.timeout,
            status,
            observers: None,
        })
    }

    /// The instruments (and tracer) of one probe.
    pub fn probe(&self, config: &ProbeConfig) -> Arc<ProbeTelemetry> {
        let inject = inject_end(&config.inject);
        let catch = catch_end(&config.catch);
        let mut attrs = vec![
            KeyValue::new("probe", config.name.clone()),
            KeyValue::new("chirp.inject", config.inject.system()),
            KeyValue::new("chirp.catch", config.catch.system()),
        ];
        if inject.system != "http" {
            attrs.push(KeyValue::new("messaging.system", inject.system));
        }
        if let Some(d) = &inject.destination {
            attrs.push(KeyValue::new("messaging.destination.name", d.clone()));
        }
        let tracer = self.tracers.as_ref().map(|p| {
            let scope = InstrumentationScope::builder("chirp")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build();
            CanaryTracer::new(p.tracer_with_scope(scope), &config.name, &inject, &catch)
        });
        let [latency, publish, lag] = self.histograms.clone();
        Arc::new(ProbeTelemetry {
            attrs,
            latency,
            publish,
            lag,
            tracer,
        })
    }

    /// Starts observing the probes' counters and gauges.
    pub fn observe(&mut self, probes: Vec<Arc<Probe>>) {
        self.observers = Some(metrics::observe(
            &self.meter,
            probes,
            self.status.clone(),
            self.interval,
        ));
    }

    /// Ends the spans of canaries still in flight, then exports everything
    /// once more and stops the exporters, waiting at most about twice the
    /// export timeout.
    pub async fn shutdown(self, probes: &[Arc<Probe>]) {
        for p in probes {
            p.end_open_spans();
        }
        let Telemetry {
            meters,
            tracers,
            timeout,
            observers,
            ..
        } = self;
        let flush = tokio::task::spawn_blocking(move || {
            if let Some(t) = tracers {
                // A failed export is counted and logged by the exporter itself.
                if let Err(e) = t.shutdown_with_timeout(timeout) {
                    tracing::debug!(error = %e, "OTLP trace export stopped with an error.");
                }
            }
            if let Err(e) = meters.shutdown_with_timeout(timeout) {
                tracing::debug!(error = %e, "OTLP metric export stopped with an error.");
            }
            drop(observers);
        });
        let limit = timeout * 2 + Duration::from_secs(1);
        if tokio::time::timeout(limit, flush).await.is_err() {
            tracing::warn!("The last OTLP export did not finish in time; exiting without it.");
        }
    }
}
