//! Broker outage: nats-server is killed for a few seconds in the middle of a
//! run. chirp must keep running, show the outage as lost or publish_failed
//! canaries, resume delivering after the restart, and keep its invariant.

mod common;

use chirp::runtime::{Options, Runtime};
use common::{config_with, wait_for, NatsServer};
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_broker_outage_and_resumes() {
    let mut nats = NatsServer::start();
    let config = config_with(
        &nats.url(),
        "  - name: loop\n    interval: 50ms\n    deadline: 2s\n    publish_timeout: 1s\n    inject: {nats: {connection: main, subject: loop.x}}\n    catch: {nats: {connection: main, subject: loop.x}}\n",
    );
    let mut rt = Runtime::start(&config, Options::default())
        .await
        .expect("start");
    let probe = rt.probes[0].clone();
    let counts = || probe.counts();

    wait_for(
        "deliveries before the outage",
        Duration::from_secs(10),
        || counts().delivered >= 20,
    )
    .await;
    assert!(probe.is_up());
    let before = counts();
    assert_eq!(before.lost + before.publish_failed, 0, "{before:?}");

    let at_kill = counts();
    nats.kill();
    // The outage itself: chirp keeps its schedule while the broker is gone.
    let outage_end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < outage_end {
        let c = counts();
        assert!(c.invariant_holds(), "{c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!probe.is_up(), "the probe reports the broker down");
    let during = counts();
    assert!(
        during.sent >= at_kill.sent + 70,
        "the schedule kept going through the 4 s outage at 20 Hz: {at_kill:?} -> {during:?}"
    );
    nats.restart();

    wait_for(
        "deliveries after the restart",
        Duration::from_secs(20),
        || {
            let c = counts();
            assert!(c.invariant_holds(), "{c:?}");
            c.delivered >= during.delivered + 20
        },
    )
    .await;
    wait_for("the probe to be up again", Duration::from_secs(10), || {
        probe.is_up()
    })
    .await;

    let left = rt.drain(Duration::from_secs(5)).await;
    assert_eq!(left, 0);
    let end = counts();
    assert!(end.invariant_holds(), "{end:?}");
    // A 4 s outage with a 2 s deadline: at least the canaries of its first 2 s cannot arrive in time.
    assert!(
        end.lost + end.publish_failed >= 20,
        "the outage must show: {end:?}"
    );
    rt.shutdown().await;
}
