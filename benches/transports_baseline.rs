//! Benchmark: chirp next to a raw client loop on the same broker, in one
//! run, for the transports with a broker acknowledgement: JetStream (PubAck),
//! MQTT (QoS 1 PUBACK), RabbitMQ (publisher confirms), Redis Streams
//! (XADD's reply; read as a consumer group, XACK after), Amazon SQS on
//! moto, an emulator (SendMessage's answer; long-polled, deleted after) at a
//! rate moto keeps up with, and Google Cloud Pub/Sub on its emulator (the
//! message ID; a streaming pull, acked after). Same rate, message size and layout;
//! both measure end-to-end latency from the intended slot and the publish
//! latency (send → broker's ack). The raw loops keep their slots with
//! chirp's precise timer, so both carry the same schedule. Run with
//! `cargo bench --bench transports_baseline` (needs nats-server, mosquitto,
//! rabbitmq-server, redis-server, moto_server and the Pub/Sub emulator);
//! `-- sqs` (or `-- pubsub`, …) runs only the transports named. Figures only: nothing here asserts a speed.

#[path = "../tests/support/mod.rs"]
mod support;

use futures::StreamExt;
use hdrhistogram::Histogram;
use std::time::Duration;
use tokio::time::Instant;

const COUNT: u64 = 2000;
const INTERVAL: Duration = Duration::from_millis(2);
const SIZE: usize = 256;
/// moto (Python) answers a few hundred calls a second on this machine: the
/// SQS round runs slower, with fewer messages.
const SQS_COUNT: u64 = 500;
const SQS_INTERVAL: Duration = Duration::from_millis(20);

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn row(name: &str, e2e: &Histogram<u64>, publish: &Histogram<u64>) {
    println!(
        "{name:<34} n={:<5} end-to-end p50={:>7.3}ms p99={:>7.3}ms | publish p50={:>7.3}ms p99={:>7.3}ms",
        e2e.len(),
        ms(e2e, 0.5),
        ms(e2e, 0.99),
        ms(publish, 0.5),
        ms(publish, 0.99),
    );
}

/// Sends COUNT payloads on chirp's schedule discipline (latency from the
/// intended slot): `publish` returns once the broker acknowledged. The
/// receiver side records arrival against the intended slot in the payload.
struct Raw {
    start: Instant,
    e2e: Histogram<u64>,
    publish: Histogram<u64>,
}

fn payload(start: Instant, intended: Instant) -> Vec<u8> {
    let mut p = vec![b'x'; SIZE];
    p[..8].copy_from_slice(&((intended - start).as_micros() as u64).to_le_bytes());
    p
}

fn slot_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"))
}

