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

fn schedule(limit: Option<u64>, duration: Option<Duration>) -> Schedule {
    Schedule {
        phase: Duration::ZERO,
        limit,
        duration,
        timer: Timer::Tokio,
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
    ));
    probe.attach(
        Arc::clone(&inject) as Arc<dyn Inject>,
        Arc::new(Listening),
        None,
    );
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    let run =
        tokio::spawn(Arc::clone(&probe).inject_loop(stop.clone(), abort, schedule(Some(3), None)));
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
        schedule(None, Some(Duration::from_secs(180))),
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

/// An injector that hands every canary straight back to its probe,
/// recording when each sequence was sent; the sends it is told to stall
/// (by their order) take that long.
struct Stalling {
    probe: OnceLock<std::sync::Weak<Probe>>,
    signer: Signer,
    stalls: HashMap<u64, Duration>,
    sent: Mutex<Vec<(u64, Instant)>>,
}

#[async_trait::async_trait]
impl Inject for Stalling {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        let seq = self.signer.decode(&msg.token).unwrap().seq;
        let n = {
            let mut sent = self.sent.lock().unwrap();
            sent.push((seq, Instant::now()));
            sent.len() as u64 - 1
        };
        if let Some(probe) = self.probe.get().and_then(|p| p.upgrade()) {
            probe.on_message(Caught {
                token: Some(&msg.token),
                traceparent: None,
                body: &msg.body,
                at: Instant::now(),
            });
        }
        if let Some(stall) = self.stalls.get(&n) {
            tokio::time::sleep(*stall).await;
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

/// Runs a 100 ms / 1 s probe over `Stalling` with `stalls` until `limit` canaries.
async fn run_stalling(stalls: &[(u64, Duration)], limit: u64) -> (Arc<Probe>, Vec<(u64, Instant)>) {
    let signer = Signer::new(b"a-long-enough-signing-key");
    let inject = Arc::new(Stalling {
        probe: OnceLock::new(),
        signer: signer.clone(),
        stalls: stalls.iter().copied().collect(),
        sent: Mutex::new(Vec::new()),
    });
    let probe = Arc::new(Probe::new(config(), 7, signer, None, Vec::new()));
    inject.probe.set(Arc::downgrade(&probe)).unwrap();
    probe.attach(
        Arc::clone(&inject) as Arc<dyn Inject>,
        Arc::new(Listening),
        None,
    );
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    Arc::clone(&probe)
        .inject_loop(stop, abort, schedule(Some(limit), None))
        .await;
    let sent = inject.sent.lock().unwrap().clone();
    (probe, sent)
}

/// Fixed rate, no drift: the k-th canary goes out at start + k × interval
/// (tokio's paused clock keeps whole milliseconds), however long each send
/// takes, over 3,000 canaries (five minutes).
#[tokio::test(start_paused = true)]
async fn slots_keep_a_fixed_rate_without_drift() {
    // Every send takes 30 ms of the 100 ms interval.
    let stalls: Vec<(u64, Duration)> = (0..3000).map(|n| (n, Duration::from_millis(30))).collect();
    let (probe, sent) = run_stalling(&stalls, 3000).await;
    assert_eq!(sent.len(), 3000);
    let start = probe.lanes()[0].ledger().intended(0);
    for (k, (seq, at)) in sent.iter().enumerate() {
        assert_eq!(*seq, k as u64);
        let intended = start + Duration::from_millis(100) * k as u32;
        let late = at.saturating_duration_since(intended);
        assert!(*at >= intended, "canary {k} went out before its slot");
        assert!(
            late < Duration::from_millis(1),
            "canary {k} went out {late:?} late"
        );
    }
    let counts = probe.counts();
    assert_eq!((counts.sent, counts.delivered), (3000, 3000));
}

/// After a stall, as DESIGN says: the slots missed go out at once, each
/// measured from its own slot (the stall shows as schedule lag and
/// latency, never as silence or a shifted schedule); a slot behind by more
/// than the deadline is not sent and counts as `publish_failed{timeout}`;
/// then the schedule goes on at its old rate and phase.
#[tokio::test(start_paused = true)]
async fn after_a_stall_missed_slots_go_out_at_once_measured_from_their_slots() {
    let ms = Duration::from_millis;
    // The 11th send (seq 10) stalls 350 ms; the 21st (seq 20) 1,250 ms.
    let (probe, sent) = run_stalling(&[(10, ms(350)), (20, ms(1250))], 40).await;
    let lane = &probe.lanes()[0];
    let start = lane.ledger().intended(0);
    let slot = |seq: u64| start + ms(100) * seq as u32;
    let at = |seq: u64| sent.iter().find(|(s, _)| *s == seq).map(|(_, t)| *t);
    // Seqs 11–13 were due during the first stall: sent back to back when it ended.
    let resumed = slot(10) + ms(350);
    for seq in 11..=13 {
        let t = at(seq).unwrap();
        assert!(
            t >= resumed && t - resumed < ms(1),
            "seq {seq} at {:?}",
            t - start
        );
    }
    // Seq 14 is on its own slot again: the phase did not move.
    assert!(at(14).unwrap() - slot(14) < ms(1));
    // The second stall ends at 3.25 s: slots 21 (2.1 s) and 22 (2.2 s) are
    // more than the 1 s deadline behind and are not sent; 23–32 are.
    assert_eq!(at(21), None);
    assert_eq!(at(22), None);
    let resumed = slot(20) + ms(1250);
    for seq in 23..=32 {
        let t = at(seq).unwrap();
        assert!(t >= resumed && t - resumed < ms(1), "seq {seq}");
    }
    assert!(at(33).unwrap() - slot(33) < ms(1));
    let counts = probe.counts();
    assert_eq!(counts.sent, 40);
    assert_eq!(counts.publish_failed, 2);
    assert_eq!(counts.failed_by_kind[FailureKind::Timeout as usize], 2);
    assert_eq!(counts.delivered, 38);
    // The stall is in the numbers: seq 23 was sent (and caught) 950 ms after its slot.
    let snap = probe.snapshot(Instant::now());
    let worst = |s: &crate::stats::Summary| Duration::from_secs_f64(s.max);
    assert!(
        worst(&snap.schedule_lag.cumulative) >= ms(949),
        "{:?}",
        snap.schedule_lag.cumulative
    );
    assert!(
        worst(&snap.latency.cumulative) >= ms(949),
        "{:?}",
        snap.latency.cumulative
    );
}
