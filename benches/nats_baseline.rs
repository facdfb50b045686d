//! Benchmark: chirp's end-to-end latency on a local nats-server next to a
//! minimal raw async-nats publish→subscribe loop, measured in one run at the
//! same rate and message size. (chirp publishes and subscribes on two
//! clients of one named connection, the raw loop on one client.) The raw loop keeps its slots with chirp's precise timer, and
//! is measured from its actual publish call: what a pipeline costs with no
//! prober in the way. chirp is measured as it reports, from each canary's
//! intended slot, so its schedule lag and its own overhead are in its
//! figure. Three rounds of raw then chirp, and a last raw loop; each round
//! prints chirp's p50/p99 over the raw loop's before it, and the medians.
//! Run with `cargo bench --bench nats_baseline` (needs `nats-server` on
//! PATH). Figures only: nothing here asserts a speed.

#[path = "../tests/support/mod.rs"]
mod support;

use futures::StreamExt;
use hdrhistogram::Histogram;
use std::time::Duration;
use tokio::time::Instant;

const COUNT: u64 = 5000;
const ROUNDS: usize = 3;
const INTERVAL: Duration = Duration::from_millis(2);
const SIZE: usize = 256;

fn row(name: &str, h: &Histogram<u64>) {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{name:<24} n={:<6} p50={:>7.3}ms p90={:>7.3}ms p99={:>7.3}ms p99.9={:>7.3}ms max={:>7.3}ms",
        h.len(),
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
}

/// The baseline: publish a timestamped message every INTERVAL, measure when it comes back.
/// Returns latency from the intended slot, and from the actual publish call.
async fn raw_loop(url: &str) -> (Histogram<u64>, Histogram<u64>) {
    let client = async_nats::connect(url).await.expect("connect");
    let mut sub = client.subscribe("bench.raw").await.expect("subscribe");
    client.flush().await.expect("flush");
    let start = chirp::timer::align(Instant::now());
    let timer = chirp::timer::Timer::precise();
    let collector = tokio::spawn(async move {
        let mut from_slot = Histogram::<u64>::new(3).expect("histogram");
        let mut from_send = Histogram::<u64>::new(3).expect("histogram");
        while let Some(msg) = sub.next().await {
            let field =
                |i: usize| u64::from_le_bytes(msg.payload[i..i + 8].try_into().expect("8 bytes"));
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
        // Same schedule as chirp: the same timer, slots on the same grid.
        let intended = start + INTERVAL * i as u32;
        timer.sleep_until(intended).await;
        let mut payload = vec![b'x'; SIZE];
        let intended_us = (intended - start).as_micros() as u64;
        payload[..8].copy_from_slice(&intended_us.to_le_bytes());
        let sent_us = Instant::now().saturating_duration_since(start).as_micros() as u64;
        payload[8..16].copy_from_slice(&sent_us.to_le_bytes());
        client
            .publish("bench.raw", payload.into())
            .await
            .expect("publish");
    }
    tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("all raw messages back")
        .expect("collector")
}

/// chirp's end-to-end p50 and p99 in µs, from the slot.
async fn chirp_loop(url: &str) -> (f64, f64) {
    let config = support::nats_conf(url)
        .probe(format!(
            "{{name: bench, interval: {}ms, deadline: 10s, payload: {{size: {SIZE}}}, inject: {{nats: {{connection: main, subject: bench.chirp}}}}, catch: {{nats: {{connection: main, subject: bench.chirp}}}}}}",
            INTERVAL.as_millis()
        ))
        .build();
    let mut rt = support::start_counted(&config, COUNT).await;
    rt.injection_done().await;
    rt.drain(Duration::from_secs(15)).await;
    let snap = rt.probes()[0].probe.snapshot(Instant::now());
    let c = snap.counts;
    assert!(c.invariant_holds());
    println!(
        "chirp counts: sent={} delivered={} lost={} publish_failed={}",
        c.sent, c.delivered, c.lost, c.publish_failed
    );
    let l = snap.latency.cumulative;
    let lag = snap.schedule_lag.cumulative;
    rt.shutdown().await;
    println!(
        "{:<24} p50={:>7.3}ms p99={:>7.3}ms (timer wake-up after the slot, included in latency)",
        "chirp schedule lag",
        lag.p50 * 1e3,
        lag.p99 * 1e3
    );
    println!(
        "{:<24} n={:<6} p50={:>7.3}ms p90={:>7.3}ms p99={:>7.3}ms p99.9={:>7.3}ms max={:>7.3}ms",
        "chirp (nats loop)",
        l.count,
        l.p50 * 1e3,
        l.p90 * 1e3,
        l.p99 * 1e3,
        l.p999 * 1e3,
        l.max * 1e3
    );
    (l.p50 * 1e6, l.p99 * 1e6)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // chirp's own runtime, as the binary builds it; the raw loops share it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(chirp::runtime::worker_threads())
        .enable_all()
        .build()
        .expect("runtime");
    let nats = support::NatsServer::start();
    println!(
        "nats-server on 127.0.0.1:{}; {COUNT} messages of {SIZE} bytes every {INTERVAL:?}; {ROUNDS} rounds of raw then chirp, then raw again",
        nats.port
    );
    rt.block_on(async {
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for round in 0..=ROUNDS {
            let (from_slot, from_send) = raw_loop(&nats.url()).await;
            row("raw loop, from slot", &from_slot);
            row("raw loop, from publish", &from_send);
            if round == ROUNDS {
                break;
            }
            let raw = |q: f64| from_send.value_at_quantile(q) as f64;
            let (p50, p99) = chirp_loop(&nats.url()).await;
            let (r50, r99) = (p50 / raw(0.5), p99 / raw(0.99));
            println!(
                "round {}: chirp from slot / raw from publish: p50 {p50:.0}/{:.0} µs = {r50:.2}x, p99 {p99:.0}/{:.0} µs = {r99:.2}x",
                round + 1,
                raw(0.5),
                raw(0.99)
            );
            p50s.push(r50);
            p99s.push(r99);
        }
        println!(
            "median of {ROUNDS} rounds: chirp p50 = {:.2}x and p99 = {:.2}x the raw loop's from its publish",
            median(p50s),
            median(p99s)
        );
    });
}