async fn raw_jetstream(url: &str) -> Raw {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH_RAW".into(),
            subjects: vec!["bench.raw".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let start = chirp::timer::align(Instant::now());
    let timer = chirp::timer::Timer::precise();
    let collector = tokio::spawn(async move {
        let mut e2e = Histogram::<u64>::new(3).expect("histogram");
        while let Some(Ok(m)) = messages.next().await {
            let now = Instant::now().saturating_duration_since(start).as_micros() as u64;
            e2e.record(now.saturating_sub(slot_of(&m.payload)))
                .expect("record");
            if e2e.len() == COUNT {
                break;
            }
        }
        e2e
    });
    let mut publish = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..COUNT {
        let intended = start + INTERVAL * i as u32;
        timer.sleep_until(intended).await;
        let sent = Instant::now();
        js.publish("bench.raw", payload(start, intended).into())
            .await
            .expect("publish")
            .await
            .expect("PubAck");
        publish
            .record(sent.elapsed().as_micros() as u64)
            .expect("record");
    }
    let e2e = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("all back")
        .expect("collector");
    Raw {
        start,
        e2e,
        publish,
    }
}

async fn raw_rabbit(t: &support::targets::Rabbit) -> Raw {
    use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
    t.declare("bench.raw").await;
    let rx = t.channel().await;
    let mut consumer = rx
        .basic_consume(
            "bench.raw".into(),
            "raw".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("consume");
    let tx = t.channel().await;
    tx.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let start = chirp::timer::align(Instant::now());
    let timer = chirp::timer::Timer::precise();
    let collector = tokio::spawn(async move {
        let mut e2e = Histogram::<u64>::new(3).expect("histogram");
        while let Some(Ok(d)) = consumer.next().await {
            let now = Instant::now().saturating_duration_since(start).as_micros() as u64;
            e2e.record(now.saturating_sub(slot_of(&d.data)))
                .expect("record");
            if e2e.len() == COUNT {
                break;
            }
        }
        e2e
    });
    let mut publish = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..COUNT {
        let intended = start + INTERVAL * i as u32;
        timer.sleep_until(intended).await;
        let sent = Instant::now();
        tx.basic_publish(
            support::targets::RABBIT_EXCHANGE.into(),
            "bench.raw".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &payload(start, intended),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
        publish
            .record(sent.elapsed().as_micros() as u64)
            .expect("record");
    }
    let e2e = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("all back")
        .expect("collector");
    Raw {
        start,
        e2e,
        publish,
    }
}

async fn raw_mqtt(port: u16) -> Raw {
    let mut sub = support::targets::MqttPeer::connect(port, Some("bench/raw")).await;
    sub.subscribed(1).await;
    let mut publisher = support::targets::MqttPeer::connect(port, None).await;
    let start = chirp::timer::align(Instant::now());
    let timer = chirp::timer::Timer::precise();
    let collector = tokio::spawn(async move {
        let mut e2e = Histogram::<u64>::new(3).expect("histogram");
        while let Some(m) = sub.messages.recv().await {
            let now = Instant::now().saturating_duration_since(start).as_micros() as u64;
            e2e.record(now.saturating_sub(slot_of(&m.body)))
                .expect("record");
            if e2e.len() == COUNT {
                break;
            }
        }
        e2e
    });
    let mut publish = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..COUNT {
        let intended = start + INTERVAL * i as u32;
        timer.sleep_until(intended).await;
        let sent = Instant::now();
        // QoS 1, and the PUBACK awaited, as chirp does by default.
        publisher
            .publish("bench/raw", None, payload(start, intended))
            .await;
        publish
            .record(sent.elapsed().as_micros() as u64)
            .expect("record");
    }
    let e2e = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("all back")
        .expect("collector");
    Raw {
        start,
        e2e,
        publish,
    }
}

async fn raw_redis(server: &support::brokers::RedisServer) -> Raw {
    let mut reader = server.client().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg("bench.raw")
        .arg("raw")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut reader)
        .await
        .expect("XGROUP CREATE");
    let mut publisher = server.client().await;
    let start = chirp::timer::align(Instant::now());
    let timer = chirp::timer::Timer::precise();
    let collector = tokio::spawn(async move {
        let mut e2e = Histogram::<u64>::new(3).expect("histogram");
        while e2e.len() < COUNT {
            let reply: redis::Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg("raw")
                .arg("bench")
                .arg("COUNT")
                .arg(256)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg("bench.raw")
                .arg(">")
                .query_async(&mut reader)
                .await
                .expect("XREADGROUP");
            let redis::Value::Array(streams) = reply else {
                continue;
            };
            let mut ids = Vec::new();
            for s in streams {
                let redis::Value::Array(pair) = s else {
                    continue;
                };
                let Some(redis::Value::Array(entries)) = pair.get(1) else {
                    continue;
                };
                for e in entries {
                    let redis::Value::Array(parts) = e else {
                        continue;
                    };
                    let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(f))) =
                        (parts.first(), parts.get(1))
                    else {
                        continue;
                    };
                    let now = Instant::now().saturating_duration_since(start).as_micros() as u64;
                    if let Some(redis::Value::BulkString(body)) = f.get(1) {
                        e2e.record(now.saturating_sub(slot_of(body)))
                            .expect("record");
                    }
                    ids.push(id.clone());
                }
            }
            let _: i64 = redis::cmd("XACK")
                .arg("bench.raw")
                .arg("raw")
                .arg(&ids)
                .query_async(&mut reader)
                .await
                .expect("XACK");
        }
        e2e
    });
    let mut publish = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..COUNT {
        let intended = start + INTERVAL * i as u32;
        timer.sleep_until(intended).await;
        let sent = Instant::now();
        let _: String = redis::cmd("XADD")
            .arg("bench.raw")
            .arg("*")
            .arg("payload")
            .arg(payload(start, intended))
            .query_async(&mut publisher)
            .await
            .expect("XADD");
        publish
            .record(sent.elapsed().as_micros() as u64)
            .expect("record");
    }
    let e2e = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("all back")
        .expect("collector");
    Raw {
        start,
        e2e,
        publish,
    }
}

