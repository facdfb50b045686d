//! The fault suite: every scenario against every transport that can carry
//! it, from the list at the bottom (a new transport adds one line there and
//! implements `support::targets::Target`).
//!
//! - relay: a relay between inject and catch drops, duplicates, swaps and
//!   delays a known set of canaries; the counts must match the plan exactly
//!   and the percentiles the injected delays;
//! - restart: the broker (or, for HTTP, the endpoint) is killed mid-run and
//!   started again; the schedule keeps going, the outage shows as lost or
//!   publish_failed canaries, delivery resumes and the invariant holds;
//! - down at start: chirp starts while the broker (or endpoint) is down; the
//!   schedule runs from the start and every slot shows as a publish failure,
//!   never as silence, until the broker is up and delivery begins;
//! - garbage: random bytes, JSON without a token, forged, malformed and
//!   foreign tokens at the sink each land in their observation.

mod support;

use chirp::canary::{Signer, Token};
use rand::{Rng, SeedableRng};
use std::time::Duration;
use support::targets::{
    JetStream, Kafka, Mqtt, Nats, Plan, PubSub, Rabbit, Redis, Sqs, Target, Webhook,
};
use support::{free_port, wait_for, Conf, Scrape, KEY};
use tokio::time::Instant;

fn conf<T: Target>(t: &T, port: u16) -> Conf {
    let mut c = Conf::new().listen(format!("127.0.0.1:{port}"));
    if let Some((name, body)) = t.connection() {
        c = c.connection(&name, body);
    }
    c
}

const COUNT: u64 = 200;
/// Every fifth canary is held this long by the relay, the others `FAST`.
const SLOW: Duration = Duration::from_millis(35);
const FAST: Duration = Duration::from_millis(5);

fn delay_of(seq: u64) -> Duration {
    if seq % 5 == 4 {
        SLOW
    } else {
        FAST
    }
}

async fn relay_faults<T: Target>() {
    let port = free_port();
    let t = T::start(port).await;
    t.prepare(&["relay-in", "relay-out"]).await;
    let plan = Plan {
        drop: [5, 17, 33, 101].into(),
        duplicate: [8, 40, 77].into(),
        swap: [(20, 21), (60, 61), (150, 151)].into(),
        delay: Some(delay_of),
        ..Plan::default()
    };
    let relay = t.relay("relay-in", "relay-out", "relayed", plan).await;
    let config = conf(&t, port)
        .probe(format!(
            "{{name: relayed, interval: 50ms, deadline: 3s, inject: {}, catch: {}, slo: {{delivery: {{objective: 99%}}}}}}",
            t.inject("relay-in"),
            t.catch("relay-out")
        ))
        .build();
    let mut rt = support::start_counted(&config, COUNT).await;
    rt.injection_done().await;
    assert_eq!(
        rt.drain(Duration::from_secs(5)).await,
        0,
        "every canary resolves within its deadline"
    );
    let snap = rt.probes()[0].probe.snapshot(Instant::now());
    let c = snap.counts;
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(c.sent, COUNT);
    assert_eq!(
        (c.delivered, c.lost, c.publish_failed),
        (COUNT - 4, 4, 0),
        "{c:?}"
    );
    assert_eq!((c.duplicate, c.reordered, c.late), (3, 3, 0), "{c:?}");
    assert_eq!((c.foreign, c.rejected, c.unrelated), (0, 0, 0), "{c:?}");

    // 80% of canaries are held FAST, 20% SLOW: p50 sits just above FAST, p90 just above SLOW.
    let l = snap.latency.cumulative;
    assert_eq!(l.count, COUNT - 4);
    let d = Duration::from_secs_f64;
    let tol = t.tolerance();
    assert!(
        d(l.p50) >= FAST && d(l.p50) <= FAST + tol,
        "p50 {:?}",
        d(l.p50)
    );
    assert!(
        d(l.p90) >= SLOW && d(l.p90) <= SLOW + tol,
        "p90 {:?}",
        d(l.p90)
    );
    assert!(d(l.min) >= FAST, "min {:?}", d(l.min));
    let watched = rt.probes()[0].clone();
    rt.shutdown().await;
    relay.abort();
    // The SLO engine heard of every resolution exactly once.
    let slo = watched
        .slo
        .expect("an SLO")
        .state(Instant::now(), watched.probe.lanes().len());
    assert_eq!(slo.totals.events, COUNT, "{:?}", slo.totals);
    assert_eq!(slo.totals.delivery_good, COUNT - 4, "{:?}", slo.totals);
}

/// A pipeline with a dead-letter queue: the relay routes known canaries to
/// it instead of the output, and one to both; a second catch point on the
/// DLQ resolves the first kind as dead-lettered (exactly), the other as a
/// duplicate after its delivery; nothing is lost.
async fn dead_letters<T: Target>() {
    let port = free_port();
    let t = T::start(port).await;
    t.prepare(&["dl-in", "dl-out", "dl-dlq"]).await;
    let plan = Plan {
        dead_letter: [3, 10, 42, 43, 77].into(),
        dead_letter_after: [20].into(),
        dlq: Some("dl-dlq".into()),
        ..Plan::default()
    };
    let relay = t.relay("dl-in", "dl-out", "rejecting", plan).await;
    let config = conf(&t, port)
        .probe(format!(
            "{{name: rejecting, interval: 20ms, deadline: 3s, inject: {}, catch: {{{}, dead_letter: {}}}, slo: {{delivery: {{objective: 99%}}}}}}",
            t.inject("dl-in"),
            t.catch("dl-out")
                .strip_prefix('{')
                .and_then(|c| c.strip_suffix('}'))
                .expect("a flow mapping"),
            t.catch("dl-dlq")
        ))
        .build();
    const N: u64 = 100;
    let mut rt = support::start_counted(&config, N).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let w = &rt.probes()[0];
    let c = w.probe.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(
        (
            c.sent,
            c.delivered,
            c.dead_lettered,
            c.lost,
            c.publish_failed
        ),
        (N, N - 5, 5, 0, 0),
        "{c:?}"
    );
    assert_eq!(
        c.duplicate, 1,
        "seq 20 reached the output, then the DLQ: {c:?}"
    );
    // Bad for the SLI, like a loss.
    let slo = w.slo.as_ref().unwrap().state(Instant::now(), 1);
    assert_eq!((slo.totals.events, slo.totals.delivery_good), (N, N - 5));
    rt.shutdown().await;
    relay.abort();
}

