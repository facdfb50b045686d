//! Canary traces. Each canary gets a producer span from its schedule slot
//! until its outcome is known (delivered: unset status; lost or refused:
//! error), and its W3C `traceparent` travels in the message headers. Each
//! catch makes a consumer span whose parent is the `traceparent` it arrived
//! with (a pipeline service's span, when the pipeline uses OpenTelemetry),
//! linked to the canary's producer span.

use crate::canary::{wall, TRACEPARENT};
use crate::outcome::{Arrival, FailureKind, LaneId, LedgerEvent, Observer, Resolution};
use crate::transport::End as Endpoint;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanKind, Status, TraceContextExt, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, Span};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// How a producer span ends.
#[derive(Debug, Clone, Copy)]
pub enum End {
    Delivered,
    DeadLettered,
    Lost {
        deadline: Duration,
    },
    PublishFailed(FailureKind),
    /// chirp stopped before the canary resolved.
    Unresolved,
}

/// One probe's tracer, with the span names and attributes of its two ends.
pub struct CanaryTracer {
    tracer: SdkTracer,
    send_name: String,
    receive_name: String,
    send_attrs: Vec<KeyValue>,
    receive_attrs: Vec<KeyValue>,
}

impl std::fmt::Debug for CanaryTracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CanaryTracer")
            .field("send", &self.send_name)
            .finish()
    }
}

fn messaging(end: &Endpoint, operation: &'static str, probe: &str) -> Vec<KeyValue> {
    let mut attrs = vec![
        KeyValue::new("messaging.system", end.system),
        KeyValue::new("messaging.operation.type", operation),
        KeyValue::new("probe", probe.to_owned()),
    ];
    if let Some(d) = &end.destination {
        attrs.push(KeyValue::new("messaging.destination.name", d.clone()));
    }
    attrs
}

fn span_name(operation: &str, end: &Endpoint) -> String {
    format!(
        "{operation} {}",
        end.destination.as_deref().unwrap_or("webhook")
    )
}

impl CanaryTracer {
    pub fn new(tracer: SdkTracer, probe: &str, inject: &Endpoint, catch: &Endpoint) -> Self {
        CanaryTracer {
            tracer,
            send_name: span_name("send", inject),
            receive_name: span_name("receive", catch),
            send_attrs: messaging(inject, "send", probe),
            receive_attrs: messaging(catch, "receive", probe),
        }
    }

    /// Starts the producer span of canary `seq` at its slot. Returns the
    /// span, when it is sampled, and the `traceparent` to send either way
    /// (unsampled canaries tell the pipeline not to sample them either).
    pub fn start(
        &self,
        lane: u32,
        seq: u64,
        partition: Option<i32>,
        slot: SystemTime,
    ) -> (Option<Span>, String) {
        let mut attrs = self.send_attrs.clone();
        attrs.push(KeyValue::new("chirp.canary.seq", seq as i64));
        attrs.push(KeyValue::new("chirp.canary.lane", i64::from(lane)));
        if let Some(p) = partition {
            attrs.push(KeyValue::new(
                "messaging.destination.partition.id",
                p.to_string(),
            ));
        }
        let span = self
            .tracer
            .span_builder(self.send_name.clone())
            .with_kind(SpanKind::Producer)
            .with_start_time(slot)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &Context::new());
        let header = traceparent(span.span_context());
        (span.is_recording().then_some(span), header)
    }

    /// Ends a producer span with its outcome, at `at`.
    pub fn end(mut span: Span, end: End, at: SystemTime) {
        match end {
            End::Delivered => span.set_attribute(KeyValue::new("chirp.outcome", "delivered")),
            End::DeadLettered => {
                span.set_attribute(KeyValue::new("chirp.outcome", "dead_lettered"));
                span.set_status(Status::error(
                    "canary dead-lettered: the pipeline rejected it",
                ));
            }
            End::Lost { deadline } => {
                span.set_attribute(KeyValue::new("chirp.outcome", "lost"));
                span.set_status(Status::error(format!(
                    "canary lost: not caught within its deadline of {}",
                    humantime::format_duration(deadline)
                )));
            }
            End::PublishFailed(kind) => {
                span.set_attribute(KeyValue::new("chirp.outcome", "publish_failed"));
                span.set_attribute(KeyValue::new("error.type", kind.as_str()));
                span.set_status(Status::error(format!("publish failed: {}", kind.as_str())));
            }
            End::Unresolved => span.set_attribute(KeyValue::new("chirp.outcome", "in_flight")),
        }
        span.end_with_timestamp(at);
    }

    /// Marks the broker's acknowledgement on a producer span.
    pub fn acknowledged(span: &mut Span, latency: Duration, at: SystemTime) {
        span.add_event_with_timestamp(
            "acknowledged",
            at,
            vec![KeyValue::new(
                "chirp.publish_latency",
                latency.as_secs_f64(),
            )],
        );
    }

    /// Records the consumer span of one catch of canary `seq`. The parent is
    /// the context the message carried, else the producer span; without
    /// either (an unsampled canary whose headers the pipeline dropped) there
    /// is no span.
    pub fn caught(
        &self,
        traceparent: Option<&str>,
        producer: Option<SpanContext>,
        seq: u64,
        arrival: &Arrival,
        at: SystemTime,
    ) {
        let carried = traceparent.map(extract).filter(|sc| sc.is_valid());
        let Some(parent) = carried.clone().or_else(|| producer.clone()) else {
            return;
        };
        let mut attrs = self.receive_attrs.clone();
        attrs.push(KeyValue::new("chirp.canary.seq", seq as i64));
        let outcome = match arrival {
            Arrival::Delivered { latency, .. } => {
                attrs.push(KeyValue::new("chirp.latency", latency.as_secs_f64()));
                "delivered"
            }
            Arrival::DeadLettered { latency } => {
                attrs.push(KeyValue::new("chirp.latency", latency.as_secs_f64()));
                "dead_lettered"
            }
            Arrival::Duplicate => "duplicate",
            Arrival::Late => "late",
            Arrival::NeverSent => return,
        };
        attrs.push(KeyValue::new("chirp.outcome", outcome));
        let links = producer
            .filter(|p| p.is_valid())
            .map(|p| vec![Link::with_context(p)])
            .unwrap_or_default();
        let cx = Context::new().with_remote_span_context(parent);
        let mut span = self
            .tracer
            .span_builder(self.receive_name.clone())
            .with_kind(SpanKind::Consumer)
            .with_start_time(at)
            .with_attributes(attrs)
            .with_links(links)
            .start_with_context(&self.tracer, &cx);
        span.end_with_timestamp(at);
    }
}