/// The raw SQS loop: SendMessage one at a time on the schedule (the answer
/// is the publish latency), a receiver long-polling ReceiveMessage (10 a
/// call) and deleting each batch after recording it, as chirp's catch does.
/// The body is text (SQS's rule): the slot in decimal, padded.
async fn raw_sqs(client: &aws_sdk_sqs::Client, url: &str) -> Raw {
    let start = chirp::timer::align(Instant::now());
    let timer = chirp::timer::Timer::precise();
    let (reader, queue) = (client.clone(), url.to_owned());
    let collector = tokio::spawn(async move {
        let mut e2e = Histogram::<u64>::new(3).expect("histogram");
        while e2e.len() < SQS_COUNT {
            let out = reader
                .receive_message()
                .queue_url(&queue)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await
                .expect("ReceiveMessage");
            let mut entries = Vec::new();
            for (i, m) in out.messages().iter().enumerate() {
                let now = Instant::now().saturating_duration_since(start).as_micros() as u64;
                let slot: u64 = m
                    .body()
                    .unwrap_or_default()
                    .trim_end_matches('x')
                    .parse()
                    .expect("a slot");
                e2e.record(now.saturating_sub(slot)).expect("record");
                entries.push(
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().expect("a receipt handle"))
                        .build()
                        .expect("an entry"),
                );
            }
            if !entries.is_empty() {
                reader
                    .delete_message_batch()
                    .queue_url(&queue)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .expect("DeleteMessageBatch");
            }
        }
        e2e
    });
    let mut publish = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..SQS_COUNT {
        let intended = start + SQS_INTERVAL * i as u32;
        timer.sleep_until(intended).await;
        let mut body = ((intended - start).as_micros() as u64).to_string();
        body.extend(std::iter::repeat_n('x', SIZE.saturating_sub(body.len())));
        let sent = Instant::now();
        client
            .send_message()
            .queue_url(url)
            .message_body(body)
            .send()
            .await
            .expect("SendMessage");
        publish
            .record(sent.elapsed().as_micros() as u64)
            .expect("record");
    }
    let e2e = tokio::time::timeout(Duration::from_secs(60), collector)
        .await
        .expect("all back")
        .expect("collector");
    Raw {
        start,
        e2e,
        publish,
    }
}

/// `round` names a topic and subscription of its own: a stream of an
/// earlier round may still hold messages the emulator sent it.
async fn raw_pubsub(endpoint: &str, round: u32) -> Raw {
    use support::targets::{pubsub_create, pubsub_publisher, pubsub_subscription};
    let name = format!("bench-raw-{round}");
    pubsub_create(endpoint, &name, &name, false).await;
    let client = google_cloud_pubsub::client::Subscriber::builder()
        .with_endpoint(endpoint)
        .with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build())
        .build()
        .await
        .expect("subscriber");
    let mut stream = client.subscribe(pubsub_subscription(&name)).build();
    let publisher = pubsub_publisher(endpoint, &name).await;
    let start = chirp::timer::align(Instant::now());
    let timer = chirp::timer::Timer::precise();
    let collector = tokio::spawn(async move {
        let mut e2e = Histogram::<u64>::new(3).expect("histogram");
        while let Some(Ok((m, h))) = stream.next().await {
            let now = Instant::now().saturating_duration_since(start).as_micros() as u64;
            e2e.record(now.saturating_sub(slot_of(&m.data)))
                .expect("record");
            h.ack();
            if e2e.len() == COUNT {
                break;
            }
        }
        stream.shutdown_token().shutdown().await;
        e2e
    });
    let mut publish = Histogram::<u64>::new(3).expect("histogram");
    for i in 0..COUNT {
        let intended = start + INTERVAL * i as u32;
        timer.sleep_until(intended).await;
        let sent = Instant::now();
        // Batching off, the message ID awaited, as chirp does.
        publisher
            .publish(google_cloud_pubsub::model::Message::new().set_data(payload(start, intended)))
            .await
            .expect("publish");
        publish
            .record(sent.elapsed().as_micros() as u64)
            .expect("record");
    }
    let e2e = tokio::time::timeout(Duration::from_secs(30), collector)
        .await
        .expect("all back")
        .expect("collector");
    Raw {
        start,
        e2e,
        publish,
    }
}