async fn restart<T: Target>() {
    let port = free_port();
    let mut t = T::start(port).await;
    let l = t.looped("loop").await;
    let config = conf(&t, port)
        .probe(format!(
            "{{name: loop, interval: 50ms, deadline: 2s, publish_timeout: 1s, inject: {}, catch: {}}}",
            l.inject, l.catch
        ))
        .build();
    let rt = support::start(&config).await;
    let probe = support::probe(&rt, "loop");
    let counts = || probe.counts();
    wait_for(
        "deliveries before the outage",
        Duration::from_secs(30),
        || counts().delivered >= 20,
    )
    .await;
    assert!(probe.is_up());
    let before = counts();
    assert_eq!(before.lost + before.publish_failed, 0, "{before:?}");

    t.kill();
    // The outage itself: chirp keeps its schedule while the broker is gone.
    let outage_end = Instant::now() + Duration::from_secs(4);
    while Instant::now() < outage_end {
        let c = counts();
        assert!(c.invariant_holds(), "{c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if t.reports_down() {
        assert!(!probe.is_up(), "the probe reports the broker down");
    }
    let during = counts();
    assert!(
        during.sent >= before.sent + 70,
        "the schedule kept going through the 4 s outage at 20 Hz: {before:?} -> {during:?}"
    );
    t.restart().await;

    wait_for(
        "deliveries after the restart",
        Duration::from_secs(60),
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
    let mut rt = rt;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let end = counts();
    assert!(end.invariant_holds(), "{end:?}");
    // A 4 s outage with a 2 s deadline: at least the canaries of its first 2 s cannot arrive in time.
    assert!(
        end.lost + end.publish_failed >= 20,
        "the outage must show: {end:?}"
    );
    rt.shutdown().await;
}

async fn down_at_start<T: Target>() {
    let port = free_port();
    let mut t = T::start(port).await;
    let l = t.looped("cold").await;
    t.kill();
    let config = conf(&t, port)
        .probe(format!(
            "{{name: cold, interval: 50ms, deadline: 2s, publish_timeout: 1s, inject: {}, catch: {}}}",
            l.inject, l.catch
        ))
        .build();
    // As `run` does: it starts although the broker is down.
    let rt = support::start(&config).await;
    let probe = support::probe(&rt, "cold");
    // The schedule runs from the start, and the outage shows in the counts.
    wait_for("the outage to show", Duration::from_secs(20), || {
        let c = probe.counts();
        assert!(c.invariant_holds(), "{c:?}");
        c.publish_failed >= 20
    })
    .await;
    let c = probe.counts();
    assert_eq!(c.delivered, 0, "{c:?}");
    assert!(
        c.failed(t.outage_kind()) >= 20,
        "{:?}: {c:?}",
        t.outage_kind()
    );
    t.restart().await;
    wait_for(
        "deliveries once the broker is up",
        Duration::from_secs(60),
        || {
            let c = probe.counts();
            assert!(c.invariant_holds(), "{c:?}");
            c.delivered >= 20
        },
    )
    .await;
    let mut rt = rt;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    assert!(probe.counts().invariant_holds());
    rt.shutdown().await;
}

async fn garbage<T: Target>() {
    let port = free_port();
    let t = T::start(port).await;
    let l = t.looped("sink").await;
    let dest = l.dest.as_str();
    let config = conf(&t, port)
        .probe(format!(
            "{{name: sink, interval: 1h, inject: {}, catch: {}}}",
            l.inject, l.catch
        ))
        .build();
    let mut rt = support::start(&config).await;
    rt.ready().await;
    let probe = support::probe(&rt, "sink");
    // The loop works: the first canary is delivered.
    wait_for("the first canary", Duration::from_secs(10), || {
        probe.counts().delivered == 1
    })
    .await;

    let signer = Signer::new(KEY.as_bytes());
    let token = |probe: &str, run_id: u64, seq: u64| {
        signer.encode(&Token {
            probe: probe.into(),
            run_id,
            lane: 0,
            seq,
            sent_unix_us: 1,
        })
    };
    // First, what the token fuzzer found: the prefix and a MAC-sized field
    // and nothing else once crashed the decoder (and the catch loop with
    // it); everything below proves the loop survives it (rejected).
    t.publish(
        dest,
        "sink",
        None,
        "chirp1.ccc3456789abcdef0129475368abcdef".into(),
    )
    .await;
    // 5 random byte strings and 3 JSON documents: no token (unrelated).
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..5 {
        let bytes: Vec<u8> = (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect();
        assert!(chirp::canary::scan(&bytes).is_none());
        t.publish(dest, "sink", None, bytes).await;
    }
    for doc in [r#"{"order":1}"#, r#"{"chirp":null}"#, "[]"] {
        t.publish(dest, "sink", None, doc.into()).await;
    }
    // 2 forged tokens (bad MAC) and 1 malformed one in the header (rejected).
    let forged = Signer::new(b"not-the-key-at-all-000").encode(&Token {
        probe: "sink".into(),
        run_id: rt.run_id,
        lane: 0,
        seq: 0,
        sent_unix_us: 1,
    });
    t.publish(
        dest,
        "sink",
        None,
        format!(r#"{{"chirp":"{forged}"}}"#).into(),
    )
    .await;
    let tampered = token("sink", rt.run_id, 0).replace(".0.", ".1.");
    t.publish(dest, "sink", None, tampered.into()).await;
    t.publish(dest, "sink", Some("chirp1.garbage"), "{}".into())
        .await;
    // 4 tokens of another run and 1 of another probe of this run (foreign).
    for seq in 0..4 {
        t.publish(dest, "sink", None, token("sink", rt.run_id ^ 1, seq).into())
            .await;
    }
    t.publish(dest, "sink", None, token("other", rt.run_id, 0).into())
        .await;

    wait_for(
        "all garbage to be classified",
        Duration::from_secs(10),
        || {
            let c = probe.counts();
            c.unrelated + c.rejected + c.foreign == 17
        },
    )
    .await;
    let c = probe.counts();
    // A malformed token in a header is rejected where the header is read, and
    // the message is unrelated where it is not (its body has no token).
    let expected = if t.header_tokens() {
        (8, 4, 5)
    } else {
        (9, 3, 5)
    };
    assert_eq!((c.unrelated, c.rejected, c.foreign), expected, "{c:?}");
    assert_eq!(
        (c.sent, c.delivered, c.duplicate, c.late),
        (1, 1, 0, 0),
        "only the real canary: {c:?}"
    );
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(rt.drain(Duration::from_millis(10)).await, 0);
    rt.shutdown().await;
}

/// One line per transport: its name, its target, and the scenarios it can carry.
macro_rules! suite {
    ($($name:ident: $target:ty => [$($scenario:ident),*];)*) => {
        $(mod $name {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $scenario() {
                    super::$scenario::<$target>().await;
                }
            )*
        })*
    };
}

suite! {
    nats: Nats => [relay_faults, restart, down_at_start, garbage, dead_letters];
    jetstream: JetStream => [relay_faults, restart, down_at_start, garbage, dead_letters];
    amqp: Rabbit => [relay_faults, restart, down_at_start, garbage, dead_letters];
    kafka: Kafka => [relay_faults, restart, down_at_start, garbage, dead_letters];
    http: Webhook => [relay_faults, restart, down_at_start, garbage];
    mqtt: Mqtt => [relay_faults, restart, down_at_start, garbage, dead_letters];
    redis: Redis => [relay_faults, restart, down_at_start, garbage, dead_letters];
    sqs: Sqs => [relay_faults, restart, down_at_start, garbage, dead_letters];
    pubsub: PubSub => [relay_faults, restart, down_at_start, garbage, dead_letters];
}

/// The webhook receiver's own checks: unsigned and badly signed requests are
/// refused (401) and counted as rejected; an unknown probe is 404; and a
/// valid token in the `Chirp-Token` header of a signed body without one is
/// not a catch (the signature covers the body only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_signatures_are_checked() {
    // An endpoint that never answers: canary 0 stays in flight.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let config = Conf::new()
        .probe(format!("{{name: hook, interval: 1h, deadline: 1h, publish_timeout: 1h, inject: {{http: {{url: \"http://{silent_addr}/never\"}}}}, catch: {{http: {{}}}}}}"))
        .build();
    let rt = support::start(&config).await;
    let addr = rt.addr.expect("a listener");
    let probe = support::probe(&rt, "hook");
    wait_for("canary 0 in flight", Duration::from_secs(5), || {
        probe.counts().in_flight == 1
    })
    .await;
    let url = format!("http://{addr}/hooks/hook");
    let signer = Signer::new(KEY.as_bytes());
    let http = reqwest::Client::new();
    let post = |body: &'static str, sig: Option<String>, header: Option<String>| {
        let mut r = http.post(&url).body(body);
        if let Some(s) = sig {
            r = r.header("X-Chirp-Signature", s);
        }
        if let Some(h) = header {
            r = r.header(chirp::canary::HEADER, h);
        }
        r.send()
    };
    assert_eq!(post("{}", None, None).await.unwrap().status(), 401);
    assert_eq!(
        post("{}", Some("sha256=00".into()), None)
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        post("{}", Some(format!("sha256={}", "ab".repeat(32))), None)
            .await
            .unwrap()
            .status(),
        401
    );
    // Signed, no token in the body, canary 0's valid token in the header.
    let token = signer.encode(&Token {
        probe: "hook".into(),
        run_id: rt.run_id,
        lane: 0,
        seq: 0,
        sent_unix_us: 1,
    });
    let body = r#"{"hello":"world"}"#;
    let answer = post(body, Some(signer.signature(body.as_bytes())), Some(token))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), r#"{"result":"unrelated"}"#);
    let nope = http
        .post(format!("http://{addr}/hooks/nope"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(nope.status(), 404);
    let c = probe.counts();
    assert_eq!(
        (c.rejected, c.unrelated, c.delivered, c.in_flight),
        (3, 1, 0, 1),
        "{c:?}"
    );
    assert!(c.invariant_holds(), "{c:?}");
    rt.stop_injecting();
    rt.shutdown().await;
    held.abort();
}

/// Malformed message headers from anyone who can publish on a NATS catch
/// subject make the NATS client drop its connection (async-nats 0.51 fails
/// the whole read on a header block it cannot parse). Only the catch client
/// is disturbed: publishing goes on, and every loss is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_malformed_headers_disturb_only_the_catch_client() {
    use std::io::{Read, Write};
    let nats = support::NatsServer::start();
    let port = free_port();
    let config = support::nats_conf(&nats.url())
        .listen(format!("127.0.0.1:{port}"))
        .probe("{name: loop, interval: 20ms, deadline: 2s, inject: {nats: {connection: main, subject: mal}}, catch: {nats: {connection: main, subject: mal}}}")
        .build();
    let mut rt = support::start(&config).await;
    let probe = support::probe(&rt, "loop");
    wait_for("deliveries", Duration::from_secs(10), || {
        probe.counts().delivered >= 10
    })
    .await;

    // A raw client publishes messages whose header blocks do not parse.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", nats.port)).unwrap();
    let mut info = [0u8; 4096];
    let _ = raw.read(&mut info).unwrap();
    raw.write_all(b"CONNECT {\"verbose\":false,\"headers\":true}\r\n")
        .unwrap();
    let malformed: [&[u8]; 4] = [
        b"NATS/1.0\r\nX: \xff\xfe\r\n\r\n",   // not UTF-8
        b"HTTP/1.1\r\nX: y\r\n\r\n",          // no NATS/1.0 line
        b"NATS/1.0\r\nno colon here\r\n\r\n", // a line without a colon
        b"\x00\x01binary\r\n\r\n",            // binary
    ];
    for h in malformed.iter().cycle().take(12) {
        let mut msg = format!("HPUB mal {} {}\r\n", h.len(), h.len() + 1).into_bytes();
        msg.extend_from_slice(h);
        msg.extend_from_slice(b"x\r\n");
        raw.write_all(&msg).unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let addr = rt.addr.unwrap();
    let reconnects = |role: &'static str| async move {
        Scrape::get(addr).await.sum(
            "chirp_transport_reconnects_total",
            &[("connection", "main"), ("role", role)],
        )
    };
    support::wait_for_async(
        "the catch client to reconnect",
        Duration::from_secs(10),
        || async { reconnects("catch").await >= 1.0 && probe.is_up() },
    )
    .await;
    wait_for("deliveries after it", Duration::from_secs(10), || {
        probe.counts().delivered >= 100
    })
    .await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let c = probe.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(
        reconnects("inject").await,
        0.0,
        "the inject client was disturbed"
    );
    assert_eq!(c.publish_failed, 0, "publishing was disturbed: {c:?}");
    assert_eq!(
        c.rejected + c.unrelated,
        0,
        "the client never handed them over: {c:?}"
    );
    rt.shutdown().await;
}

/// RabbitMQ: a canary published to an exchange where no queue is bound for
/// its routing key comes back (`mandatory`): it is
/// `publish_failed{kind="rejected"}`, never delivered and never lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unroutable_canaries_are_rejected_never_lost() {
    let port = free_port();
    let t = Rabbit::start(port).await;
    t.prepare(&["bound"]).await;
    let config = conf(&t, port)
        .probe(format!(
            "{{name: nowhere, interval: 20ms, deadline: 2s, inject: {}, catch: {}}}",
            t.inject("unbound.key"),
            t.catch("bound")
        ))
        .build();
    let mut rt = support::start_counted(&config, 30).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let c = rt.probes()[0].probe.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(
        (c.sent, c.publish_failed, c.delivered, c.lost),
        (30, 30, 0, 0),
        "{c:?}"
    );
    assert_eq!(c.failed(chirp::outcome::FailureKind::Rejected), 30, "{c:?}");
    rt.shutdown().await;
}

