//! Inject and catch on different systems: NATS in, webhook out (a relay
//! POSTs what it reads from NATS to chirp's `/hooks/{probe}`, signed); HTTP
//! in, NATS out (a test endpoint republishes what it is POSTed); Kafka in
//! (per partition), webhook out, where chirp routes each caught canary to its
//! partition's lane by the token; and NATS in, Kafka out.

use crate::support::brokers::Mock;
use crate::support::{self, start_counted, NatsServer, KEY};
use axum::body::Bytes;
use axum::http::HeaderMap;
use chirp::canary::{Signer, HEADER};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

const COUNT: u64 = 40;

const NH_COUNT: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_in_webhook_out_and_http_in_nats_out() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");

    // HTTP endpoint that republishes every POST body (with its token header) on `fromhttp.out`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/ingest", listener.local_addr().unwrap());
    let publisher = client.clone();
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let publisher = publisher.clone();
            async move {
                let mut h = async_nats::HeaderMap::new();
                if let Some(t) = headers.get(HEADER).and_then(|v| v.to_str().ok()) {
                    h.insert(HEADER, t);
                }
                publisher
                    .publish_with_headers("fromhttp.out", h, body)
                    .await
                    .expect("republish");
                "accepted"
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = support::nats_conf(&nats.url())
        .probe("{name: tohook, interval: 20ms, deadline: 3s, inject: {nats: {connection: main, subject: tohook.in}}, catch: {http: {}}}")
        .probe(format!("{{name: fromhttp, interval: 20ms, deadline: 3s, inject: {{http: {{url: \"{endpoint}\"}}}}, catch: {{nats: {{connection: main, subject: fromhttp.out}}}}}}"))
        .build();

    // Relay NATS → webhook; it learns chirp's address once chirp has started.
    let mut sub = client.subscribe("tohook.in").await.unwrap();
    client.flush().await.unwrap();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<std::net::SocketAddr>();
    let relay = tokio::spawn(async move {
        let addr = addr_rx.await.expect("chirp address");
        let http = reqwest::Client::new();
        let signer = Signer::new(KEY.as_bytes());
        while let Some(msg) = sub.next().await {
            let resp = http
                .post(format!("http://{addr}/hooks/tohook"))
                .header("X-Chirp-Signature", signer.signature(&msg.payload))
                .body(msg.payload.to_vec())
                .send()
                .await
                .expect("post to chirp");
            assert_eq!(resp.status(), 200);
        }
    });

    let mut rt = start_counted(&config, NH_COUNT).await;
    addr_tx.send(rt.addr.expect("a listener")).unwrap();
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    for w in &rt.probes() {
        let p = &w.probe;
        let c = p.counts();
        assert_eq!(
            (c.sent, c.delivered, c.lost, c.publish_failed),
            (NH_COUNT, NH_COUNT, 0, 0),
            "{}: {c:?}",
            p.name()
        );
        assert_eq!(
            (c.duplicate, c.rejected, c.unrelated, c.foreign),
            (0, 0, 0, 0),
            "{}: {c:?}",
            p.name()
        );
    }
    // The HTTP inject's publish latency is the endpoint's response time.
    let snap = support::probe(&rt, "fromhttp").snapshot(tokio::time::Instant::now());
    assert_eq!(snap.publish_latency.cumulative.count, NH_COUNT);
    rt.shutdown().await;
    relay.abort();
    server.abort();
}

