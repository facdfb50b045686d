//! A fault-injecting relay between two Kafka topics that keeps partitions,
//! for the per-partition tests.

use super::KEY;
use chirp::canary::{Signer, HEADER};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// What the relay does to the canaries of each partition (keyed by (partition, seq)).
#[derive(Default, Clone)]
pub struct Plan {
    pub drop: HashSet<(i32, u64)>,
    pub duplicate: HashSet<(i32, u64)>,
    /// (partition, first) → second: `first` is held and forwarded right after `second`.
    pub swap: HashMap<(i32, u64), u64>,
    /// Stop forwarding this partition from this sequence on (a stalled partition).
    pub stall: Option<(i32, u64)>,
}

/// Consumes `from` (all partitions, from the beginning) and produces to the
/// same partition of `to`, applying `plan`. Returns once positioned.
pub async fn spawn_relay(
    bootstrap: &str,
    from: &str,
    to: &str,
    partitions: i32,
    plan: Plan,
) -> tokio::task::JoinHandle<()> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "relay")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .expect("relay consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(from, p, Offset::Beginning)
            .expect("tpl");
    }
    consumer.assign(&tpl).expect("assign");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "0")
        .create()
        .expect("relay producer");
    let to = to.to_owned();
    tokio::spawn(async move {
        let signer = Signer::new(KEY.as_bytes());
        let seconds: HashMap<(i32, u64), u64> =
            plan.swap.iter().map(|((p, a), b)| ((*p, *b), *a)).collect();
        let mut held: HashMap<(i32, u64), (Vec<u8>, String)> = HashMap::new();
        let mut stream = consumer.stream();
        while let Some(Ok(msg)) = stream.next().await {
            let p = msg.partition();
            let token = msg
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == HEADER).and_then(|h| h.value))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .expect("canary without token header");
            let seq = signer.decode(&token).expect("valid token").seq;
            let body = msg.payload().unwrap_or_default().to_vec();
            if plan.drop.contains(&(p, seq))
                || plan.stall.is_some_and(|(sp, from)| sp == p && seq >= from)
            {
                continue;
            }
            if plan.swap.contains_key(&(p, seq)) {
                held.insert((p, seq), (body, token));
                continue;
            }
            let mut out = vec![(body.clone(), token.clone())];
            if plan.duplicate.contains(&(p, seq)) {
                out.push((body, token));
            }
            if let Some(first) = seconds.get(&(p, seq)) {
                out.push(
                    held.remove(&(p, *first))
                        .expect("first of a swapped pair came first"),
                );
            }
            for (body, token) in out {
                let headers = OwnedHeaders::new().insert(Header {
                    key: HEADER,
                    value: Some(token.as_bytes()),
                });
                let record: FutureRecord<'_, (), Vec<u8>> = FutureRecord::to(&to)
                    .partition(p)
                    .payload(&body)
                    .headers(headers);
                producer
                    .send(record, Duration::from_secs(5))
                    .await
                    .expect("relay produce");
            }
        }
    })
}