/// JetStream through a named durable pull consumer: every canary is
/// delivered and acked after recording, so the consumer has nothing
/// pending and nothing redelivered once the run is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_durable_consumer_acks_every_canary() {
    let port = free_port();
    let t = JetStream::start(port).await;
    t.create_stream("durable.loop").await;
    let client = async_nats::connect(t.server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("durable_loop").await.unwrap();
    stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("service".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap();
    let config = conf(&t, port)
        .probe(format!(
            "{{name: durable, interval: 20ms, deadline: 3s, inject: {}, catch: {{jetstream: {{connection: main, stream: durable_loop, consumer: service}}}}}}",
            t.inject("durable.loop"),
        ))
        .build();
    let mut rt = support::start_counted(&config, 50).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let c = rt.probes()[0].probe.counts();
    assert_eq!((c.sent, c.delivered, c.duplicate), (50, 50, 0), "{c:?}");
    rt.shutdown().await;
    // Acks are sent without waiting for the server's reply: poll until the
    // consumer has taken all 50.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        stream.get_consumer("service").await.unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let info = consumer.info().await.unwrap().clone();
        let got = (
            info.num_ack_pending,
            info.num_redelivered,
            info.delivered.stream_sequence,
        );
        if got == (0, 0, 50) {
            break;
        }
        assert!(Instant::now() < give_up, "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `check` against a JetStream subject no stream captures, or a stream
/// that does not exist, exits 3 (unreachable), before any canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_missing_streams_are_unreachable() {
    let port = free_port();
    let t = JetStream::start(port).await;
    t.create_stream("exists").await;
    for (inject, catch) in [
        (t.inject("nobody.captures"), t.catch("exists")),
        (
            t.inject("exists"),
            "{jetstream: {connection: main, stream: MISSING}}".to_owned(),
        ),
    ] {
        let config = conf(&t, port)
            .probe(format!(
                "{{name: lost, interval: 20ms, inject: {inject}, catch: {catch}}}"
            ))
            .build();
        let opts = chirp::runtime::Options {
            count: Some(5),
            fail_fast: true,
            reload: false,
            ..chirp::runtime::Options::run(config.listen.address)
        };
        match chirp::runtime::Runtime::start(&config, opts).await {
            Err(e) => assert!(e.is_unreachable(), "{e:#}"),
            Ok(_) => panic!("started with {inject} / {catch}"),
        }
    }
}

/// RabbitMQ's own dead-lettering: the work queue has a dead-letter
/// exchange, and the service consuming it rejects every third canary (no
/// requeue); the rest it passes on. The probe catches the output queue and,
/// on `dead_letter`, the DLX's queue: exactly a third is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_rejected_canaries_are_dead_lettered_exactly() {
    use futures::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicRejectOptions, ConfirmSelectOptions,
        ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::{AMQPValue, FieldTable};
    let port = free_port();
    let t = Rabbit::start(port).await;
    t.prepare(&["done"]).await;
    let ch = t.channel().await;
    ch.exchange_declare(
        "dlx".into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        "work.dead".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "work.dead".into(),
        "dlx".into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("dlx".into()),
    );
    ch.queue_declare("work".into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    ch.queue_bind(
        "work".into(),
        support::targets::RABBIT_EXCHANGE.into(),
        "work".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    // The service: rejects seq % 3 == 2, passes the rest on to `done`.
    let service = t.channel().await;
    let out = t.channel().await;
    out.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut work = service
        .basic_consume(
            "work".into(),
            "service".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let signer = Signer::new(KEY.as_bytes());
    let svc = tokio::spawn(async move {
        while let Some(Ok(d)) = work.next().await {
            let token = chirp::canary::scan(&d.data)
                .expect("a token in the body")
                .to_owned();
            let seq = signer.decode(&token).unwrap().seq;
            if seq % 3 == 2 {
                d.reject(BasicRejectOptions { requeue: false })
                    .await
                    .unwrap();
            } else {
                support::targets::rabbit_publish(&out, "done", Some(&token), &d.data).await;
                d.ack(BasicAckOptions::default()).await.unwrap();
            }
        }
    });
    let config = conf(&t, port)
        .probe(format!(
            "{{name: strict, interval: 20ms, deadline: 3s, inject: {}, catch: {{amqp: {{connection: main, queue: done}}, dead_letter: {{amqp: {{connection: main, queue: work.dead}}}}}}}}",
            t.inject("work"),
        ))
        .build();
    let mut rt = support::start_counted(&config, 60).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let c = rt.probes()[0].probe.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(
        (c.sent, c.delivered, c.dead_lettered, c.lost, c.duplicate),
        (60, 40, 20, 0, 0),
        "{c:?}"
    );
    rt.shutdown().await;
    svc.abort();
}

/// Inject in one transport, catch in another: JetStream in, RabbitMQ out
/// (a service reading the subject republishes to the exchange), and
/// RabbitMQ in, JetStream out. Every canary is delivered once, with the
/// token carried in the header by one service and only in the body by the
/// other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_in_rabbitmq_out_and_back() {
    use futures::StreamExt;
    let port = free_port();
    let js = JetStream::start(port).await;
    let rabbit = Rabbit::start(port).await;
    js.prepare(&["x.in", "y.out"]).await;
    rabbit.prepare(&["x.out", "y.in"]).await;

    // JetStream → RabbitMQ, token in the header.
    let client = async_nats::connect(js.server.url()).await.unwrap();
    let mut sub = client.subscribe("x.in").await.unwrap();
    client.flush().await.unwrap();
    let out = rabbit.channel().await;
    out.confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    let to_rabbit = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            let token = m
                .headers
                .as_ref()
                .and_then(|h| h.get(chirp::canary::HEADER))
                .map(|v| v.to_string());
            support::targets::rabbit_publish(&out, "x.out", token.as_deref(), &m.payload).await;
        }
    });
    // RabbitMQ → JetStream, the body only (the catch side scans it).
    let rx = rabbit.channel().await;
    let mut consumer = rx
        .basic_consume(
            "y.in".into(),
            "svc".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let jsc = async_nats::jetstream::new(client.clone());
    let to_js = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            jsc.publish("y.out", d.data.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    });

    let config = conf(&js, port)
        .connection("rabbit", format!("amqp: {{url: \"{}\"}}", rabbit.server.url()))
        .probe(format!(
            "{{name: js-to-rabbit, interval: 20ms, deadline: 3s, inject: {}, catch: {{amqp: {{connection: rabbit, queue: x.out}}}}}}",
            js.inject("x.in")
        ))
        .probe(format!(
            "{{name: rabbit-to-js, interval: 20ms, deadline: 3s, inject: {{amqp: {{connection: rabbit, exchange: {}, routing_key: y.in}}}}, catch: {}}}",
            support::targets::RABBIT_EXCHANGE,
            js.catch("y.out")
        ))
        .build();
    let mut rt = support::start_counted(&config, 40).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    for w in rt.probes() {
        let c = w.probe.counts();
        assert!(c.invariant_holds(), "{c:?}");
        assert_eq!(
            (c.sent, c.delivered, c.duplicate, c.unrelated),
            (40, 40, 0, 0),
            "{}: {c:?}",
            w.probe.name()
        );
    }
    rt.shutdown().await;
    to_rabbit.abort();
    to_js.abort();
}

