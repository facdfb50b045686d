//! Kafka against tansu, a real Kafka-compatible broker started by the tests on
//! a free port (installed by `.ci/run`; the tests fail with an install hint
//! without it): `chirp check` with per-partition rows, exact counts through a
//! relay, a stalled partition, and the broker killed and restarted mid-run.

mod common;

use common::kafka::{create_topics, spawn_relay, Plan, Tansu};
use common::{kafka_config, start_counted, wait_for, KEY};
use std::io::Write;
use std::process::Command;
use std::time::Duration;

const PARTITIONS: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_tansu_reports_partitions_and_passes() {
    let tansu = Tansu::start();
    create_topics(&tansu.bootstrap(), &[("canaries", PARTITIONS)]).await;
    let path = std::env::temp_dir().join(format!("chirp-tansu-{}.yaml", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    write!(
        f,
        "listen: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  t:\n    kafka: {{brokers: \"{}\"}}\nprobes:\n  - name: tk\n    interval: 5ms\n    deadline: 5s\n    inject: {{kafka: {{connection: t, topic: canaries, partitions: all}}}}\n    catch: {{kafka: {{connection: t, topic: canaries}}}}\n",
        tansu.bootstrap()
    )
    .unwrap();
    let out = common::exits(
        Command::new(common::CHIRP)
            .args([
                "check",
                "--count",
                "500",
                "--max-loss",
                "0%",
                "--format",
                "json",
                "-c",
            ])
            .arg(&path),
        0,
    );
    let _ = std::fs::remove_file(&path);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let p = &v["probes"][0];
    assert_eq!(p["counts"]["sent"], 500 * PARTITIONS as u64, "{v}");
    assert_eq!(p["counts"]["delivered"], 500 * PARTITIONS as u64, "{v}");
    let parts = p["partitions"].as_array().expect("per-partition rows");
    assert_eq!(parts.len(), PARTITIONS as usize);
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part["partition"], i);
        assert_eq!(part["counts"]["sent"], 500);
        assert_eq!(part["counts"]["delivered"], 500);
        assert!(part["latency"]["cumulative"]["p99"].as_f64().unwrap() > 0.0);
    }
}

fn relay_probe() -> String {
    "  - name: relayed\n    interval: 20ms\n    deadline: 5s\n    inject: {kafka: {connection: k, topic: a, partitions: all}}\n    catch: {kafka: {connection: k, topic: b}}\n".into()
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
    let config = kafka_config(&tansu.bootstrap(), &relay_probe());
    let count = 50;
    let mut rt = start_counted(&config, count).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(8)).await, 0);
    // (delivered, lost, duplicate, reordered) per partition.
    let expected = [(count - 1, 1, 0, 1), (count, 0, 1, 0), (count - 1, 1, 1, 1)];
    for (lane, want) in rt.probes[0].lanes().iter().zip(expected) {
        let c = lane.ledger().counts();
        assert!(c.invariant_holds(), "{c:?}");
        assert_eq!(c.sent, count);
        assert_eq!(
            (c.delivered, c.lost, c.duplicate, c.reordered),
            want,
            "partition {}: {c:?}",
            lane.id
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
    let config = kafka_config(&tansu.bootstrap(), &relay_probe());
    let count = 40;
    let mut rt = start_counted(&config, count).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(8)).await, 0);
    for lane in rt.probes[0].lanes() {
        let c = lane.ledger().counts();
        let lost = if lane.id == 2 { count } else { 0 };
        assert_eq!(
            (c.sent, c.delivered, c.lost),
            (count, count - lost, lost),
            "partition {}: {c:?}",
            lane.id
        );
    }
    rt.shutdown().await;
    relay.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_tansu_restart_and_resumes() {
    let mut tansu = Tansu::start();
    create_topics(&tansu.bootstrap(), &[("loop", PARTITIONS)]).await;
    let config = kafka_config(
        &tansu.bootstrap(),
        "  - name: loop\n    interval: 50ms\n    deadline: 2s\n    publish_timeout: 1s\n    inject: {kafka: {connection: k, topic: loop, partitions: all}}\n    catch: {kafka: {connection: k, topic: loop}}\n",
    );
    let mut rt = chirp::runtime::Runtime::start(&config, Default::default())
        .await
        .expect("start");
    rt.ready().await;
    let probe = rt.probes[0].clone();
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
    let config = kafka_config(
        &tansu.bootstrap(),
        "  - name: late\n    interval: 50ms\n    deadline: 3s\n    inject: {kafka: {connection: k, topic: late, partitions: all}}\n    catch: {kafka: {connection: k, topic: late}}\n",
    );
    let mut rt = chirp::runtime::Runtime::start(&config, Default::default())
        .await
        .expect("start");
    let probe = rt.probes[0].clone();
    assert!(probe.lanes().is_empty(), "the topic does not exist yet");
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
    for lane in probe.lanes() {
        let c = lane.ledger().counts();
        assert!(c.invariant_holds(), "{c:?}");
        assert_eq!(
            (c.in_flight, c.lost, c.publish_failed),
            (0, 0, 0),
            "partition {}: {c:?}",
            lane.id
        );
    }
    rt.shutdown().await;
}

#[test]
fn check_exits_3_when_the_topic_does_not_exist() {
    let tansu = Tansu::start();
    let path =
        std::env::temp_dir().join(format!("chirp-tansu-missing-{}.yaml", std::process::id()));
    std::fs::write(
        &path,
        format!(
            "listen: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  t:\n    kafka: {{brokers: \"{}\"}}\nprobes:\n  - name: tk\n    inject: {{kafka: {{connection: t, topic: nowhere, partitions: all}}}}\n    catch: {{kafka: {{connection: t, topic: nowhere}}}}\n",
            tansu.bootstrap()
        ),
    )
    .unwrap();
    let out = Command::new(common::CHIRP)
        .args(["check", "--count", "5", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("topic `nowhere`"), "{err}");
}