/// The W3C `traceparent` of a span context.
pub fn traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags().to_u8()
    )
}

/// The span context in a `traceparent` header (invalid when malformed).
pub fn extract(header: &str) -> SpanContext {
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), header.to_owned())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().clone()
}

/// One probe's canary traces: starts a producer span as each canary is
/// sent, keeps it open (when sampled) until the canary resolves, and records
/// a consumer span for every catch. Open spans are bounded by the canaries in flight.
pub struct TraceObserver {
    tracer: CanaryTracer,
    deadline: Duration,
    open: Mutex<HashMap<(u32, u64), Span>>,
}

impl TraceObserver {
    pub fn new(tracer: CanaryTracer, deadline: Duration) -> Self {
        TraceObserver {
            tracer,
            deadline,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, u64), Span>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends every open producer span as unresolved (at shutdown).
    pub fn end_open(&self, now: SystemTime) {
        for (_, span) in self.open().drain() {
            CanaryTracer::end(span, End::Unresolved, now);
        }
    }
}

impl Observer for TraceObserver {
    fn sending(&self, lane: LaneId, seq: u64, slot: tokio::time::Instant) -> Option<String> {
        let (span, header) = self.tracer.start(lane.id, seq, lane.partition, wall(slot));
        if let Some(span) = span {
            self.open().insert((lane.id, seq), span);
        }
        Some(header)
    }

    fn observe(&self, lane: LaneId, events: &[LedgerEvent]) {
        for e in events {
            match e {
                LedgerEvent::Sent { .. } => {}
                LedgerEvent::Acknowledged { seq, latency, at } => {
                    if let Some(span) = self.open().get_mut(&(lane.id, *seq)) {
                        CanaryTracer::acknowledged(span, *latency, wall(*at));
                    }
                }
                LedgerEvent::Caught {
                    seq,
                    arrival,
                    at,
                    traceparent,
                } => {
                    let producer = self
                        .open()
                        .get(&(lane.id, *seq))
                        .map(|s| s.span_context().clone());
                    self.tracer
                        .caught(traceparent.as_deref(), producer, *seq, arrival, wall(*at));
                }
                LedgerEvent::Resolved {
                    seq,
                    slot,
                    resolution,
                    at,
                } => {
                    let Some(span) = self.open().remove(&(lane.id, *seq)) else {
                        continue;
                    };
                    let (end, when) = match resolution {
                        Resolution::Delivered { .. } => (End::Delivered, *at),
                        Resolution::DeadLettered => (End::DeadLettered, *at),
                        Resolution::Lost => (
                            End::Lost {
                                deadline: self.deadline,
                            },
                            *slot + self.deadline,
                        ),
                        Resolution::PublishFailed(kind) => (End::PublishFailed(*kind), *at),
                    };
                    CanaryTracer::end(span, end, wall(when));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracer(ratio: f64) -> CanaryTracer {
        use opentelemetry::trace::TracerProvider as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
                opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(ratio),
            )))
            .build();
        let end = |d: &str| Endpoint {
            system: "nats",
            messaging: Some("nats"),
            destination: Some(d.to_owned()),
            connection: None,
            description: String::new(),
        };
        CanaryTracer::new(provider.tracer("test"), "p", &end("in"), &end("out"))
    }

    #[test]
    fn unsampled_canaries_still_carry_a_trace_context_that_says_so() {
        let (span, header) = tracer(0.0).start(0, 1, None, SystemTime::now());
        assert!(span.is_none());
        let sc = extract(&header);
        assert!(sc.is_valid() && !sc.is_sampled(), "{header}");
        let (span, header) = tracer(1.0).start(0, 1, Some(3), SystemTime::now());
        assert!(span.is_some());
        assert!(extract(&header).is_sampled(), "{header}");
    }

    #[test]
    fn traceparent_round_trips_and_rejects_garbage() {
        let h = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let sc = extract(h);
        assert!(sc.is_valid() && sc.is_sampled() && sc.is_remote());
        assert_eq!(traceparent(&sc), h);
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        ] {
            assert!(!extract(bad).is_valid(), "{bad}");
        }
    }
}