/// RabbitMQ over TLS (AMQPS) with a certificate the test makes: trusted
/// through `tls.ca_file`, every canary goes through; with another CA the
/// connection is refused and `check` would exit 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_tls_trusts_the_given_ca_only() {
    let ck =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let server = tokio::task::block_in_place(|| {
        support::brokers::RabbitMq::with_tls(&ck.cert.pem(), &ck.key_pair.serialize_pem())
    });
    let tls_port = server.tls_port.unwrap();
    let dir = support::TempDir::new("amqps");
    let ca = dir.write("ca.pem", ck.cert.pem());
    let wrong = dir.write("other.pem", other.cert.pem());
    let t = Rabbit::around(server);
    t.prepare(&["tls.loop"]).await;
    let port = free_port();
    for (ca, works) in [(&ca, true), (&wrong, false)] {
        let config = Conf::new()
            .listen(format!("127.0.0.1:{port}"))
            .connection(
                "main",
                format!(
                    "amqp: {{url: \"amqps://guest:guest@127.0.0.1:{tls_port}\", tls: {{ca_file: {}}}}}",
                    ca.display()
                ),
            )
            .probe(format!(
                "{{name: secure, interval: 20ms, deadline: 3s, inject: {}, catch: {}}}",
                t.inject("tls.loop"),
                t.catch("tls.loop")
            ))
            .build();
        let opts = chirp::runtime::Options {
            count: Some(30),
            fail_fast: true,
            reload: false,
            ..chirp::runtime::Options::run(config.listen.address)
        };
        match chirp::runtime::Runtime::start(&config, opts).await {
            Ok(mut rt) => {
                assert!(works, "connected through a CA it should not trust");
                rt.injection_done().await;
                assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
                let c = rt.probes()[0].probe.counts();
                assert_eq!((c.sent, c.delivered), (30, 30), "{c:?}");
                rt.shutdown().await;
            }
            Err(e) => {
                assert!(!works, "{e:#}");
                assert!(e.is_unreachable(), "{e:#}");
            }
        }
    }
}

