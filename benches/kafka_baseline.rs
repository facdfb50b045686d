//! Benchmark: chirp's end-to-end latency over Kafka next to a minimal rdkafka
//! produce→consume loop, at the same rate and settings (acks=all, idempotent,
//! linger.ms=0, fetch.wait.max.ms=5), on librdkafka's mock cluster and on a
//! tansu broker, in one run. The raw loop keeps its slots with chirp's
//! precise timer and is measured from its actual produce call; chirp from
//! each canary's intended slot, as it reports; each target prints the
//! ratios. Run with `cargo bench --bench kafka_baseline` (tansu must be
//! installed; see scripts/test). Figures only, no assertions.

#[path = "../tests/support/mod.rs"]
mod support;

use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use std::time::Duration;
use support::brokers::{create_topics, Mock, Tansu};
use tokio::time::Instant;

const COUNT: u64 = 2000;
const INTERVAL: Duration = Duration::from_millis(5);
const SIZE: usize = 256;

fn row(name: &str, h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:<34} n={:<5} p50={:>7.3}ms p90={:>7.3}ms p99={:>7.3}ms max={:>8.3}ms",
        h.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
}

async fn raw_loop(bootstrap: &str, topic: &str) -> (Histogram<u64>, Histogram<u64>) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-raw")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(5))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(high))
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let start = chirp::timer::align(Instant::now());
    let timer = chirp::timer::Timer::precise();
    let collector = tokio::spawn(async move {
        let mut from_slot = Histogram::<u64>::new(3).expect("histogram");
        let mut from_send = Histogram::<u64>::new(3).expect("histogram");
        let mut stream = consumer.stream();
        while let Some(Ok(msg)) = stream.next().await {
            let p = msg.payload().unwrap_or_default();
            let field = |i: usize| u64::from_le_bytes(p[i..i + 8].try_into().expect("8 bytes"));
            let now_us = Instant::now().saturating_duration_since(start).as_micros() as u64;
            from_slot
                .record(now_us.saturating_sub(field(0)))
                .expect("record");
            from_send
                .record(now_us.saturating_sub(field(8)))
                .expect("record");
            if from_slot.len() == COUNT {
                break;
            }
        }
        (from_slot, from_send)
    });
    for i in 0..COUNT {
        let intended = start + INTERVAL * i as u32;
        timer.sleep_until(intended).await;
        let mut payload = vec![b'x'; SIZE];
        payload[..8].copy_from_slice(&((intended - start).as_micros() as u64).to_le_bytes());
        let sent_us = Instant::now().saturating_duration_since(start).as_micros() as u64;
        payload[8..16].copy_from_slice(&sent_us.to_le_bytes());
        let record: FutureRecord<'_, (), Vec<u8>> =
            FutureRecord::to(topic).partition(0).payload(&payload);
        // Enqueue only; delivery reports are not awaited one by one (chirp does not either).
        producer
            .send_result(record)
            .map_err(|(e, _)| e)
            .expect("enqueue");
    }
    tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .expect("all messages back")
        .expect("collector")
}

/// chirp's end-to-end p50 and p99 from the slot, µs.
async fn chirp_loop(bootstrap: &str, topic: &str) -> (f64, f64) {
    let config = support::Conf::new()
        .connection("k", format!("kafka: {{brokers: \"{bootstrap}\"}}"))
        .probe(format!(
            "{{name: bench, interval: {}ms, deadline: 10s, payload: {{size: {SIZE}}}, inject: {{kafka: {{connection: k, topic: {topic}}}}}, catch: {{kafka: {{connection: k, topic: {topic}}}}}}}",
            INTERVAL.as_millis()
        ))
        .build();
    let mut rt = support::start_counted(&config, COUNT).await;
    rt.injection_done().await;
    rt.drain(Duration::from_secs(15)).await;
    let snap = rt.probes()[0].probe.snapshot(Instant::now());
    rt.shutdown().await;
    let (c, l, lag) = (
        snap.counts,
        snap.latency.cumulative,
        snap.schedule_lag.cumulative,
    );
    println!(
        "{:<34} n={:<5} p50={:>7.3}ms p90={:>7.3}ms p99={:>7.3}ms max={:>8.3}ms (lost={} failed={}; schedule lag p50={:.3}ms)",
        "chirp, from slot",
        l.count,
        l.p50 * 1e3,
        l.p90 * 1e3,
        l.p99 * 1e3,
        l.max * 1e3,
        c.lost,
        c.publish_failed,
        lag.p50 * 1e3
    );
    (l.p50 * 1e6, l.p99 * 1e6)
}

async fn compare(target: &str, bootstrap: &str) {
    println!("-- {target}: {COUNT} records of {SIZE} bytes every {INTERVAL:?}");
    let (slot, send) = raw_loop(bootstrap, "bench-raw").await;
    row("raw rdkafka loop, from slot", &slot);
    row("raw rdkafka loop, from send", &send);
    let (p50, p99) = chirp_loop(bootstrap, "bench-chirp").await;
    let raw = |q: f64| send.value_at_quantile(q) as f64;
    println!(
        "chirp from slot / raw from send: p50 {:.2}x, p99 {:.2}x",
        p50 / raw(0.5),
        p99 / raw(0.99)
    );
}

fn main() {
    // chirp's own runtime, as the binary builds it; the raw loops share it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(chirp::runtime::worker_threads())
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mock = Mock::start();
        mock.create_topic("bench-raw", 1);
        mock.create_topic("bench-chirp", 1);
        compare("librdkafka mock cluster", &mock.bootstrap()).await;
        let tansu = Tansu::start();
        create_topics(&tansu.bootstrap(), &[("bench-raw", 1), ("bench-chirp", 1)]).await;
        compare("tansu (memory storage)", &tansu.bootstrap()).await;
    });
}