/// chirp's loop through `inject`/`catch` on `connection`: its end-to-end
/// and publish latency histograms, rebuilt from its summaries' percentiles.
async fn chirp(connection: (&str, String), inject: &str, catch: &str, name: &str) {
    chirp_at(COUNT, INTERVAL, connection, inject, catch, name).await;
}

async fn chirp_at(
    count: u64,
    interval: Duration,
    connection: (&str, String),
    inject: &str,
    catch: &str,
    name: &str,
) {
    let config = support::Conf::new()
        .connection(connection.0, connection.1)
        .probe(format!(
            "{{name: bench, interval: {}ms, deadline: 10s, payload: {{size: {SIZE}}}, inject: {inject}, catch: {catch}}}",
            interval.as_millis()
        ))
        .build();
    let mut rt = support::start_counted(&config, count).await;
    rt.injection_done().await;
    rt.drain(Duration::from_secs(15)).await;
    let snap = rt.probes()[0].probe.snapshot(Instant::now());
    assert!(snap.counts.invariant_holds());
    rt.shutdown().await;
    let (l, p, lag) = (
        snap.latency.cumulative,
        snap.publish_latency.cumulative,
        snap.schedule_lag.cumulative,
    );
    println!(
        "{name:<34} n={:<5} end-to-end p50={:>7.3}ms p99={:>7.3}ms | publish p50={:>7.3}ms p99={:>7.3}ms | schedule lag p50={:.3}ms (delivered {} of {})",
        l.count,
        l.p50 * 1e3,
        l.p99 * 1e3,
        p.p50 * 1e3,
        p.p99 * 1e3,
        lag.p50 * 1e3,
        snap.counts.delivered,
        snap.counts.sent
    );
}

