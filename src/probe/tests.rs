use super::*;
use crate::transport::{Confirm, PublishError};
use std::collections::HashMap;
use tokio::sync::watch;

/// An injector whose partitions the test decides, recording what it sends.
struct FakeInject {
    lanes: watch::Sender<Vec<i32>>,
    sent: Mutex<Vec<(Option<i32>, String)>>,
}

#[async_trait::async_trait]
impl Inject for FakeInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        self.sent.lock().unwrap().push((msg.partition, msg.token));
        Ok(Box::pin(async { Ok(Ack::Confirmed) }))
    }
    fn is_up(&self) -> bool {
        true
    }
    fn lanes(&self) -> Option<watch::Receiver<Vec<i32>>> {
        Some(self.lanes.subscribe())
    }
}

struct Listening;

#[async_trait::async_trait]
impl CatchHandle for Listening {
    fn is_up(&self) -> bool {
        true
    }
    async fn ready(&self, _stop: &CancellationToken) -> bool {
        true
    }
}

fn config() -> ProbeConfig {
    let text = "signing_key: a-long-enough-signing-key\nprobes:\n  - {name: p, interval: 100ms, deadline: 1s, inject: {http: {url: /x}}, catch: {http: {}}}\n";
    crate::config::load_str(text, &HashMap::<String, String>::new())
        .unwrap()
        .probes
        .remove(0)
}

/// Per-partition mode with no partition known at start: the partitions
/// that appear while the loop waits for them get lanes and canaries.
#[tokio::test(start_paused = true)]
async fn partitions_found_while_waiting_for_them_get_lanes() {
    let inject = Arc::new(FakeInject {
        lanes: watch::Sender::new(Vec::new()),
        sent: Mutex::new(Vec::new()),
    });
    let probe = Arc::new(Probe::new(
        config(),
        7,
        Signer::new(b"a-long-enough-signing-key"),
        Some(&[]),
        Vec::new(),
        TaskTracker::new(),
    ));
    probe.attach(
        Arc::clone(&inject) as Arc<dyn Inject>,
        Arc::new(Listening),
        None,
    );
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    let run = tokio::spawn(Arc::clone(&probe).inject_loop(
        stop.clone(),
        abort,
        Duration::ZERO,
        Some(3),
        None,
    ));
    probe.ready().await;
    // The loop is now waiting for partitions.
    tokio::time::sleep(Duration::from_millis(50)).await;
    inject.lanes.send_replace(vec![0, 1]);
    let ended = tokio::time::timeout(Duration::from_secs(60), run).await;
    assert!(
        ended.is_ok(),
        "the loop never sent to the partitions that appeared"
    );
    let lanes: Vec<(u32, u64)> = probe
        .lanes()
        .iter()
        .map(|l| (l.id.id, l.ledger().counts().sent))
        .collect();
    assert_eq!(lanes, [(0, 3), (1, 3)]);
    let sent = inject.sent.lock().unwrap();
    assert_eq!(sent.iter().filter(|(p, _)| *p == Some(1)).count(), 3);
}

/// An injector that hands every canary back to its probe 10 ms later, except
/// two of every five (40 % loss).
struct LossyLoop {
    probe: OnceLock<std::sync::Weak<Probe>>,
    sent: Mutex<u64>,
}

#[async_trait::async_trait]
impl Inject for LossyLoop {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        let n = {
            let mut sent = self.sent.lock().unwrap();
            *sent += 1;
            *sent - 1
        };
        let probe = self.probe.get().and_then(|p| p.upgrade());
        if let (Some(probe), true) = (probe, n % 5 >= 2) {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                probe.on_message(Caught {
                    token: Some(&msg.token),
                    traceparent: None,
                    body: &msg.body,
                    at: Instant::now(),
                });
            });
        }
        Ok(Box::pin(async { Ok(Ack::Confirmed) }))
    }
    fn is_up(&self) -> bool {
        true
    }
    fn lanes(&self) -> Option<watch::Receiver<Vec<i32>>> {
        None
    }
}

/// Three minutes at 40 % loss on a 1 s, 99.9 %, 30-day probe: 72 canaries
/// failed of the period's allowance of 0.1 % × 2,592,000 = 2,592, so 97.2 %
/// of the budget is left (the share of bad canaries, 40 %, over the allowed
/// 0.1 % would say −39,900 %).
#[tokio::test(start_paused = true)]
async fn budget_remaining_is_the_share_of_the_canary_allowance_not_spent() {
    let text = "signing_key: a-long-enough-signing-key\nprobes:\n  - name: p\n    interval: 1s\n    deadline: 5s\n    inject: {http: {url: /x}}\n    catch: {http: {}}\n    slo: {delivery: {objective: 99.9%}, period: 30d}\n";
    let config = crate::config::load_str(text, &HashMap::<String, String>::new())
        .unwrap()
        .probes
        .remove(0);
    let slo = crate::slo::SloObserver::new(&config.slo, config.interval).unwrap();
    let inject = Arc::new(LossyLoop {
        probe: OnceLock::new(),
        sent: Mutex::new(0),
    });
    let probe = Arc::new(Probe::new(
        config,
        7,
        Signer::new(b"a-long-enough-signing-key"),
        None,
        vec![Arc::clone(&slo) as Arc<dyn Observer>],
        TaskTracker::new(),
    ));
    inject.probe.set(Arc::downgrade(&probe)).unwrap();
    probe.attach(
        Arc::clone(&inject) as Arc<dyn Inject>,
        Arc::new(Listening),
        None,
    );
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    let run = tokio::spawn(Arc::clone(&probe).inject_loop(
        stop,
        abort,
        Duration::ZERO,
        None,
        Some(Duration::from_secs(180)),
    ));
    run.await.unwrap();
    // Every canary's deadline has passed.
    tokio::time::sleep(Duration::from_secs(6)).await;
    probe.expire(Instant::now());
    let counts = probe.counts();
    assert_eq!(
        (counts.sent, counts.delivered, counts.lost, counts.in_flight),
        (180, 108, 72, 0)
    );
    let state = slo.state(Instant::now(), probe.lanes().len());
    let delivery = &state.slis[0];
    assert_eq!(delivery.sli, "delivery");
    assert_eq!(delivery.error_budget_spent, 72);
    assert!(
        (delivery.error_budget_canaries - 2592.0).abs() < 1e-6,
        "{}",
        delivery.error_budget_canaries
    );
    let expected = 1.0 - 72.0 / 2592.0;
    assert!(
        (delivery.error_budget_remaining - expected).abs() < 1e-12,
        "{} != {expected}",
        delivery.error_budget_remaining
    );
    // The ratio-based burn rate over the last 5 minutes stays what it was:
    // 40 % bad over an allowed 0.1 %.
    let burn_5m = delivery
        .burn_rates
        .iter()
        .find(|(w, _)| *w == "5m")
        .unwrap()
        .1;
    assert!((burn_5m - 400.0).abs() < 1e-6, "{burn_5m}");
}
