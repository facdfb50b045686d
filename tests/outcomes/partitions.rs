//! Kafka per-partition mode: one lane per partition, each with its own
//! sequence, counts and series, so a stalled partition shows on its own. On
//! librdkafka's mock cluster (in this process) and on tansu, a real
//! Kafka-compatible broker started on a free port.

use crate::support::brokers::{create_topics, Mock, Tansu};
use crate::support::kafka::{spawn_relay, Plan};
use crate::support::{self, start_counted, wait_for, Conf, Scrape};
use std::time::Duration;

const PARTITIONS: i32 = 3;

fn kafka_conf(bootstrap: &str) -> Conf {
    Conf::new().connection("k", format!("kafka: {{brokers: \"{bootstrap}\"}}"))
}

/// `relayed`: per partition from `a`, caught on `b` (a relay in between).
fn relay_probe(bootstrap: &str, deadline: &str) -> chirp::config::Config {
    kafka_conf(bootstrap)
        .probe(format!("{{name: relayed, interval: 20ms, deadline: {deadline}, inject: {{kafka: {{connection: k, topic: a, partitions: all}}}}, catch: {{kafka: {{connection: k, topic: b}}}}}}"))
        .build()
}

const COUNT: u64 = 60;

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
    let config = relay_probe(&mock.bootstrap(), "3s");
    let mut rt = start_counted(&config, COUNT).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let probe = &rt.probes()[0].probe;
    assert!(probe.per_partition);
    let lanes = probe.lanes();
    assert_eq!(lanes.iter().map(|l| l.id.id).collect::<Vec<_>>(), [0, 1, 2]);
    // (sent, delivered, lost, duplicate, reordered) per partition.
    let expected = [
        (COUNT, COUNT - 2, 2, 1, 1),
        (COUNT, COUNT - 1, 1, 2, 2),
        (COUNT, COUNT, 0, 0, 0),
    ];
    for (lane, want) in lanes.iter().zip(expected) {
        let c = lane.ledger().counts();
        assert!(c.invariant_holds(), "partition {}: {c:?}", lane.id.id);
        assert_eq!(
            (c.sent, c.delivered, c.lost, c.duplicate, c.reordered),
            want,
            "partition {}: {c:?}",
            lane.id.id
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
    let config = relay_probe(&mock.bootstrap(), "3s");
    let mut rt = start_counted(&config, COUNT).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let lanes = rt.probes()[0].probe.lanes();
    assert_eq!(lanes.len(), PARTITIONS as usize);
    for lane in lanes {
        let c = lane.ledger().counts();
        let lost = if lane.id.id == 1 { COUNT - 10 } else { 0 };
        assert_eq!(
            (c.sent, c.delivered, c.lost),
            (COUNT, COUNT - lost, lost),
            "partition {}: {c:?}",
            lane.id.id
        );
    }
    // The Prometheus series carry the partition, so the stall is visible there too.
    let scrape = Scrape::get(rt.addr.expect("a listener")).await;
    for (partition, lost) in [("0", 0.0), ("1", (COUNT - 10) as f64), ("2", 0.0)] {
        assert_eq!(
            scrape.sum(
                "chirp_canaries_lost_total",
                &[("probe", "relayed"), ("partition", partition)]
            ),
            lost,
            "partition {partition}"
        );
    }
    rt.shutdown().await;
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_per_partition_through_a_relay_on_tansu() {
    let tansu = Tansu::start();
    create_topics(&tansu.bootstrap(), &[("a", PARTITIONS), ("b", PARTITIONS)]).await;
    let plan = Plan {
        drop: [(0, 5), (2, 9)].into(),
        duplicate: [(1, 4), (2, 30)].into(),
        swap: [((0, 12), 13), ((2, 20), 21)].into(),
        stall: None,
    };
    let relay = spawn_relay(&tansu.bootstrap(), "a", "b", PARTITIONS, plan).await;
    let config = relay_probe(&tansu.bootstrap(), "5s");
    let count = 50;
    let mut rt = start_counted(&config, count).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(8)).await, 0);
    // (delivered, lost, duplicate, reordered) per partition.
    let expected = [(count - 1, 1, 0, 1), (count, 0, 1, 0), (count - 1, 1, 1, 1)];
    let lanes = rt.probes()[0].probe.lanes();
    // Never vacuous: every partition has its lane, checked one by one.
    assert_eq!(lanes.len(), PARTITIONS as usize);
    for (lane, want) in lanes.iter().zip(expected) {
        let c = lane.ledger().counts();
        assert!(c.invariant_holds(), "{c:?}");
        assert_eq!(c.sent, count);
        assert_eq!(
            (c.delivered, c.lost, c.duplicate, c.reordered),
            want,
            "partition {}: {c:?}",
            lane.id.id
        );
    }
    rt.shutdown().await;
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_partition_on_tansu_shows_on_that_partition_only() {
    let tansu = Tansu::start();
    create_topics(&tansu.bootstrap(), &[("a", PARTITIONS), ("b", PARTITIONS)]).await;
    let plan = Plan {
        stall: Some((2, 0)),
        ..Plan::default()
    };
    let relay = spawn_relay(&tansu.bootstrap(), "a", "b", PARTITIONS, plan).await;
    let config = relay_probe(&tansu.bootstrap(), "5s");
    let count = 40;
    let mut rt = start_counted(&config, count).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(8)).await, 0);
    let lanes = rt.probes()[0].probe.lanes();
    assert_eq!(lanes.len(), PARTITIONS as usize);
    for lane in lanes {
        let c = lane.ledger().counts();
        let lost = if lane.id.id == 2 { count } else { 0 };
        assert_eq!(
            (c.sent, c.delivered, c.lost),
            (count, count - lost, lost),
            "partition {}: {c:?}",
            lane.id.id
        );
    }
    rt.shutdown().await;
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_tansu_restart_and_resumes() {
    let mut tansu = Tansu::start();
    create_topics(&tansu.bootstrap(), &[("loop", PARTITIONS)]).await;
    let config = kafka_conf(&tansu.bootstrap())
        .probe("{name: loop, interval: 50ms, deadline: 2s, publish_timeout: 1s, inject: {kafka: {connection: k, topic: loop, partitions: all}}, catch: {kafka: {connection: k, topic: loop}}}")
        .build();
    let mut rt = support::start(&config).await;
    rt.ready().await;
    let probe = support::probe(&rt, "loop");
    wait_for(
        "deliveries before the restart",
        Duration::from_secs(20),
        || probe.counts().delivered >= 30,
    )
    .await;

    tansu.kill();
    let outage_end = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < outage_end {
        assert!(probe.counts().invariant_holds());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let during = probe.counts();
    tansu.restart();
    // tansu keeps topics in memory: after a restart they are gone and come back empty.
    create_topics(&tansu.bootstrap(), &[("loop", PARTITIONS)]).await;

    wait_for(
        "deliveries after the restart",
        Duration::from_secs(60),
        || {
            let c = probe.counts();
            assert!(c.invariant_holds(), "{c:?}");
            c.delivered >= during.delivered + 30
        },
    )
    .await;
    // Every partition delivers again, not just one.
    let resumed: Vec<u64> = probe
        .lanes()
        .iter()
        .map(|l| l.ledger().counts().delivered)
        .collect();
    wait_for(
        "every partition delivering",
        Duration::from_secs(30),
        || {
            probe
                .lanes()
                .iter()
                .zip(&resumed)
                .all(|(l, before)| l.ledger().counts().delivered > *before)
        },
    )
    .await;
    rt.drain(Duration::from_secs(5)).await;
    let end = probe.counts();
    assert!(end.invariant_holds(), "{end:?}");
    assert_eq!(end.in_flight, 0, "{end:?}");
    assert!(
        end.lost + end.publish_failed > 0,
        "the outage must show: {end:?}"
    );
    rt.shutdown().await;
}

/// tansu does not implement CreatePartitions, so partitions appearing at run
/// time are exercised with a topic created after chirp started: its
/// partitions are found by the periodic metadata read on both sides.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_that_appear_after_start_get_their_own_canaries() {
    let tansu = Tansu::start();
    let config = kafka_conf(&tansu.bootstrap())
        .probe("{name: late, interval: 50ms, deadline: 3s, inject: {kafka: {connection: k, topic: late, partitions: all}}, catch: {kafka: {connection: k, topic: late}}}")
        .build();
    let mut rt = support::start(&config).await;
    let probe = support::probe(&rt, "late");
    // The topic does not exist yet: partition 0 stands in, so its failed
    // publishes show the missing topic instead of silence.
    let ids: Vec<u32> = probe.lanes().iter().map(|l| l.id.id).collect();
    assert_eq!(ids, [0], "the topic does not exist yet");
    create_topics(&tansu.bootstrap(), &[("late", PARTITIONS)]).await;
    // Picked up by the next metadata reads (every 10 s).
    wait_for("a lane per partition", Duration::from_secs(30), || {
        probe.lanes().len() == PARTITIONS as usize
    })
    .await;
    wait_for(
        "deliveries on every partition",
        Duration::from_secs(30),
        || {
            probe
                .lanes()
                .iter()
                .all(|l| l.ledger().counts().delivered >= 10)
        },
    )
    .await;
    rt.drain(Duration::from_secs(5)).await;
    assert_eq!(probe.lanes().len(), PARTITIONS as usize);
    for lane in probe.lanes() {
        let c = lane.ledger().counts();
        assert!(c.invariant_holds(), "{c:?}");
        assert_eq!(
            (c.in_flight, c.lost, c.publish_failed),
            (0, 0, 0),
            "partition {}: {c:?}",
            lane.id.id
        );
    }
    rt.shutdown().await;
}
