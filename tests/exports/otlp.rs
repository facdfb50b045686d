//! OTLP export against a test receiver built from the official protocol
//! definitions: what arrives over gRPC and over HTTP/protobuf must equal
//! chirp's own ledger and `/metrics`, spans must link producer to consumer
//! through a pipeline hop, and a receiver that is down must not disturb
//! probing, with export resuming once it is back.

use crate::support::otlp::{int_attr, str_attr, Receiver};
use crate::support::{
    self, free_port, wait_for, wait_for_async, NatsServer, Scrape, CHIRP, KEY, SHIPPED,
};
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn config(nats_url: &str, otlp_yaml: &str, probes_yaml: &str) -> chirp::config::Config {
    let text = format!(
        "environment: test\nlisten: 127.0.0.1:0\nsigning_key: {KEY}\n\
         export:\n  otlp:\n{otlp_yaml}\n\
         connections:\n  main:\n    nats: {{url: \"{nats_url}\"}}\nprobes:\n{probes_yaml}"
    );
    chirp::config::load_str(&text, &HashMap::new())
        .unwrap_or_else(|e| panic!("bad test config: {e:?}\n{text}"))
}

fn loopback_probe(name: &str, interval: &str) -> String {
    format!(
        "  - name: {name}\n    interval: {interval}\n    deadline: 5s\n\
         \x20   inject: {{nats: {{connection: main, subject: {name}.loop}}}}\n\
         \x20   catch: {{nats: {{connection: main, subject: {name}.loop}}}}\n"
    )
}

/// `name{signal="metrics"}` on `/metrics`; a missing series fails.
fn otlp_counter(s: &Scrape, name: &str) -> f64 {
    s.sum(name, &[("signal", "metrics")])
}