fn main() {
    // chirp's own runtime, as the binary builds it; the raw loops share it.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(chirp::runtime::worker_threads())
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "{COUNT} messages of {SIZE} bytes every {INTERVAL:?}; raw loop, chirp, raw loop again"
    );
    // `cargo bench --bench transports_baseline -- redis`: only the transports named.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wanted = |t: &str| named.is_empty() || named.iter().any(|n| n == t);
    if wanted("jetstream") {
        let nats = support::brokers::NatsServer::with_jetstream();
        rt.block_on(async {
            let js = support::targets::JetStream { server: nats };
            js.create_stream("bench.chirp").await;
            for round in 0..2 {
                let r = raw_jetstream(&js.server.url()).await;
                let _ = r.start;
                row("jetstream: raw loop", &r.e2e, &r.publish);
                if round == 0 {
                    chirp(
                        ("main", format!("nats: {{url: \"{}\"}}", js.server.url())),
                        "{jetstream: {connection: main, subject: bench.chirp}}",
                        "{jetstream: {connection: main, stream: bench_chirp}}",
                        "jetstream: chirp",
                    )
                    .await;
                }
            }
        });
    }
    if wanted("mqtt") {
        let mosquitto = support::brokers::MosquittoServer::start();
        rt.block_on(async {
            for round in 0..2 {
                let r = raw_mqtt(mosquitto.port).await;
                row("mqtt: raw loop", &r.e2e, &r.publish);
                if round == 0 {
                    chirp(
                        ("main", format!("mqtt: {{url: \"{}\"}}", mosquitto.url())),
                        "{mqtt: {connection: main, topic: bench/chirp}}",
                        "{mqtt: {connection: main, topic: bench/chirp}}",
                        "mqtt: chirp",
                    )
                    .await;
                }
            }
        });
    }
    if wanted("amqp") {
        let rabbit = support::brokers::RabbitMq::start();
        rt.block_on(async {
            let t = support::targets::Rabbit::around(rabbit);
            t.declare("bench.chirp").await;
            let url = t.server.url();
            for round in 0..2 {
                let r = raw_rabbit(&t).await;
                row("amqp: raw loop", &r.e2e, &r.publish);
                if round == 0 {
                    chirp(
                        ("main", format!("amqp: {{url: \"{url}\"}}")),
                        &format!(
                        "{{amqp: {{connection: main, exchange: {}, routing_key: bench.chirp}}}}",
                        support::targets::RABBIT_EXCHANGE
                    ),
                        "{amqp: {connection: main, queue: bench.chirp}}",
                        "amqp: chirp",
                    )
                    .await;
                }
            }
        });
    }
    if wanted("redis") {
        let redis = support::brokers::RedisServer::start();
        rt.block_on(async {
            for round in 0..2 {
                let r = raw_redis(&redis).await;
                row("redis: raw loop", &r.e2e, &r.publish);
                let _: () = redis::cmd("DEL")
                    .arg("bench.raw")
                    .query_async(&mut redis.client().await)
                    .await
                    .expect("DEL");
                if round == 0 {
                    chirp(
                        ("main", format!("redis: {{url: \"{}\"}}", redis.url())),
                        "{redis: {connection: main, stream: bench.chirp}}",
                        "{redis: {connection: main, stream: bench.chirp, group: chirp}}",
                        "redis: chirp",
                    )
                    .await;
                }
            }
        });
    }
    if wanted("sqs") {
        let moto = support::brokers::MotoServer::start();
        rt.block_on(async {
            let client = moto.client();
            let mut urls = Vec::new();
            for q in ["bench-raw", "bench-chirp"] {
                let out = client
                    .create_queue()
                    .queue_name(q)
                    .send()
                    .await
                    .expect("CreateQueue");
                urls.push(out.queue_url().expect("a queue URL").to_owned());
            }
            println!(
                "sqs on moto (an emulator, not AWS): {SQS_COUNT} messages every {SQS_INTERVAL:?}"
            );
            for round in 0..2 {
                let r = raw_sqs(&client, &urls[0]).await;
                row("sqs (moto): raw loop", &r.e2e, &r.publish);
                if round == 0 {
                    chirp_at(
                        SQS_COUNT,
                        SQS_INTERVAL,
                        ("main", moto.connection()),
                        "{sqs: {connection: main, queue: bench-chirp}}",
                        "{sqs: {connection: main, queue: bench-chirp}}",
                        "sqs (moto): chirp",
                    )
                    .await;
                }
            }
        });
    }
    if wanted("pubsub") {
        let emulator = support::brokers::PubSubEmulator::start();
        rt.block_on(async {
            let endpoint = emulator.endpoint();
            support::targets::pubsub_create(&endpoint, "bench-chirp", "bench-chirp", false).await;
            for round in 0..2 {
                let r = raw_pubsub(&endpoint, round).await;
                row("pubsub: raw loop", &r.e2e, &r.publish);
                if round == 0 {
                    chirp(
                        (
                            "main",
                            format!(
                                "pubsub: {{project: {}, endpoint: \"{endpoint}\"}}",
                                support::targets::PUBSUB_PROJECT
                            ),
                        ),
                        "{pubsub: {connection: main, topic: bench-chirp}}",
                        "{pubsub: {connection: main, subscription: bench-chirp}}",
                        "pubsub: chirp",
                    )
                    .await;
                }
            }
        });
    }
    if wanted("redis") {
        let redis = support::brokers::RedisServer::start();
        rt.block_on(async {
            for round in 0..2 {
                let r = raw_redis(&redis).await;
                row("redis: raw loop", &r.e2e, &r.publish);
                let _: () = redis::cmd("DEL")
                    .arg("bench.raw")
                    .query_async(&mut redis.client().await)
                    .await
                    .expect("DEL");
                if round == 0 {
                    chirp(
                        ("main", format!("redis: {{url: \"{}\"}}", redis.url())),
                        "{redis: {connection: main, stream: bench.chirp}}",
                        "{redis: {connection: main, stream: bench.chirp, group: chirp}}",
                        "redis: chirp",
                    )
                    .await;
                }
            }
        });
    }
}
