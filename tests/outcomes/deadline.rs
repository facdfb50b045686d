//! Deadlines are enforced on time even when the interval is much longer than
//! the deadline: a canary nobody catches is declared lost at its deadline,
//! not at the probe's next tick.

use crate::support::{self, nats_conf, wait_for, NatsServer};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_is_declared_at_the_deadline_not_the_next_tick() {
    let nats = NatsServer::start();
    // Nothing relays void.in to void.out: every canary is lost.
    let config = nats_conf(&nats.url())
        .probe("{name: void, interval: 30s, deadline: 300ms, inject: {nats: {connection: main, subject: void.in}}, catch: {nats: {connection: main, subject: void.out}}}")
        .build();
    let rt = support::start(&config).await;
    rt.ready().await;
    let probe = support::probe(&rt, "void");
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