const OUTCOMES: [(&str, &str); 5] = [
    ("chirp.canaries.sent", "chirp_canaries_sent_total"),
    ("chirp.canaries.delivered", "chirp_canaries_delivered_total"),
    ("chirp.canaries.lost", "chirp_canaries_lost_total"),
    (
        "chirp.canaries.publish_failed",
        "chirp_canaries_publish_failed_total",
    ),
    ("chirp.canaries.in_flight", "chirp_canaries_in_flight"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metrics_equal_the_ledger_and_the_metrics_endpoint() {
    let nats = NatsServer::start();
    let rx = Receiver::start().await;
    let otlp = format!(
        "    endpoint: http://{}\n    protocol: grpc\n    interval: 1s\n    headers: {{x-api-key: k-123}}",
        rx.grpc
    );
    let cfg = config(&nats.url(), &otlp, &loopback_probe("grpc", "20ms"));
    let mut rt = support::start_counted(&cfg, 150).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    let probe = Arc::clone(&rt.probes()[0].probe);
    let counts = probe.counts();
    assert_eq!((counts.sent, counts.delivered, counts.lost), (150, 150, 0));
    let hdr = probe
        .snapshot(tokio::time::Instant::now())
        .latency
        .cumulative;
    let scrape = Scrape::get(rt.addr.unwrap()).await;
    rt.shutdown().await;

    let got = rx.received();
    assert!(!got.metrics.is_empty(), "no metrics arrived");
    assert!(
        got.api_keys.iter().all(|k| k == "k-123"),
        "{:?}",
        got.api_keys
    );
    for (otel, prom) in OUTCOMES {
        assert_eq!(
            got.last_sum(otel, "grpc"),
            Some(scrape.sum(prom, &[("probe", "grpc")])),
            "{otel} differs from {prom}"
        );
    }
    assert_eq!(
        got.last_sum("chirp.canaries.delivered", "grpc"),
        Some(counts.delivered as f64)
    );

    // Cumulative: the last point covers the whole run.
    let points = got.exp_points("chirp.latency", "grpc");
    let last = points.last().expect("an exponential latency histogram");
    assert_eq!(last.count, counts.delivered);
    let buckets: u64 = last
        .positive
        .as_ref()
        .map_or(0, |b| b.bucket_counts.iter().sum());
    assert_eq!(buckets + last.zero_count, last.count);
    let (min, max) = (last.min.unwrap(), last.max.unwrap());
    // HDR keeps whole microseconds at 3 significant figures; the exponential
    // histogram keeps the exact extremes, so they bracket HDR's within that precision.
    assert!(
        min >= hdr.min - 1e-9 && min <= hdr.min * 1.001 + 1e-6,
        "min {min} vs HDR {}",
        hdr.min
    );
    assert!(
        max <= hdr.max + 1e-6 && max >= hdr.max * 0.999 - 1e-6,
        "max {max} vs HDR {}",
        hdr.max
    );
    assert!(min <= hdr.p50 && hdr.p99 <= max + 1e-6);
    let publish = got.exp_points("chirp.publish_latency", "grpc");
    assert_eq!(publish.last().map(|p| p.count), Some(150));

    let resource = got.resource();
    assert_eq!(str_attr(&resource, "service.name"), Some("chirp"));
    assert_eq!(
        str_attr(&resource, "service.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        str_attr(&resource, "deployment.environment.name"),
        Some("test")
    );
    let sent = got.metrics_named("chirp.canaries.sent").pop().unwrap();
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(sum)) = sent.data else {
        panic!("sent is not a sum")
    };
    let attrs = &sum.data_points[0].attributes;
    assert_eq!(str_attr(attrs, "messaging.system"), Some("nats"));
    assert_eq!(
        str_attr(attrs, "messaging.destination.name"),
        Some("grpc.loop")
    );
    assert!(sum.is_monotonic);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_delta_exports_and_traces_add_up_to_the_ledger() {
    let nats = NatsServer::start();
    let rx = Receiver::start().await;
    let otlp = format!(
        "    endpoint: http://{}\n    protocol: http/protobuf\n    interval: 1s\n    temporality: delta\n    headers: {{x-api-key: k-456}}\n    traces: {{sample_ratio: 1}}",
        rx.http
    );
    let cfg = config(&nats.url(), &otlp, &loopback_probe("http", "20ms"));
    let mut rt = support::start_counted(&cfg, 150).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    let counts = rt.probes()[0].probe.counts();
    rt.shutdown().await;

    let got = rx.received();
    assert!(
        got.metrics.len() >= 2,
        "expected several exports, got {}",
        got.metrics.len()
    );
    assert!(
        got.api_keys.iter().all(|k| k == "k-456"),
        "{:?}",
        got.api_keys
    );
    // Traces over HTTP too: a producer span per canary, a consumer span per catch.
    let spans = got.spans();
    assert_eq!(spans.iter().filter(|s| s.kind == 4).count(), 150);
    assert_eq!(spans.iter().filter(|s| s.kind == 5).count(), 150);
    // Delta: each export carries what happened since the previous one.
    let points = got.exp_points("chirp.latency", "http");
    assert!(
        points.len() >= 2,
        "the run spans several exports: {}",
        points.len()
    );
    assert_eq!(
        points.iter().map(|p| p.count).sum::<u64>(),
        counts.delivered
    );
    let delivered: f64 = got
        .metrics_named("chirp.canaries.delivered")
        .iter()
        .flat_map(|m| match &m.data {
            Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) => {
                assert_eq!(s.aggregation_temporality, 1, "delta");
                s.data_points.clone()
            }
            _ => panic!("not a sum"),
        })
        .map(|p| match p.value {
            Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(i)) => {
                i as f64
            }
            _ => 0.0,
        })
        .sum();
    assert_eq!(delivered, counts.delivered as f64);
    assert_eq!(counts.delivered, 150);
}

/// A pipeline service that uses OpenTelemetry: it continues the canary's
/// trace with a span of its own and forwards the message with that span's
/// `traceparent`. It drops every tenth canary.
async fn traced_relay(
    client: async_nats::Client,
    mut sub: async_nats::Subscriber,
    relay_spans: Arc<Mutex<HashMap<u64, (String, String)>>>,
) {
    let signer = chirp::canary::Signer::new(KEY.as_bytes());
    while let Some(msg) = sub.next().await {
        let headers = msg.headers.clone().unwrap_or_default();
        let token = headers.get(chirp::canary::HEADER).unwrap().to_string();
        let seq = signer.decode(&token).unwrap().seq;
        if seq % 10 == 9 {
            continue;
        }
        let tp = headers
            .get("traceparent")
            .expect("traceparent header")
            .to_string();
        let parts: Vec<&str> = tp.split('-').collect();
        let span_id = format!("{:016x}", rand::random::<u64>() | 1);
        relay_spans
            .lock()
            .unwrap()
            .insert(seq, (parts[1].to_owned(), span_id.clone()));
        let mut out = async_nats::HeaderMap::new();
        out.insert(chirp::canary::HEADER, token.as_str());
        out.insert(
            "traceparent",
            format!("00-{}-{span_id}-{}", parts[1], parts[3]).as_str(),
        );
        client
            .publish_with_headers("traced.out", out, msg.payload)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_link_the_canary_through_the_pipeline_and_lost_ones_are_errors() {
    let nats = NatsServer::start();
    let rx = Receiver::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let sub = client.subscribe("traced.in").await.unwrap();
    client.flush().await.unwrap();
    let relay_spans = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn(traced_relay(client.clone(), sub, Arc::clone(&relay_spans)));

    let otlp = format!(
        "    endpoint: http://{}\n    protocol: grpc\n    interval: 1s\n    traces: {{sample_ratio: 1}}",
        rx.grpc
    );
    let probe = "  - name: traced\n    interval: 20ms\n    deadline: 500ms\n\
                 \x20   inject: {nats: {connection: main, subject: traced.in}}\n\
                 \x20   catch: {nats: {connection: main, subject: traced.out}}\n";
    let cfg = config(&nats.url(), &otlp, probe);
    let mut rt = support::start_counted(&cfg, 50).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    let counts = rt.probes()[0].probe.counts();
    assert_eq!((counts.delivered, counts.lost), (45, 5));
    rt.shutdown().await;

    let spans = rx.received().spans();
    let seq_of = |s: &opentelemetry_proto::tonic::trace::v1::Span| {
        int_attr(&s.attributes, "chirp.canary.seq").expect("seq attribute") as u64
    };
    // Kinds: 4 = producer, 5 = consumer. Status codes: 0 unset, 2 error.
    let producers: HashMap<u64, _> = spans
        .iter()
        .filter(|s| s.kind == 4)
        .map(|s| (seq_of(s), s.clone()))
        .collect();
    let consumers: Vec<_> = spans.iter().filter(|s| s.kind == 5).cloned().collect();
    assert_eq!(producers.len(), 50, "one producer span per canary");
    assert_eq!(consumers.len(), 45, "one consumer span per catch");
    let relay = relay_spans.lock().unwrap().clone();
    for c in &consumers {
        let seq = seq_of(c);
        let p = &producers[&seq];
        let (trace, relay_span) = &relay[&seq];
        assert_eq!(
            hex::encode(&c.trace_id),
            *trace,
            "seq {seq}: same trace as the canary"
        );
        assert_eq!(hex::encode(&p.trace_id), *trace);
        assert_eq!(
            hex::encode(&c.parent_span_id),
            *relay_span,
            "seq {seq}: child of the pipeline's span"
        );
        assert_eq!(c.links.len(), 1);
        assert_eq!(
            c.links[0].span_id, p.span_id,
            "seq {seq}: linked to the producer span"
        );
        assert_eq!(str_attr(&c.attributes, "chirp.outcome"), Some("delivered"));
        assert_eq!(str_attr(&p.attributes, "chirp.outcome"), Some("delivered"));
        assert_eq!(p.status.as_ref().map_or(0, |s| s.code), 0);
        assert!(p.end_time_unix_nano >= p.start_time_unix_nano);
    }
    for seq in (0..50u64).filter(|s| s % 10 == 9) {
        let p = &producers[&seq];
        let status = p.status.as_ref().expect("a status");
        assert_eq!(
            status.code, 2,
            "seq {seq}: a lost canary's span is an error"
        );
        assert!(status.message.contains("lost"), "{}", status.message);
        assert_eq!(str_attr(&p.attributes, "chirp.outcome"), Some("lost"));
        // It ends at its deadline, half a second after its slot (both are
        // converted to wall-clock time, each within a microsecond).
        let took = p.end_time_unix_nano - p.start_time_unix_nano;
        assert!(
            (499_990_000..=500_010_000).contains(&took),
            "seq {seq}: {took} ns"
        );
    }
}

/// Captures chirp's log lines (from every thread).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_does_not_disturb_probing_and_export_resumes() {
    let logs = Logs::default();
    let writer = logs.clone();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish(),
    )
    .unwrap();

    let nats = NatsServer::start();
    let port = free_port();
    let otlp = format!(
        "    endpoint: http://127.0.0.1:{port}\n    protocol: grpc\n    interval: 1s\n    timeout: 500ms"
    );
    let cfg = config(&nats.url(), &otlp, &loopback_probe("outage", "20ms"));
    let mut rt = support::start(&cfg).await;
    rt.ready().await;
    let addr = rt.addr.unwrap();
    let failed = |s: &Scrape| otlp_counter(s, "chirp_otlp_export_failures_total");
    wait_for_async(
        "two failed exports",
        Duration::from_secs(15),
        || async move { failed(&Scrape::get(addr).await) >= 2.0 },
    )
    .await;
    let during = rt.probes()[0].probe.counts();
    assert_eq!(
        during.lost, 0,
        "probing goes on while the collector is down"
    );
    assert!(during.delivered > 50, "{during:?}");

    let rx = Receiver::start_on(port, 0).await;
    let r = &rx;
    wait_for(
        "an export after the receiver came back",
        Duration::from_secs(15),
        || !r.received().metrics.is_empty(),
    )
    .await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    let counts = rt.probes()[0].probe.counts();
    let fails_before_shutdown = failed(&Scrape::get(addr).await);
    rt.shutdown().await;

    let got = rx.received();
    assert_eq!(
        got.last_sum("chirp.canaries.sent", "outage"),
        Some(counts.sent as f64)
    );
    assert_eq!(
        got.last_sum("chirp.canaries.delivered", "outage"),
        Some(counts.delivered as f64)
    );
    assert_eq!(counts.lost, 0);
    assert!(counts.sent > during.sent);
    // The failures are counted in the OTLP export too, once it works again.
    let exported_failures = got
        .metrics_named("chirp.otlp.export.failures")
        .pop()
        .expect("the failure counter is exported");
    let Some(opentelemetry_proto::tonic::metrics::v1::metric::Data::Sum(s)) =
        exported_failures.data
    else {
        panic!("not a sum")
    };
    let v = s
        .data_points
        .iter()
        .find(|p| str_attr(&p.attributes, "signal") == Some("metrics"))
        .unwrap();
    let Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(n)) = v.value
    else {
        panic!("not an int")
    };
    assert!(
        n as f64 >= 2.0 && n as f64 <= fails_before_shutdown,
        "{n} vs {fails_before_shutdown}"
    );

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let endpoint = format!("endpoint=http://127.0.0.1:{port}");
    let warnings = text
        .lines()
        // Other tests of this binary may log too: keep this test's endpoint.
        .filter(|l| l.contains(&endpoint))
        .filter(|l| l.contains("OTLP export failed"))
        .count();
    assert_eq!(
        warnings, 1,
        "one warning for the whole outage, not one per export:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains(&endpoint) && l.contains("OTLP export works again")),
        "{text}"
    );
}