fn config(text: &str) -> chirp::config::Config {
    chirp::config::load_str(text, &std::collections::HashMap::new())
        .unwrap_or_else(|e| panic!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_in_webhook_out_per_partition() {
    let mock = Mock::start();
    mock.create_topic("in", 2);
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap())
        .set("group.id", "relay")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("in", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let cfg = config(&format!(
        "listen: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  k:\n    kafka: {{brokers: \"{}\"}}\nprobes:\n  - name: k2h\n    interval: 20ms\n    deadline: 3s\n    inject: {{kafka: {{connection: k, topic: in, partitions: all}}}}\n    catch: {{http: {{}}}}\n",
        mock.bootstrap()
    ));
    let mut rt = start_counted(&cfg, COUNT).await;
    let hook = format!("http://{}/hooks/k2h", rt.addr.expect("a listener"));
    let relay = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let signer = Signer::new(KEY.as_bytes());
        let mut stream = consumer.stream();
        while let Some(Ok(msg)) = stream.next().await {
            let body = msg.payload().unwrap_or_default().to_vec();
            let status = http
                .post(&hook)
                .header("X-Chirp-Signature", signer.signature(&body))
                .body(body)
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
        }
    });
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let lanes = rt.probes()[0].probe.lanes();
    assert_eq!(lanes.len(), 2);
    for lane in lanes {
        let c = lane.ledger().counts();
        assert_eq!(
            (c.sent, c.delivered, c.lost, c.rejected),
            (COUNT, COUNT, 0, 0),
            "partition {}: {c:?}",
            lane.id.id
        );
    }
    rt.shutdown().await;
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_in_kafka_out() {
    let nats = NatsServer::start();
    let mock = Mock::start();
    mock.create_topic("out", 1);
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client.subscribe("n2k.in").await.unwrap();
    client.flush().await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap())
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let relay = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let token = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(HEADER))
                .map(|v| v.to_string())
                .unwrap();
            let headers = OwnedHeaders::new().insert(Header {
                key: HEADER,
                value: Some(token.as_bytes()),
            });
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to("out")
                .payload(&msg.payload[..])
                .headers(headers);
            producer.send(record, Duration::from_secs(5)).await.unwrap();
        }
    });
    let cfg = config(&format!(
        "listen: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  n:\n    nats: {{url: \"{}\"}}\n  k:\n    kafka: {{brokers: \"{}\"}}\nprobes:\n  - name: n2k\n    interval: 20ms\n    deadline: 3s\n    inject: {{nats: {{connection: n, subject: n2k.in}}}}\n    catch: {{kafka: {{connection: k, topic: out}}}}\n",
        nats.url(),
        mock.bootstrap()
    ));
    let mut rt = start_counted(&cfg, COUNT).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let c = rt.probes()[0].probe.counts();
    assert_eq!(
        (c.sent, c.delivered, c.lost, c.duplicate),
        (COUNT, COUNT, 0, 0),
        "{c:?}"
    );
    assert!(!rt.probes()[0].probe.per_partition);
    rt.shutdown().await;
    relay.abort();
}

/// A key being rotated: canaries signed with it (by the instance before a
/// restart, still in the pipeline) are told apart as another run's
/// (`foreign`), not counted as forged (`rejected`), once the old key is in
/// `previous_signing_keys`; a key chirp never had is still `rejected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_signed_with_a_previous_key_are_not_counted_as_forged() {
    const OLD: &str = "the-key-before-rotation-01";
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let probe = "{name: rotated, interval: 1h, inject: {nats: {connection: main, subject: rot.in}}, catch: {nats: {connection: main, subject: rot.out}}}";
    for (previous, expect_foreign, expect_rejected) in [(true, 5, 1), (false, 0, 6)] {
        let mut conf = support::nats_conf(&nats.url()).probe(probe);
        if previous {
            conf = conf.top(&format!(
                "previous_signing_keys: [\"{OLD}\", \"${{UNSET_PREVIOUS_KEY:-}}\"]"
            ));
        }
        let rt = support::start(&conf.build()).await;
        rt.ready().await;
        // What the instance before the restart (another run) had in flight,
        // signed with the old key, and one token signed with a key chirp never had.
        let token = |key: &str, seq: u64| {
            Signer::new(key.as_bytes()).encode(&chirp::canary::Token {
                probe: "rotated".into(),
                run_id: 0x0123_4567_89ab_cdef,
                lane: 0,
                seq,
                sent_unix_us: chirp::canary::unix_now_us(),
            })
        };
        let mut tokens: Vec<String> = (1..=5).map(|s| token(OLD, s)).collect();
        tokens.push(token("a-key-chirp-never-had-00", 6));
        for t in tokens {
            let mut h = async_nats::HeaderMap::new();
            h.insert(HEADER, t.as_str());
            client
                .publish_with_headers("rot.out", h, t.into_bytes().into())
                .await
                .unwrap();
        }
        client.flush().await.unwrap();
        let p = support::probe(&rt, "rotated");
        support::wait_for("six messages at the sink", Duration::from_secs(5), || {
            let c = p.counts();
            c.foreign + c.rejected == 6
        })
        .await;
        let c = p.counts();
        assert_eq!(
            (c.foreign, c.rejected),
            (expect_foreign, expect_rejected),
            "previous key configured: {previous}; {c:?}"
        );
        rt.shutdown().await;
    }
}
