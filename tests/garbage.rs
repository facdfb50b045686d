//! Garbage at the sink: random bytes, JSON without a token, forged tokens,
//! tokens of another run or probe, and unsigned or badly signed webhooks.
//! Each lands in its observation, none is delivered, nothing crashes.

mod common;

use chirp::canary::{Signer, Token, HEADER};
use chirp::runtime::{Options, Runtime};
use common::{config_with, wait_for, NatsServer, KEY};
use rand::{Rng, SeedableRng};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_counted_never_delivered() {
    let nats = NatsServer::start();
    let config = config_with(
        &nats.url(),
        "  - name: sink\n    interval: 1h\n    inject: {nats: {connection: main, subject: sink.out}}\n    catch: {nats: {connection: main, subject: sink.out}}\n  - name: hook\n    interval: 1h\n    inject: {nats: {connection: main, subject: hook.in}}\n    catch: {http: {}}\n",
    );
    let mut rt = Runtime::start(&config, Options::default())
        .await
        .expect("start");
    rt.ready().await;
    let client = async_nats::connect(nats.url()).await.expect("connect");
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

    // 5 random byte strings and 3 JSON documents: no token (unrelated).
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..5 {
        let bytes: Vec<u8> = (0..rng.gen_range(1..300)).map(|_| rng.gen()).collect();
        assert!(chirp::canary::scan(&bytes).is_none());
        client.publish("sink.out", bytes.into()).await.unwrap();
    }
    for doc in [r#"{"order":1}"#, r#"{"chirp":null}"#, "[]"] {
        client.publish("sink.out", doc.into()).await.unwrap();
    }
    // 2 forged tokens (bad MAC) and 1 malformed one in a header (rejected).
    let forged = Signer::new(b"not-the-key-at-all-000").encode(&Token {
        probe: "sink".into(),
        run_id: rt.run_id,
        lane: 0,
        seq: 0,
        sent_unix_us: 1,
    });
    client
        .publish("sink.out", format!(r#"{{"chirp":"{forged}"}}"#).into())
        .await
        .unwrap();
    let tampered = token("sink", rt.run_id, 0).replace(".0.", ".1.");
    client.publish("sink.out", tampered.into()).await.unwrap();
    let mut h = async_nats::HeaderMap::new();
    h.insert(HEADER, "chirp1.garbage");
    client
        .publish_with_headers("sink.out", h, "{}".into())
        .await
        .unwrap();
    // 4 tokens of another run and 1 of another probe of this run (foreign).
    for seq in 0..4 {
        client
            .publish("sink.out", token("sink", rt.run_id ^ 1, seq).into())
            .await
            .unwrap();
    }
    client
        .publish("sink.out", token("hook", rt.run_id, 0).into())
        .await
        .unwrap();
    client.flush().await.unwrap();

    let sink = rt.probes[0].clone();
    wait_for(
        "all garbage to be classified",
        Duration::from_secs(10),
        || {
            let c = sink.counts();
            c.unrelated + c.rejected + c.foreign == 16 && c.delivered == 1
        },
    )
    .await;
    let c = sink.counts();
    assert_eq!((c.unrelated, c.rejected, c.foreign), (8, 3, 5), "{c:?}");
    assert_eq!(
        (c.delivered, c.duplicate, c.late),
        (1, 0, 0),
        "only the real canary 0: {c:?}"
    );
    assert!(c.invariant_holds());

    // Webhooks: unsigned, badly signed, signed without token, signed with a forged token.
    let url = format!("http://{}/hooks/hook", rt.addr);
    let http = reqwest::Client::new();
    let post = |body: String, sig: Option<String>| {
        let mut r = http.post(&url).body(body);
        if let Some(s) = sig {
            r = r.header("X-Chirp-Signature", s);
        }
        r.send()
    };
    assert_eq!(post("{}".into(), None).await.unwrap().status(), 401);
    assert_eq!(
        post("{}".into(), Some("sha256=00".into()))
            .await
            .unwrap()
            .status(),
        401
    );
    let body = r#"{"hello":"world"}"#.to_owned();
    assert_eq!(
        post(body.clone(), Some(signer.signature(body.as_bytes())))
            .await
            .unwrap()
            .status(),
        200
    );
    let body = format!(r#"{{"chirp":"{forged}"}}"#);
    assert_eq!(
        post(body.clone(), Some(signer.signature(body.as_bytes())))
            .await
            .unwrap()
            .status(),
        200
    );
    let body = r#"\x00\xff garbage"#.to_owned();
    assert_eq!(
        post(body.clone(), Some("sha256=".to_owned() + &"ab".repeat(32)))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.post(format!("http://{}/hooks/nope", rt.addr))
            .body("x")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let hook = rt.probes[1].counts();
    assert_eq!(
        (hook.rejected, hook.unrelated, hook.foreign, hook.delivered),
        (4, 1, 0, 0),
        "{hook:?}"
    );
    assert!(hook.invariant_holds());
    // The hook probe's first slot is half an interval (30 min) in: it has sent
    // nothing, so everything it counted is garbage, and nothing is in flight.
    assert_eq!(hook.sent, 0);
    assert_eq!(rt.drain(Duration::from_millis(10)).await, 0);
    rt.shutdown().await;
}