/// Kafka record headers and HTTP request headers carry the trace context too:
/// with nothing in between, each consumer span is the producer span's child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_webhook_canaries_carry_their_trace_context() {
    let rx = Receiver::start().await;
    let text = format!(
        "environment: test\nlisten: 127.0.0.1:0\nsigning_key: {KEY}\n\
         export:\n  otlp: {{endpoint: 'http://{}', interval: 1s, traces: {{}}}}\n\
         connections:\n  k:\n    kafka: {{brokers: embedded}}\n\
         probes:\n\
         \x20 - name: kafka\n    interval: 20ms\n\
         \x20   inject: {{kafka: {{connection: k, topic: traced, partitions: all}}}}\n\
         \x20   catch: {{kafka: {{connection: k, topic: traced}}}}\n\
         \x20 - name: webhook\n    interval: 20ms\n\
         \x20   inject: {{http: {{url: /hooks/webhook}}}}\n\
         \x20   catch: {{http: {{}}}}\n",
        rx.grpc
    );
    let cfg = chirp::config::load_str(&text, &HashMap::new()).unwrap();
    let mut rt = support::start_counted(&cfg, 20).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    // (sent, delivered): 20 canaries per lane, on the embedded cluster's 3
    // partitions for Kafka, so nothing below can pass on an empty run.
    let counts: Vec<(u64, u64)> = rt
        .probes()
        .iter()
        .map(|w| (w.probe.counts().sent, w.probe.counts().delivered))
        .collect();
    assert_eq!(counts[0].0, 20 * 3, "{counts:?}");
    assert_eq!(counts[1].0, 20, "{counts:?}");
    rt.shutdown().await;

    let got = rx.received();
    // Every send, acknowledgement and delivery is recorded once, partitions included.
    for (i, probe) in ["kafka", "webhook"].into_iter().enumerate() {
        let (sent, delivered) = counts[i];
        assert_eq!(
            got.last_exp_count("chirp.schedule_lag", probe),
            Some(sent),
            "{probe}"
        );
        assert_eq!(
            got.last_exp_count("chirp.publish_latency", probe),
            Some(sent),
            "{probe}"
        );
        assert_eq!(
            got.last_exp_count("chirp.latency", probe),
            Some(delivered),
            "{probe}"
        );
    }
    let spans = got.spans();
    for (i, probe) in ["kafka", "webhook"].into_iter().enumerate() {
        let of = |kind: i32| -> Vec<_> {
            spans
                .iter()
                .filter(|s| s.kind == kind && str_attr(&s.attributes, "probe") == Some(probe))
                .cloned()
                .collect()
        };
        let (producers, consumers) = (of(4), of(5));
        let (sent, delivered) = counts[i];
        assert_eq!(delivered, sent, "{probe}: {counts:?}");
        assert_eq!(producers.len() as u64, sent, "{probe}");
        assert_eq!(consumers.len() as u64, delivered, "{probe}");
        for c in &consumers {
            let p = producers
                .iter()
                .find(|p| p.span_id == c.parent_span_id)
                .unwrap_or_else(|| {
                    panic!("{probe}: a consumer span whose parent is no producer span")
                });
            assert_eq!(p.trace_id, c.trace_id);
            assert_eq!(
                int_attr(&p.attributes, "chirp.canary.seq"),
                int_attr(&c.attributes, "chirp.canary.seq")
            );
        }
    }
}