/// MQTT: canaries the pipeline sends again once the broker is back (as a
/// QoS 1 sender does for messages whose PUBACK it never saw) are second
/// catches: counted as `duplicate`, never delivered twice, and the outage
/// between keeps the counts whole. Both chirp clients reconnect after the
/// broker restart and the catch client subscribes again (the restarted
/// broker kept no session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_copies_after_a_broker_restart_are_duplicates() {
    use support::targets::{mqtt_send, MqttPeer, Msg};
    let mut broker = support::MosquittoServer::start();
    let mut relay = MqttPeer::connect(broker.port, Some("dup/in")).await;
    let (_, none) = tokio::sync::mpsc::unbounded_channel();
    let mut incoming = std::mem::replace(&mut relay.messages, none);
    let forwarded: std::sync::Arc<std::sync::Mutex<Vec<Msg>>> = Default::default();
    let (client, kept) = (relay.client.clone(), forwarded.clone());
    let forwarding = tokio::spawn(async move {
        while let Some(m) = incoming.recv().await {
            mqtt_send(&client, "dup/out", m.token.as_deref(), m.body.clone()).await;
            kept.lock().unwrap().push(m);
        }
    });
    let config = Conf::new()
        .connection("m", format!("mqtt: {{url: \"{}\"}}", broker.url()))
        .probe("{name: dup, interval: 50ms, deadline: 3s, publish_timeout: 1s, inject: {mqtt: {connection: m, topic: dup/in}}, catch: {mqtt: {connection: m, topic: dup/out}}}")
        .build();
    let mut rt = support::start_connected(&config).await;
    let probe = support::probe(&rt, "dup");
    wait_for("deliveries", Duration::from_secs(20), || {
        probe.counts().delivered >= 10
    })
    .await;
    let before = probe.counts();
    assert_eq!((before.lost, before.publish_failed), (0, 0), "{before:?}");

    broker.kill();
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker.restart();
    relay.subscribed(2).await;
    wait_for(
        "deliveries after the restart",
        Duration::from_secs(30),
        || {
            let c = probe.counts();
            assert!(c.invariant_holds(), "{c:?}");
            c.delivered >= before.delivered + 10
        },
    )
    .await;

    // The first five canaries, delivered before the outage, come again.
    let again: Vec<Msg> = forwarded.lock().unwrap()[..5].to_vec();
    let mut sender = MqttPeer::connect(broker.port, None).await;
    for m in again {
        sender.publish("dup/out", m.token.as_deref(), m.body).await;
    }
    wait_for("the copies", Duration::from_secs(10), || {
        probe.counts().duplicate == 5
    })
    .await;
    rt.stop_injecting();
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let c = probe.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(c.duplicate, 5, "{c:?}");
    assert_eq!(c.in_flight, 0, "{c:?}");
    assert_eq!(c.delivered + c.lost + c.publish_failed, c.sent, "{c:?}");
    assert_eq!((c.foreign, c.rejected, c.unrelated), (0, 0, 0), "{c:?}");
    rt.shutdown().await;
    forwarding.abort();
}

/// MQTT: QoS 0, 1 and 2 over MQTT 5 and 3.1.1 (where the token travels in
/// the payload only) all deliver every canary, each publish confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_every_qos_and_both_versions_deliver() {
    let broker = support::MosquittoServer::start();
    let probes = [
        ("v5q0", "m5", 0),
        ("v5q2", "m5", 2),
        ("v3q1", "m3", 1),
        ("v3q2", "m3", 2),
        // Past rumqttc's 10 KiB default packet limit.
        ("v5big", "m5", 1),
        ("v3big", "m3", 1),
    ];
    let mut conf = Conf::new()
        .connection("m5", format!("mqtt: {{url: \"{}\"}}", broker.url()))
        .connection(
            "m3",
            format!("mqtt: {{url: \"{}\", version: \"3.1.1\"}}", broker.url()),
        );
    for (name, conn, qos) in probes {
        let size = if name.ends_with("big") { 100_000 } else { 256 };
        conf = conf.probe(format!(
            "{{name: {name}, interval: 50ms, deadline: 2s, payload: {{size: {size}}}, inject: {{mqtt: {{connection: {conn}, topic: q/{name}, qos: {qos}}}}}, catch: {{mqtt: {{connection: {conn}, topic: q/{name}, qos: {qos}}}}}}}"
        ));
    }
    let mut rt = support::start_connected(&conf.build()).await;
    for (name, _, _) in probes {
        let probe = support::probe(&rt, name);
        wait_for(name, Duration::from_secs(20), || {
            probe.counts().delivered >= 10
        })
        .await;
    }
    rt.stop_injecting();
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    for (name, _, _) in probes {
        let c = support::probe(&rt, name).counts();
        assert!(c.invariant_holds(), "{name}: {c:?}");
        assert_eq!(
            (c.delivered, c.lost, c.publish_failed, c.duplicate),
            (c.sent, 0, 0, 0),
            "{name}: {c:?}"
        );
    }
    rt.shutdown().await;
    // The catch clients kept a session (clean start 0), and ended it on
    // shutdown by connecting once more with a clean one (clean start 1).
    let log = broker.log();
    for conn in ["m5", "m3"] {
        let client = format!(" as chirp-{conn}-catch-");
        let connects: Vec<&str> = log.lines().filter(|l| l.contains(&client)).collect();
        assert!(
            connects.first().is_some_and(|l| l.contains(", c0,")),
            "{log}"
        );
        assert!(
            connects.last().is_some_and(|l| l.contains(", c1,")),
            "{log}"
        );
    }
}

