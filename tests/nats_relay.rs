//! Ground truth through a fault-injecting relay: chirp publishes on
//! `relay.in`, the relay republishes on `relay.out` after dropping,
//! duplicating, swapping and delaying a known set of canaries, and chirp's
//! counts must match the plan exactly.

mod common;

use chirp::canary::{Signer, HEADER};
use common::{config_with, NatsServer, KEY};
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

const COUNT: u64 = 200;
const INTERVAL_MS: u64 = 50;
/// Every fifth canary is held this long by the relay, the others `FAST`.
const SLOW: Duration = Duration::from_millis(35);
const FAST: Duration = Duration::from_millis(5);
/// How far above an injected delay a measured percentile may sit: scheduling,
/// loopback and the two NATS hops on a busy 2-core machine.
const TOLERANCE: Duration = Duration::from_millis(25);

struct Plan {
    drop: HashSet<u64>,
    duplicate: HashSet<u64>,
    /// first → second: the relay holds `first` and forwards it right after `second`.
    swap: HashMap<u64, u64>,
}

fn delay_of(seq: u64) -> Duration {
    if seq % 5 == 4 {
        SLOW
    } else {
        FAST
    }
}

async fn relay(client: async_nats::Client, mut sub: async_nats::Subscriber, plan: Plan) {
    let signer = Signer::new(KEY.as_bytes());
    let mut held: HashMap<u64, async_nats::Message> = HashMap::new();
    let seconds: HashMap<u64, u64> = plan.swap.iter().map(|(a, b)| (*b, *a)).collect();
    while let Some(msg) = sub.next().await {
        let token = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER))
            .map(|v| v.to_string());
        let seq = signer
            .decode(&token.expect("canary without token header"))
            .expect("valid token")
            .seq;
        if plan.drop.contains(&seq) {
            continue;
        }
        if plan.swap.contains_key(&seq) {
            held.insert(seq, msg);
            continue;
        }
        let mut out = vec![msg.clone()];
        if plan.duplicate.contains(&seq) {
            out.push(msg);
        }
        if let Some(first) = seconds.get(&seq) {
            out.push(
                held.remove(first)
                    .expect("the first of a swapped pair arrives first"),
            );
        }
        let c = client.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay_of(seq)).await;
            for m in out {
                c.publish_with_headers("relay.out", m.headers.unwrap_or_default(), m.payload)
                    .await
                    .expect("relay publish");
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_counts_and_percentiles_through_a_faulty_relay() {
    let nats = NatsServer::start();
    let config = config_with(
        &nats.url(),
        &format!(
            "  - name: relayed\n    interval: {INTERVAL_MS}ms\n    deadline: 3s\n    inject: {{nats: {{connection: main, subject: relay.in}}}}\n    catch: {{nats: {{connection: main, subject: relay.out}}}}\n"
        ),
    );
    let plan = Plan {
        drop: [5, 17, 33, 101].into(),
        duplicate: [8, 40, 77].into(),
        swap: [(20, 21), (60, 61), (150, 151)].into(),
    };
    let relay_client = async_nats::connect(nats.url())
        .await
        .expect("relay connect");
    // The relay's subscription reaches the server before chirp sends anything.
    let sub = relay_client
        .subscribe("relay.in")
        .await
        .expect("relay subscribe");
    relay_client.flush().await.expect("relay flush");
    let relay_task = tokio::spawn(relay(relay_client, sub, plan));

    let mut rt = common::start_counted(&config, COUNT).await;
    rt.injection_done().await;
    let left = rt.drain(Duration::from_secs(5)).await;
    assert_eq!(left, 0, "every canary resolves within its deadline");
    let probe = &rt.probes[0];
    let snap = probe.snapshot(tokio::time::Instant::now());
    let c = snap.counts;
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(c.sent, COUNT);
    assert_eq!(c.lost, 4, "{c:?}");
    assert_eq!(c.delivered, COUNT - 4, "{c:?}");
    assert_eq!(c.publish_failed, 0, "{c:?}");
    assert_eq!(c.duplicate, 3, "{c:?}");
    assert_eq!(c.reordered, 3, "{c:?}");
    assert_eq!(c.late, 0, "{c:?}");
    assert_eq!((c.foreign, c.rejected, c.unrelated), (0, 0, 0));

    // 80% of canaries are held FAST, 20% SLOW: p50 sits just above FAST, p90 just above SLOW.
    let l = snap.latency.cumulative;
    assert_eq!(l.count, COUNT - 4);
    let ms = |s: f64| Duration::from_secs_f64(s);
    assert!(
        ms(l.p50) >= FAST && ms(l.p50) <= FAST + TOLERANCE,
        "p50 {:?}",
        ms(l.p50)
    );
    assert!(
        ms(l.p90) >= SLOW && ms(l.p90) <= SLOW + TOLERANCE,
        "p90 {:?}",
        ms(l.p90)
    );
    assert!(ms(l.min) >= FAST, "min {:?}", ms(l.min));
    rt.shutdown().await;
    relay_task.abort();
}