/// The binary, as deployed: `chirp run` on the shipped probes.yaml, with OTLP
/// turned on by the standard environment variables alone. SIGTERM drains and
/// exports once more, so the last export has every canary resolved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chirp_run_exports_by_environment_and_flushes_on_sigterm() {
    let rx = Receiver::start().await;
    let port = free_port();
    let mut child = std::process::Command::new(&*CHIRP)
        .args([
            "run",
            "-c",
            SHIPPED,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{}", rx.http))
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_METRIC_EXPORT_INTERVAL", "1000")
        .env("OTEL_TRACES_SAMPLER", "always_on")
        .env("OTEL_RESOURCE_ATTRIBUTES", "team=sre")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let r = &rx;
    wait_for(
        "deliveries and spans over OTLP",
        Duration::from_secs(20),
        || {
            let got = r.received();
            ["self-test", "kafka-selftest"]
                .iter()
                .all(|p| got.last_sum("chirp.canaries.delivered", p).unwrap_or(0.0) > 0.0)
                && got.spans().iter().any(|s| s.kind == 5)
        },
    )
    .await;
    let before = rx.received().metrics.len();
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let got = rx.received();
    assert!(got.metrics.len() > before, "no export on shutdown");
    for probe in ["self-test", "kafka-selftest"] {
        let v = |name: &str| got.last_sum(name, probe).unwrap();
        assert_eq!(
            v("chirp.canaries.in_flight"),
            0.0,
            "{probe}: drained before the last export"
        );
        assert_eq!(
            v("chirp.canaries.sent"),
            v("chirp.canaries.delivered")
                + v("chirp.canaries.dead_lettered")
                + v("chirp.canaries.lost")
                + v("chirp.canaries.publish_failed"),
            "{probe}"
        );
        assert!(v("chirp.canaries.delivered") > 0.0);
    }
    let resource = got.resource();
    assert_eq!(str_attr(&resource, "team"), Some("sre"));
    assert_eq!(str_attr(&resource, "service.name"), Some("chirp"));
    assert_eq!(
        str_attr(&resource, "deployment.environment.name"),
        Some("local")
    );
}

/// A collector that answers but refuses every export (HTTP 400): each
/// refusal is counted, probing is untouched, and the export at shutdown goes
/// through once the collector accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_refuses_exports_is_counted_and_probing_goes_on() {
    let nats = NatsServer::start();
    let rx = Receiver::start().await;
    rx.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    let otlp = format!(
        "    endpoint: http://{}\n    protocol: http/protobuf\n    interval: 1s",
        rx.http
    );
    let cfg = config(&nats.url(), &otlp, &loopback_probe("refused", "20ms"));
    let mut rt = support::start_counted(&cfg, 150).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    let counts = rt.probes()[0].probe.counts();
    assert_eq!((counts.delivered, counts.lost), (150, 0));
    let scrape = Scrape::get(rt.addr.unwrap()).await;
    let failed = otlp_counter(&scrape, "chirp_otlp_export_failures_total");
    assert!(
        failed >= 2.0,
        "refused exports are counted:\n{}",
        scrape.text
    );
    // Every attempt so far was refused.
    assert_eq!(
        otlp_counter(&scrape, "chirp_otlp_exports_total"),
        failed,
        "{}",
        scrape.text
    );
    assert!(rx.received().metrics.is_empty());
    rx.refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    rt.shutdown().await;
    let got = rx.received();
    assert_eq!(
        got.last_sum("chirp.canaries.delivered", "refused"),
        Some(150.0)
    );
}