/// MQTT: a publish the broker refuses (an MQTT 5 PUBACK saying not
/// authorized) is `publish_failed{kind="auth"}`, and one a broker never
/// acknowledges is `publish_failed{kind="timeout"}` after `publish_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_refused_and_unanswered_publishes_fail_with_their_kind() {
    use chirp::outcome::FailureKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Anonymous clients may read everything and write nothing.
    let dir = support::TempDir::new("mqtt-acl");
    let acl = dir.write("acl", "topic read #\n");
    let broker = support::MosquittoServer::start_with(&format!("acl_file {}", acl.display()), true);
    // A "broker" that accepts the connection and never answers again.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((mut c, _)) = silent.accept().await {
            let mut buf = [0u8; 1024];
            let _ = c.read(&mut buf).await;
            // CONNACK (MQTT 5): no session, success, no properties.
            let _ = c.write_all(&[0x20, 0x03, 0x00, 0x00, 0x00]).await;
            conns.push(tokio::spawn(async move {
                while matches!(c.read(&mut buf).await, Ok(n) if n > 0) {}
            }));
        }
    });
    let config = Conf::new()
        .connection("m", format!("mqtt: {{url: \"{}\"}}", broker.url()))
        .connection("s", format!("mqtt: {{url: \"mqtt://127.0.0.1:{silent_port}\"}}"))
        .probe("{name: denied, interval: 50ms, deadline: 2s, inject: {mqtt: {connection: m, topic: no/in}}, catch: {mqtt: {connection: m, topic: no/in}}}")
        .probe("{name: unanswered, interval: 50ms, deadline: 2s, publish_timeout: 300ms, inject: {mqtt: {connection: s, topic: void}}, catch: {mqtt: {connection: m, topic: void}}}")
        .build();
    let mut rt = support::start_connected(&config).await;
    let denied = support::probe(&rt, "denied");
    let unanswered = support::probe(&rt, "unanswered");
    wait_for("the failures", Duration::from_secs(20), || {
        denied.counts().publish_failed >= 10 && unanswered.counts().publish_failed >= 10
    })
    .await;
    rt.stop_injecting();
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let (d, u) = (denied.counts(), unanswered.counts());
    assert!(d.invariant_holds() && u.invariant_holds(), "{d:?} {u:?}");
    assert_eq!(d.failed(FailureKind::Auth), d.sent, "{d:?}");
    assert_eq!(u.failed(FailureKind::Timeout), u.sent, "{u:?}");
    assert_eq!(d.delivered + u.delivered, 0, "{d:?} {u:?}");
    rt.shutdown().await;
    held.abort();
}

/// MQTT: two probes on one connection whose catch filters overlap. A
/// broker sends one copy of a message per matching subscription; the
/// subscription identifiers (MQTT 5) hand each copy to its filter's probe
/// only, so no copy makes a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_overlapping_filters_of_two_probes_make_no_duplicates() {
    let broker = support::MosquittoServer::start();
    let config = Conf::new()
        .connection("m", format!("mqtt: {{url: \"{}\"}}", broker.url()))
        .probe("{name: wide, interval: 50ms, deadline: 2s, inject: {mqtt: {connection: m, topic: ov/w}}, catch: {mqtt: {connection: m, topic: \"ov/#\"}}}")
        .probe("{name: narrow, interval: 50ms, deadline: 2s, inject: {mqtt: {connection: m, topic: ov/n}}, catch: {mqtt: {connection: m, topic: ov/n}}}")
        .build();
    let mut rt = support::start_connected(&config).await;
    let wide = support::probe(&rt, "wide");
    let narrow = support::probe(&rt, "narrow");
    wait_for("deliveries", Duration::from_secs(20), || {
        wide.counts().delivered >= 10 && narrow.counts().delivered >= 10
    })
    .await;
    rt.stop_injecting();
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let n = narrow.counts();
    // The wide filter sees the narrow probe's canaries too, once each.
    wait_for(
        "the narrow canaries at the wide filter",
        Duration::from_secs(5),
        || wide.counts().foreign == n.sent,
    )
    .await;
    let w = wide.counts();
    assert_eq!((w.delivered, w.duplicate), (w.sent, 0), "{w:?}");
    assert_eq!(
        (n.delivered, n.duplicate, n.foreign),
        (n.sent, 0, 0),
        "{n:?}"
    );
    rt.shutdown().await;
}

/// MQTT: a reload that changes a connection makes its new clients while
/// the old ones still run. Their client ids differ, so the broker never
/// closes one for the other (which would make them take the id from each
/// other until the old ones close, and the old catch client's clean
/// goodbye would wipe the new one's session); the probe goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_a_reloaded_connection_takes_over_without_a_fight() {
    let broker = support::MosquittoServer::start();
    let conf = |keep_alive: &str| {
        Conf::new()
            .connection(
                "m",
                format!("mqtt: {{url: \"{}\", keep_alive: {keep_alive}}}", broker.url()),
            )
            .probe("{name: r, interval: 50ms, deadline: 2s, inject: {mqtt: {connection: m, topic: r/loop}}, catch: {mqtt: {connection: m, topic: r/loop}}}")
            .build()
    };
    let mut rt = support::start_connected(&conf("30s")).await;
    let before = support::probe(&rt, "r");
    wait_for("deliveries", Duration::from_secs(20), || {
        before.counts().delivered >= 10
    })
    .await;
    rt.reload(&conf("20s"), &tokio_util::sync::CancellationToken::new())
        .await
        .expect("the reload applies");
    let probe = support::probe(&rt, "r");
    let at = probe.counts().delivered;
    wait_for(
        "deliveries after the reload",
        Duration::from_secs(20),
        || probe.counts().delivered >= at + 20,
    )
    .await;
    rt.stop_injecting();
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let c = probe.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(c.duplicate, 0, "{c:?}");
    rt.shutdown().await;
    let log = broker.log();
    assert!(
        !log.contains("already connected, closing old connection"),
        "{log}"
    );
    assert!(
        log.contains(" as chirp-m-catch-") && log.contains("-1 (p5, c0"),
        "{log}"
    );
}

