//! OTLP export of metrics and traces (opentelemetry-otlp, gRPC or
//! HTTP/protobuf). The SDK runs its own export threads: probing never waits
//! for a collector, metrics are aggregates of fixed size whatever the
//! collector does, and spans wait in a bounded queue (dropped when full).
//! Shutdown ends the spans still open and flushes both signals once.

pub mod export;
pub mod metrics;
pub mod trace;

pub use export::{ExportSetupError, SignalStatus};

use crate::config::{OtlpConfig, ProbeConfig};
use crate::export::catalogue::Sources;
use crate::outcome::Observer;
use metrics::{Histograms, LatencyObserver};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::metrics::{
    Aggregation, Instrument, PeriodicReader, SdkMeterProvider, Stream,
};
use opentelemetry_sdk::resource::EnvResourceDetector;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use std::sync::Arc;
use std::time::Duration;
use trace::{CanaryTracer, TraceObserver};

/// Spans waiting for export beyond this many are dropped.
const SPAN_QUEUE: usize = 4096;
/// The most series one instrument keeps (the SDK's default, 2000, is
/// reached by the quantile gauges of a probe on a 200-partition topic).
const MAX_SERIES: usize = 1 << 16;

/// The running exporters.
pub struct Telemetry {
    meters: Option<(SdkMeterProvider, Histograms, opentelemetry::metrics::Meter)>,
    tracers: Option<SdkTracerProvider>,
    interval: Duration,
    timeout: Duration,
    /// Export counts per signal, also served on `/metrics`.
    pub status: Vec<Arc<SignalStatus>>,
    observers: Option<metrics::Observers>,
    /// Each probe's trace observer, by probe name.
    traces: Vec<(String, Arc<TraceObserver>)>,
}