/// Runs `chirp run` with `export` (the `export:` section, or none) and
/// `env`, on a self-test loop, until `done` holds for what `rx` received
/// (at most 20 s); then stops it with SIGTERM.
async fn run_with_env(
    rx: &Receiver,
    export: &str,
    env: &[(&str, String)],
    done: impl Fn(&support::otlp::Received) -> bool,
) {
    let port = free_port();
    let mut conf = support::Conf::new().listen(format!("127.0.0.1:{port}"));
    if !export.is_empty() {
        conf = conf.top(export);
    }
    let cfg = conf
        .probe(
            "{name: loop, interval: 20ms, inject: {http: {url: /hooks/loop}}, catch: {http: {}}}",
        )
        .file();
    let mut cmd = std::process::Command::new(&*CHIRP);
    cmd.args(["run", "-c"])
        .arg(&cfg.path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(&rx.received()) {
        if tokio::time::Instant::now() > give_up {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "nothing arrived as expected within 20s:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

/// `compression: none` in the file wins over `OTEL_EXPORTER_OTLP_COMPRESSION=gzip`
/// (HTTP), gzip works over both protocols, and over gRPC, where the exporter
/// would apply the variable anyway, the conflict is a configuration error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_follows_the_file_over_the_environment() {
    let gzip_env = [("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip".to_owned())];
    let rx = Receiver::start().await;
    let http = |extra: &str| {
        format!("export: {{otlp: {{endpoint: 'http://{}', protocol: http/protobuf, interval: 1s{extra}}}}}", rx.http)
    };
    let two = |r: &support::otlp::Received| r.requests.len() >= 2;
    run_with_env(&rx, &http(", compression: none"), &gzip_env, two).await;
    let got = rx.received();
    assert!(
        got.requests.iter().all(|r| !r.gzip),
        "the file said none: {:?}",
        got.requests
    );
    rx.stop().await;

    // Unset in the file, the variable applies.
    let rx = Receiver::start().await;
    let http = format!(
        "export: {{otlp: {{endpoint: 'http://{}', protocol: http/protobuf, interval: 1s}}}}",
        rx.http
    );
    run_with_env(&rx, &http, &gzip_env, two).await;
    assert!(rx.received().requests.iter().all(|r| r.gzip));
    rx.stop().await;

    // gzip over gRPC, from the file.
    let rx = Receiver::start().await;
    let grpc = format!(
        "export: {{otlp: {{endpoint: 'http://{}', interval: 1s, compression: gzip}}}}",
        rx.grpc
    );
    run_with_env(&rx, &grpc, &[], two).await;
    assert!(rx.received().requests.iter().all(|r| r.gzip));

    let cfg = support::Conf::new()
        .top(&format!(
            "export: {{otlp: {{endpoint: 'http://{}', compression: none}}}}",
            rx.grpc
        ))
        .probe("{name: loop, inject: {http: {url: /hooks/loop}}, catch: {http: {}}}")
        .file();
    let out = support::exits(
        std::process::Command::new(&*CHIRP)
            .args(["validate", "-c"])
            .arg(&cfg.path)
            .env("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("export.otlp.compression: `none` cannot be honoured over gRPC"),
        "{err}"
    );
}

/// `OTEL_EXPORTER_OTLP_METRICS_HEADERS` go with metric exports only, the
/// generic headers with both signals, and the file's header wins over the
/// environment's of the same name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_headers_go_with_their_signal_only() {
    let rx = Receiver::start().await;
    let export = format!(
        "export: {{otlp: {{endpoint: 'http://{}', interval: 1s, traces: true, headers: {{x-api-key: from-file}}}}}}",
        rx.grpc
    );
    let env = [
        (
            "OTEL_EXPORTER_OTLP_METRICS_HEADERS",
            "x-metrics-only=1,x-api-key=from-env".to_owned(),
        ),
        (
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "x-traces-only=1,x-api-key=from-env".to_owned(),
        ),
    ];
    let both = |r: &support::otlp::Received| {
        r.requests.iter().any(|q| q.signal == "metrics")
            && r.requests.iter().any(|q| q.signal == "traces")
    };
    run_with_env(&rx, &export, &env, both).await;
    let got = rx.received();
    for r in &got.requests {
        let (own, other) = if r.signal == "metrics" {
            ("x-metrics-only", "x-traces-only")
        } else {
            ("x-traces-only", "x-metrics-only")
        };
        assert_eq!(r.header(own), Some("1"), "{r:?}");
        assert_eq!(r.header(other), None, "{r:?}");
        assert_eq!(r.header("x-api-key"), Some("from-file"), "{r:?}");
    }
    rx.stop().await;

    let rx = Receiver::start().await;
    let export = format!(
        "export: {{otlp: {{endpoint: 'http://{}', interval: 1s, traces: true}}}}",
        rx.grpc
    );
    run_with_env(
        &rx,
        &export,
        &[("OTEL_EXPORTER_OTLP_HEADERS", "x-team=sre".to_owned())],
        both,
    )
    .await;
    assert!(rx
        .received()
        .requests
        .iter()
        .all(|r| r.header("x-team") == Some("sre")));
}

/// Only `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set: traces are exported there,
/// and no metric export starts (to localhost or anywhere).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traces_endpoint_alone_exports_traces_only() {
    let rx = Receiver::start().await;
    let env = [(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        format!("http://{}", rx.grpc),
    )];
    let spans =
        |r: &support::otlp::Received| r.spans().iter().filter(|s| s.kind == 5).count() >= 20;
    run_with_env(&rx, "", &env, spans).await;
    let got = rx.received();
    assert!(
        got.metrics.is_empty(),
        "{} metric exports",
        got.metrics.len()
    );
    assert!(got.requests.iter().all(|r| r.signal == "traces"));
}
