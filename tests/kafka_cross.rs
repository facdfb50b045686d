//! Kafka on one side only: Kafka in (per partition) and webhook out, where
//! chirp routes each caught canary to its partition's lane by the token; and
//! NATS in, Kafka out.

mod common;

use chirp::canary::{Signer, HEADER};
use common::kafka::Mock;
use common::{start_counted, NatsServer, KEY};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::time::Duration;

const COUNT: u64 = 40;

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
    let hook = format!("http://{}/hooks/k2h", rt.addr);
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
    let lanes = rt.probes[0].lanes();
    assert_eq!(lanes.len(), 2);
    for lane in lanes {
        let c = lane.ledger().counts();
        assert_eq!(
            (c.sent, c.delivered, c.lost, c.rejected),
            (COUNT, COUNT, 0, 0),
            "partition {}: {c:?}",
            lane.id
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
    let c = rt.probes[0].counts();
    assert_eq!(
        (c.sent, c.delivered, c.lost, c.duplicate),
        (COUNT, COUNT, 0, 0),
        "{c:?}"
    );
    assert!(!rt.probes[0].per_partition);
    rt.shutdown().await;
    relay.abort();
}