/// Redis: acknowledgements that never land (an ACL refuses `XACK` to
/// chirp's user) leave every entry pending. Once the test kills chirp's
/// connections, the catch reads its pending entries again: each comes back
/// once, a duplicate, as many as were delivered, and Redis saw each
/// delivered to chirp exactly twice. A user that may not `XADD` fails
/// every publish as `auth`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unacknowledged_entries_come_back_as_duplicates_and_refused_appends_are_auth() {
    use chirp::outcome::FailureKind;
    let server = support::RedisServer::start_with(
        "user noack on >pw ~* &* +@all -xack\nuser ro on >pw ~* &* +@all -xadd",
    );
    let url = |user: &str| format!("redis://{user}:pw@127.0.0.1:{}", server.port);
    let config = Conf::new()
        .connection("noack", format!("redis: {{url: \"{}\"}}", url("noack")))
        .connection("ro", format!("redis: {{url: \"{}\"}}", url("ro")))
        .probe("{name: dup, interval: 20ms, deadline: 3s, inject: {redis: {connection: noack, stream: d}}, catch: {redis: {connection: noack, stream: d, group: g}}}")
        .probe("{name: denied, interval: 20ms, deadline: 3s, inject: {redis: {connection: ro, stream: x}}, catch: {redis: {connection: noack, stream: x}}}")
        .build();
    const N: u64 = 30;
    let mut rt = support::start_counted(&config, N).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let (dup, denied) = (support::probe(&rt, "dup"), support::probe(&rt, "denied"));
    let c = dup.counts();
    assert_eq!((c.sent, c.delivered, c.duplicate), (N, N, 0), "{c:?}");
    let d = denied.counts();
    assert_eq!((d.sent, d.failed(FailureKind::Auth)), (N, N), "{d:?}");

    let mut admin = server.client().await;
    let killed: i64 = ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("USER")
        .arg("noack")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 2, "the inject and catch clients: {killed}");
    wait_for("the pending entries again", Duration::from_secs(10), || {
        dup.counts().duplicate >= N
    })
    .await;
    let c = dup.counts();
    assert_eq!((c.delivered, c.duplicate, c.lost), (N, N, 0), "{c:?}");
    assert!(c.invariant_holds(), "{c:?}");
    // Redis' own count: every entry delivered to chirp twice, still pending.
    let pending: Vec<(String, String, i64, i64)> = ::redis::cmd("XPENDING")
        .arg("d")
        .arg("g")
        .arg("-")
        .arg("+")
        .arg(1000)
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(pending.len() as u64, N);
    assert!(
        pending.iter().all(|p| p.1 == "chirp-dup" && p.3 == 2),
        "{pending:?}"
    );
    rt.shutdown().await;
}

/// Redis: a catch without a group reads from the stream's end, so entries
/// already in the stream when chirp starts are never read (not even as
/// unrelated); `maxlen` keeps the stream trimmed while canaries flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_plain_reads_start_at_the_end_and_maxlen_trims() {
    // Approximate trimming drops whole nodes: 10 entries each here.
    let server = support::RedisServer::start_with("stream-node-max-entries 10");
    let mut c = server.client().await;
    for _ in 0..20 {
        support::targets::redis_add(&mut c, "s", None, br#"{"order":1}"#).await;
    }
    let config = Conf::new()
        .connection("r", format!("redis: {{url: \"{}\"}}", server.url()))
        .probe("{name: tail, interval: 10ms, deadline: 3s, inject: {redis: {connection: r, stream: s, maxlen: 5}}, catch: {redis: {connection: r, stream: s}}}")
        .build();
    const N: u64 = 100;
    let mut rt = support::start_counted(&config, N).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let k = support::probe(&rt, "tail").counts();
    assert_eq!((k.sent, k.delivered, k.unrelated), (N, N, 0), "{k:?}");
    assert!(k.invariant_holds(), "{k:?}");
    let len: u64 = ::redis::cmd("XLEN")
        .arg("s")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(len <= 5 + 10, "trimmed to about 5: {len}");
    rt.shutdown().await;
}

/// SQS (on moto, an emulator): redelivery and copies. The pipeline here
/// receives each canary from chirp's queue once and never deletes it, so
/// SQS's redrive policy (maxReceiveCount 1) moves it to the queue chirp
/// catches from, where chirp receives it with `ApproximateReceiveCount` 2:
/// a redelivery of a message chirp never recorded, which must count as
/// delivered, not as a duplicate. Copies of three canaries that chirp
/// recorded (what a delete that failed brings back) count as exactly three
/// duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_redeliveries_count_by_what_chirp_recorded() {
    use aws_sdk_sqs::types::{MessageSystemAttributeName as System, QueueAttributeName as Attr};
    let port = free_port();
    let t = Sqs::start(port).await;
    let dlq = t.create("redrive-out", &[]).await;
    let arn = t
        .client()
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(Attr::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .and_then(|a| a.get(&Attr::QueueArn).cloned())
        .expect("the queue's ARN");
    let policy = format!(r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"1"}}"#);
    let src = t
        .create("redrive-in", &[("RedrivePolicy", policy.as_str())])
        .await;
    let sqs = t.client().clone();
    // One pass of the pipeline: receive (and so count) every visible
    // message once, delete nothing; what was received before moves on.
    let pass = |sqs: aws_sdk_sqs::Client, src: String| async move {
        sqs.receive_message()
            .queue_url(&src)
            .max_number_of_messages(10)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .map(|o| o.messages().to_vec())
            .unwrap_or_default()
    };
    // The path itself: a message received once in `src` reaches the
    // catch queue, and its next receive is its second.
    support::targets::sqs_send(&sqs, &src, None, b"{\"probe\":\"path\"}").await;
    assert_eq!(pass(sqs.clone(), src.clone()).await.len(), 1);
    assert!(pass(sqs.clone(), src.clone()).await.is_empty());
    let moved = sqs
        .receive_message()
        .queue_url(&dlq)
        .wait_time_seconds(5)
        .message_system_attribute_names(System::ApproximateReceiveCount)
        .send()
        .await
        .unwrap();
    let m = &moved.messages()[0];
    assert_eq!(
        m.attributes()
            .and_then(|a| a.get(&System::ApproximateReceiveCount))
            .map(String::as_str),
        Some("2")
    );
    sqs.delete_message()
        .queue_url(&dlq)
        .receipt_handle(m.receipt_handle().unwrap())
        .send()
        .await
        .unwrap();

    let signer = Signer::new(KEY.as_bytes());
    let pipeline = {
        let (sqs, src, dlq) = (sqs.clone(), src.clone(), dlq.clone());
        tokio::spawn(async move {
            let mut seen = std::collections::HashMap::new();
            loop {
                for m in pass(sqs.clone(), src.clone()).await {
                    let token = m
                        .message_attributes()
                        .and_then(|a| a.get(chirp::canary::HEADER))
                        .and_then(|v| v.string_value())
                        .expect("a canary's token")
                        .to_owned();
                    let seq = signer.decode(&token).expect("a valid token").seq;
                    seen.insert(seq, (token, m.body().unwrap_or_default().to_owned()));
                    // Five canaries on, the copy of a recorded one.
                    if let Some(s) = seq.checked_sub(5).filter(|s| [3, 7, 11].contains(s)) {
                        let (token, body) = &seen[&s];
                        support::targets::sqs_send(&sqs, &dlq, Some(token), body.as_bytes()).await;
                    }
                }
            }
        })
    };
    let config = conf(&t, port)
        .probe(
            "{name: redriven, interval: 20ms, deadline: 5s, inject: {sqs: {connection: q, queue: redrive-in}}, catch: {sqs: {connection: q, queue: redrive-out}}}",
        )
        .build();
    const N: u64 = 60;
    let mut rt = support::start_counted(&config, N).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    let p = support::probe(&rt, "redriven");
    wait_for("the three copies", Duration::from_secs(10), || {
        p.counts().duplicate >= 3
    })
    .await;
    let c = p.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(
        (
            c.sent,
            c.delivered,
            c.lost,
            c.publish_failed,
            c.duplicate,
            c.late
        ),
        (N, N, 0, 0, 3, 0),
        "{c:?}"
    );
    rt.shutdown().await;
    pipeline.abort();
}
/// Pub/Sub: every acknowledged canary that Pub/Sub delivers again (here
/// after a seek back in time, what an operator does to replay a
/// subscription; a lost acknowledgement or an expired lease comes back the
/// same way) is caught a second time and counted as a duplicate, once each;
/// nothing is lost or late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_redelivered_canaries_count_as_duplicates_exactly() {
    use support::targets::{pubsub_admin, pubsub_create, pubsub_subscription};
    let port = free_port();
    let t = PubSub::start(port).await;
    let endpoint = t.emulator.endpoint();
    let before = std::time::SystemTime::now();
    // Acknowledged messages are kept, so a seek can deliver them again.
    pubsub_create(&endpoint, "again", "again", true).await;
    let config = conf(&t, port)
        .probe("{name: again, interval: 20ms, deadline: 3s, inject: {pubsub: {connection: g, topic: again}}, catch: {pubsub: {connection: g, subscription: again}}}")
        .build();
    const N: u64 = 40;
    let mut rt = support::start_counted(&config, N).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let probe = support::probe(&rt, "again");
    let c = probe.counts();
    assert_eq!((c.sent, c.delivered, c.duplicate), (N, N, 0), "{c:?}");

    let (_, subscriptions) = pubsub_admin(&endpoint).await;
    subscriptions
        .seek()
        .set_subscription(pubsub_subscription("again"))
        .set_time(google_cloud_wkt::Timestamp::try_from(before).unwrap())
        .send()
        .await
        .expect("seek");
    wait_for("the redeliveries", Duration::from_secs(20), || {
        probe.counts().duplicate >= N
    })
    .await;
    let c = probe.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(
        (c.sent, c.delivered, c.duplicate, c.lost, c.late),
        (N, N, N, 0, 0),
        "{c:?}"
    );
    assert_eq!((c.foreign, c.rejected, c.unrelated), (0, 0, 0), "{c:?}");
    rt.shutdown().await;
}