/// The resource: chirp's own attributes, then those of the environment
/// (`OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME`), which win.
fn resource(environment: &str) -> Resource {
    let mut builder = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "chirp"),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("chirp.revision", crate::version::REVISION),
            KeyValue::new(
                "service.instance.id",
                format!("{:032x}", rand::random::<u128>()),
            ),
            KeyValue::new("deployment.environment.name", environment.to_owned()),
        ])
        .with_detectors(&[Box::new(EnvResourceDetector::new())]);
    if let Some(name) = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
    {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

/// Every instrument may have up to [`MAX_SERIES`] series; latency
/// instruments are base-2 exponential histograms (160 buckets, scale up to
/// 20: about 0.3 % relative error), with exact min and max.
fn view(i: &Instrument) -> Option<Stream> {
    let mut stream = Stream::builder().with_cardinality_limit(MAX_SERIES);
    if metrics::histogram_names().any(|n| n == i.name()) {
        stream = stream.with_aggregation(Aggregation::Base2ExponentialHistogram {
            max_size: 160,
            max_scale: 20,
            record_min_max: true,
        });
    }
    stream.build().ok()
}

fn scope() -> InstrumentationScope {
    InstrumentationScope::builder("chirp")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build()
}

/// A probe's attributes: `probe`, `chirp.inject`, `chirp.catch`, and
/// `messaging.system` / `messaging.destination.name` of the inject side.
fn probe_attrs(config: &ProbeConfig) -> Vec<KeyValue> {
    let inject = config.inject.end();
    let mut attrs = vec![
        KeyValue::new("probe", config.name.clone()),
        KeyValue::new("chirp.inject", inject.system),
        KeyValue::new("chirp.catch", config.catch.system()),
    ];
    if let Some(system) = inject.messaging {
        attrs.push(KeyValue::new("messaging.system", system));
    }
    if let Some(d) = inject.destination {
        attrs.push(KeyValue::new("messaging.destination.name", d));
    }
    attrs
}

impl Telemetry {
    /// Starts the exporters. Must be called inside the tokio runtime.
    pub fn start(config: &OtlpConfig, environment: &str) -> Result<Telemetry, ExportSetupError> {
        let resource = resource(environment);
        let mut status = Vec::new();
        let mut timeout = Duration::ZERO;
        let meters = match &config.metrics {
            None => None,
            Some(signal) => {
                let st = Arc::new(SignalStatus::new("metrics", signal.endpoint.redacted()));
                let exporter = export::metric_exporter(config, signal, Arc::clone(&st))?;
                status.push(st);
                timeout = timeout.max(signal.timeout);
                let reader = PeriodicReader::builder(exporter)
                    .with_interval(config.interval)
                    .build();
                let provider = SdkMeterProvider::builder()
                    .with_resource(resource.clone())
                    .with_reader(reader)
                    .with_view(view)
                    .build();
                let meter = provider.meter_with_scope(scope());
                let histograms = Histograms::new(&meter);
                Some((provider, histograms, meter))
            }
        };
        let tracers = match &config.traces {
            None => None,
            Some(signal) => {
                let st = Arc::new(SignalStatus::new("traces", signal.endpoint.redacted()));
                let exporter = export::span_exporter(config, signal, Arc::clone(&st))?;
                status.push(st);
                timeout = timeout.max(signal.timeout);
                let batch = BatchConfigBuilder::default()
                    .with_max_queue_size(SPAN_QUEUE)
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build();
                let processor = BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build();
                let mut builder = SdkTracerProvider::builder()
                    .with_resource(resource)
                    .with_span_processor(processor);
                // Without a ratio in the file, the SDK follows OTEL_TRACES_SAMPLER.
                if let Some(ratio) = config.sample_ratio {
                    builder = builder.with_sampler(Sampler::ParentBased(Box::new(
                        Sampler::TraceIdRatioBased(ratio),
                    )));
                }
                Some(builder.build())
            }
        };
        let show = |s: &Option<crate::config::SignalConfig>| {
            s.as_ref()
                .map(|s| format!("{} over {}", s.endpoint, s.protocol.as_str()))
        };
        tracing::info!(
            metrics = show(&config.metrics),
            traces = show(&config.traces),
            interval = %humantime::format_duration(config.interval),
            "Exporting over OTLP."
        );
        Ok(Telemetry {
            meters,
            tracers,
            interval: config.interval,
            timeout,
            status,
            observers: None,
            traces: Vec::new(),
        })
    }

    /// A probe ended (a reload): the spans of its canaries still open end
    /// now, as at shutdown, and its trace observer goes.
    pub fn forget(&mut self, probe: &str) {
        let now = std::time::SystemTime::now();
        self.traces.retain(|(name, t)| {
            if name == probe {
                t.end_open(now);
            }
            name != probe
        });
    }

    /// The observers that record one probe's latency histograms and traces.
    pub fn observers(
        &mut self,
        config: &ProbeConfig,
        per_partition: bool,
    ) -> Vec<Arc<dyn Observer>> {
        let mut out: Vec<Arc<dyn Observer>> = Vec::new();
        if let Some((_, histograms, _)) = &self.meters {
            out.push(Arc::new(LatencyObserver::new(
                histograms.clone(),
                probe_attrs(config),
                per_partition,
            )));
        }
        if let Some(p) = &self.tracers {
            let tracer = CanaryTracer::new(
                p.tracer_with_scope(scope()),
                &config.name,
                &config.inject.end(),
                &config.catch.end(&config.name),
            );
            let t = Arc::new(TraceObserver::new(tracer, config.deadline));
            self.traces.push((config.name.clone(), Arc::clone(&t)));
            out.push(t);
        }
        out
    }

    /// Starts observing the counters and gauges of `src` (its OTLP counts
    /// are these exporters').
    pub fn observe(&mut self, mut src: Sources) {
        src.otlp = self.status.clone();
        if let Some((_, _, meter)) = &self.meters {
            self.observers = Some(metrics::observe(meter, src, probe_attrs, self.interval));
        }
    }

    /// Ends the spans of canaries still in flight, then exports everything
    /// once more and stops the exporters, waiting at most `limit`.
    pub async fn shutdown(self, limit: Duration) {
        let now = std::time::SystemTime::now();
        for (_, t) in &self.traces {
            t.end_open(now);
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
            if let Some((m, _, _)) = meters {
                if let Err(e) = m.shutdown_with_timeout(timeout) {
                    tracing::debug!(error = %e, "OTLP metric export stopped with an error.");
                }
            }
            drop(observers);
        });
        if tokio::time::timeout(limit, flush).await.is_err() {
            tracing::warn!("The last OTLP export did not finish in time; exiting without it.");
        }
    }
}
