//! Kafka against librdkafka's mock cluster (in-process, fast, always run):
//! exact per-partition counts through a fault-injecting relay, and a stalled
//! partition that shows on its own partition only.

mod common;

use common::kafka::{spawn_relay, Mock, Plan};
use common::{kafka_config, start_counted};
use std::time::Duration;

const PARTITIONS: i32 = 3;
const COUNT: u64 = 60;

fn relay_probe() -> String {
    "  - name: relayed\n    interval: 20ms\n    deadline: 3s\n    inject: {kafka: {connection: k, topic: a, partitions: all}}\n    catch: {kafka: {connection: k, topic: b}}\n".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_per_partition_through_a_faulty_relay() {
    let mock = Mock::start();
    mock.create_topic("a", PARTITIONS);
    mock.create_topic("b", PARTITIONS);
    let plan = Plan {
        drop: [(0, 5), (0, 17), (1, 3)].into(),
        duplicate: [(0, 8), (1, 10), (1, 11)].into(),
        swap: [((0, 20), 21), ((1, 30), 31), ((1, 40), 41)].into(),
        stall: None,
    };
    let relay = spawn_relay(&mock.bootstrap(), "a", "b", PARTITIONS, plan).await;
    let config = kafka_config(&mock.bootstrap(), &relay_probe());
    let mut rt = start_counted(&config, COUNT).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let probe = &rt.probes[0];
    assert!(probe.per_partition);
    let lanes = probe.lanes();
    assert_eq!(lanes.iter().map(|l| l.id).collect::<Vec<_>>(), [0, 1, 2]);
    // (sent, delivered, lost, duplicate, reordered) per partition.
    let expected = [
        (COUNT, COUNT - 2, 2, 1, 1),
        (COUNT, COUNT - 1, 1, 2, 2),
        (COUNT, COUNT, 0, 0, 0),
    ];
    for (lane, want) in lanes.iter().zip(expected) {
        let c = lane.ledger().counts();
        assert!(c.invariant_holds(), "partition {}: {c:?}", lane.id);
        assert_eq!(
            (c.sent, c.delivered, c.lost, c.duplicate, c.reordered),
            want,
            "partition {}: {c:?}",
            lane.id
        );
        assert_eq!(
            (c.publish_failed, c.late, c.rejected, c.unrelated, c.foreign),
            (0, 0, 0, 0, 0)
        );
    }
    let total = probe.counts();
    assert_eq!(
        (total.sent, total.lost, total.duplicate, total.reordered),
        (3 * COUNT, 3, 3, 3)
    );
    // Every delivered canary was acknowledged by the broker.
    let snap = probe.snapshot(tokio::time::Instant::now());
    assert_eq!(snap.publish_latency.cumulative.count, 3 * COUNT);
    rt.shutdown().await;
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_partition_shows_on_that_partition_only() {
    let mock = Mock::start();
    mock.create_topic("a", PARTITIONS);
    mock.create_topic("b", PARTITIONS);
    let plan = Plan {
        stall: Some((1, 10)),
        ..Plan::default()
    };
    let relay = spawn_relay(&mock.bootstrap(), "a", "b", PARTITIONS, plan).await;
    let config = kafka_config(&mock.bootstrap(), &relay_probe());
    let mut rt = start_counted(&config, COUNT).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    for lane in rt.probes[0].lanes() {
        let c = lane.ledger().counts();
        let lost = if lane.id == 1 { COUNT - 10 } else { 0 };
        assert_eq!(
            (c.sent, c.delivered, c.lost),
            (COUNT, COUNT - lost, lost),
            "partition {}: {c:?}",
            lane.id
        );
    }
    // The Prometheus series carry the partition, so the stall is visible there too.
    let body = reqwest::get(format!("http://{}/metrics", rt.addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lost_line = body
        .lines()
        .find(|l| l.starts_with("chirp_canaries_lost_total{") && l.contains("partition=\"1\""))
        .unwrap_or_else(|| panic!("no partition series: {body}"));
    assert!(
        lost_line.ends_with(&format!(" {}", COUNT - 10)),
        "{lost_line}"
    );
    rt.shutdown().await;
    relay.abort();
}