/// Pub/Sub in `run`: a catch whose subscription does not exist yet is down
/// and keeps checking (its canaries are lost, never silent), and catches
/// from the moment the subscription is made; publishing to a topic that
/// does not exist fails every slot as `rejected` (Pub/Sub's NOT_FOUND).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_a_missing_subscription_is_waited_for_and_a_missing_topic_is_rejected() {
    use chirp::outcome::FailureKind;
    let port = free_port();
    let t = PubSub::start(port).await;
    t.make("nowhere", "nowhere").await;
    // The topic exists, its subscription not yet.
    t.make("other", "late").await;
    let config = conf(&t, port)
        .probe("{name: waiting, interval: 50ms, deadline: 2s, inject: {pubsub: {connection: g, topic: late}}, catch: {pubsub: {connection: g, subscription: late}}}")
        .probe("{name: missing, interval: 50ms, deadline: 2s, inject: {pubsub: {connection: g, topic: no-such-topic}}, catch: {pubsub: {connection: g, subscription: nowhere}}}")
        .build();
    let mut rt = support::start(&config).await;
    let (waiting, missing) = (
        support::probe(&rt, "waiting"),
        support::probe(&rt, "missing"),
    );
    wait_for(
        "lost canaries and refused publishes",
        Duration::from_secs(20),
        || waiting.counts().lost >= 5 && missing.counts().publish_failed >= 10,
    )
    .await;
    let (w, m) = (waiting.counts(), missing.counts());
    assert!(!waiting.is_up(), "its subscription does not exist");
    assert_eq!((w.delivered, w.publish_failed), (0, 0), "{w:?}");
    assert_eq!(m.failed(FailureKind::Rejected), m.publish_failed, "{m:?}");
    assert_eq!(m.delivered, 0, "{m:?}");

    let sent_before = waiting.counts().sent;
    t.make("late", "late").await;
    let sent_after = waiting.counts().sent;
    wait_for("deliveries once it exists", Duration::from_secs(20), || {
        waiting.counts().delivered >= 10
    })
    .await;
    assert!(waiting.is_up());
    rt.stop_injecting();
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let w = waiting.counts();
    assert!(w.invariant_holds(), "{w:?}");
    // Exactly the canaries sent before the subscription existed are lost
    // (give or take one on its way while it was made): Pub/Sub keeps the
    // later ones for it, however long chirp takes to see it and subscribe.
    assert!(
        w.lost + 1 >= sent_before && w.lost <= sent_after + 1,
        "{sent_before}..{sent_after}: {w:?}"
    );
    assert_eq!((w.publish_failed, w.duplicate), (0, 0), "{w:?}");
    rt.shutdown().await;
}

/// Pub/Sub: while the emulator is down every slot fails at once as
/// `unavailable` (none waits out its publish timeout in the client's
/// retries, so none sits in flight), each client counts the outage once,
/// and delivery resumes within seconds once Pub/Sub is back with its
/// topic and subscription (the client's own reconnect backoff grows to a
/// minute; chirp's does not).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_an_outage_fails_every_slot_as_unavailable_and_recovery_is_quick() {
    use chirp::outcome::FailureKind;
    let port = free_port();
    let mut t = PubSub::start(port).await;
    let l = t.looped("outage").await;
    let config = conf(&t, port)
        .probe(format!(
            "{{name: outage, interval: 50ms, deadline: 2s, publish_timeout: 2s, inject: {}, catch: {}}}",
            l.inject, l.catch
        ))
        .build();
    let mut rt = support::start(&config).await;
    let addr = rt.addr.expect("a listener");
    let probe = support::probe(&rt, "outage");
    wait_for("deliveries", Duration::from_secs(20), || {
        probe.counts().delivered >= 20
    })
    .await;
    let before = probe.counts();
    assert_eq!((before.lost, before.publish_failed), (0, 0), "{before:?}");

    t.kill();
    // Past the deadline of every canary sent before the outage.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    wait_for("the outage to show", Duration::from_secs(10), || {
        probe.counts().publish_failed >= 20
    })
    .await;
    let mut most_in_flight = 0;
    for _ in 0..20 {
        most_in_flight = most_in_flight.max(probe.counts().in_flight);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        most_in_flight <= 2,
        "slots wait for the client instead of failing at once: {most_in_flight} in flight"
    );
    assert!(!probe.is_up());
    let during = probe.counts();
    assert_eq!(
        during.failed(FailureKind::Unavailable),
        during.publish_failed,
        "{during:?}"
    );
    let reconnects = |role: &'static str| async move {
        Scrape::get(addr).await.sum(
            "chirp_transport_reconnects_total",
            &[("connection", "g"), ("role", role)],
        )
    };
    assert_eq!(reconnects("inject").await, 1.0);
    assert_eq!(reconnects("catch").await, 1.0);

    t.restart().await;
    wait_for(
        "a delivery after the restart",
        Duration::from_secs(10),
        || probe.counts().delivered > during.delivered,
    )
    .await;
    wait_for("the probe to be up", Duration::from_secs(5), || {
        probe.is_up()
    })
    .await;
    rt.stop_injecting();
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let end = probe.counts();
    assert!(end.invariant_holds(), "{end:?}");
    assert_eq!(end.duplicate, 0, "{end:?}");
    rt.shutdown().await;
}
