//! Deadlines are enforced on time even when the interval is much longer than
//! the deadline: a canary nobody catches is declared lost at its deadline,
//! not at the probe's next tick.

mod common;

use chirp::runtime::{Options, Runtime};
use common::{config_with, wait_for, NatsServer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_is_declared_at_the_deadline_not_the_next_tick() {
    let nats = NatsServer::start();
    // Nothing relays void.in to void.out: every canary is lost.
    let config = config_with(
        &nats.url(),
        "  - name: void\n    interval: 30s\n    deadline: 300ms\n    inject: {nats: {connection: main, subject: void.in}}\n    catch: {nats: {connection: main, subject: void.out}}\n",
    );
    let rt = Runtime::start(&config, Options::default())
        .await
        .expect("start");
    rt.ready().await;
    let probe = rt.probes[0].clone();
    wait_for(
        "the first canary to be sent",
        Duration::from_secs(5),
        || probe.counts().sent == 1,
    )
    .await;
    // The next tick is 30 s away; the loss must be declared long before it.
    wait_for("the loss to be declared", Duration::from_secs(5), || {
        probe.counts().lost == 1
    })
    .await;
    let c = probe.counts();
    assert_eq!((c.sent, c.delivered, c.lost, c.in_flight), (1, 0, 1, 0));
    rt.shutdown().await;
}
