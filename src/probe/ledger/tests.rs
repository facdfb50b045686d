use super::*;
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);

fn ledger() -> Ledger {
    Ledger::new(Instant::now(), 100 * MS, 1000 * MS, &[])
}

/// Sends canaries on schedule until `n` are sent.
async fn send_n(l: &mut Ledger, n: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    for _ in 0..n {
        let (_, at) = l.next_slot();
        tokio::time::sleep_until(at).await;
        seqs.push(l.send(Instant::now()));
        assert!(l.counts().invariant_holds());
    }
    seqs
}

#[tokio::test(start_paused = true)]
async fn latency_is_measured_from_the_intended_slot() {
    let mut l = ledger();
    let (seq, intended) = l.next_slot();
    // The producer stalls 30 ms past the slot before sending.
    advance(30 * MS).await;
    assert_eq!(l.send(Instant::now()), seq);
    advance(20 * MS).await;
    let got = l.caught(seq, Instant::now());
    assert_eq!(
        got,
        Arrival::Delivered {
            latency: 50 * MS,
            reordered: false
        }
    );
    assert_eq!(Instant::now() - intended, 50 * MS);
    let snap = l.snapshot(Instant::now());
    // HDR keeps 3 significant figures.
    assert!((snap.schedule_lag.cumulative.max - 0.030).abs() < 0.000_05);
    assert_eq!(snap.latency.cumulative.count, 1);
    assert!((snap.latency.cumulative.max - 0.050).abs() < 0.0001);
}

#[tokio::test(start_paused = true)]
async fn deadline_resolves_uncaught_canaries_as_lost_exactly_once() {
    let mut l = ledger();
    let seqs = send_n(&mut l, 5).await; // sent at 0, 100, ..., 400 ms
    l.caught(seqs[1], Instant::now());
    // At 999 ms nothing has expired yet; at 1000 ms the first one has.
    advance(599 * MS).await;
    assert_eq!(l.expire(Instant::now()), 0);
    advance(MS).await;
    assert_eq!(l.expire(Instant::now()), 1);
    assert_eq!(l.expire(Instant::now()), 0);
    advance(400 * MS).await;
    assert_eq!(l.expire(Instant::now()), 3, "seq 1 was delivered, not lost");
    let c = l.counts();
    assert_eq!((c.sent, c.delivered, c.lost, c.in_flight), (5, 1, 4, 0));
    assert!(c.invariant_holds());
    assert_eq!(l.next_expiry(), None);
}

#[tokio::test(start_paused = true)]
async fn catch_after_the_deadline_is_lost_and_late_even_before_the_sweep() {
    let mut l = ledger();
    let seqs = send_n(&mut l, 1).await;
    advance(1000 * MS).await;
    assert_eq!(l.caught(seqs[0], Instant::now()), Arrival::Late);
    let c = l.counts();
    assert_eq!((c.delivered, c.lost, c.late, c.in_flight), (0, 1, 1, 0));
    assert_eq!(l.expire(Instant::now()), 0);
    assert!(l.counts().invariant_holds());
}

#[tokio::test(start_paused = true)]
async fn duplicates_late_and_reordered_are_observations_not_outcomes() {
    let mut l = ledger();
    let s = send_n(&mut l, 4).await;
    assert!(matches!(
        l.caught(s[1], Instant::now()),
        Arrival::Delivered {
            reordered: false,
            ..
        }
    ));
    assert!(matches!(
        l.caught(s[0], Instant::now()),
        Arrival::Delivered {
            reordered: true,
            ..
        }
    ));
    assert_eq!(l.caught(s[0], Instant::now()), Arrival::Duplicate);
    assert_eq!(l.caught(s[1], Instant::now()), Arrival::Duplicate);
    assert!(matches!(
        l.caught(s[3], Instant::now()),
        Arrival::Delivered {
            reordered: false,
            ..
        }
    ));
    advance(2000 * MS).await;
    assert_eq!(l.expire(Instant::now()), 1);
    assert_eq!(l.caught(s[2], Instant::now()), Arrival::Late);
    assert_eq!(l.caught(s[3], Instant::now()), Arrival::Duplicate);
    assert_eq!(l.caught(99, Instant::now()), Arrival::NeverSent);
    let c = l.counts();
    assert_eq!(
        (
            c.sent,
            c.delivered,
            c.lost,
            c.duplicate,
            c.late,
            c.reordered,
            c.rejected
        ),
        (4, 3, 1, 3, 1, 1, 1)
    );
    assert!(c.invariant_holds());
}

#[tokio::test(start_paused = true)]
async fn publish_failure_resolves_only_in_flight_canaries() {
    let mut l = ledger();
    let s = send_n(&mut l, 3).await;
    assert!(l.publish_failed(s[0], FailureKind::Unavailable));
    assert!(
        !l.publish_failed(s[0], FailureKind::Timeout),
        "resolved once"
    );
    l.caught(s[1], Instant::now());
    assert!(
        !l.publish_failed(s[1], FailureKind::Other),
        "a delivered canary stays delivered"
    );
    // A canary whose publish failed but that arrives anyway is late, not delivered.
    assert_eq!(l.caught(s[0], Instant::now()), Arrival::Late);
    let c = l.counts();
    assert_eq!(
        (c.sent, c.delivered, c.publish_failed, c.in_flight, c.late),
        (3, 1, 1, 1, 1)
    );
    assert_eq!(c.failed(FailureKind::Unavailable), 1);
    assert_eq!(c.failed(FailureKind::Timeout), 0);
    assert!(c.invariant_holds());
}

#[tokio::test(start_paused = true)]
async fn memory_is_bounded_and_old_arrivals_are_late() {
    let mut l = Ledger::new(Instant::now(), MS, 10 * MS, &[]);
    for _ in 0..5000 {
        let (_, at) = l.next_slot();
        tokio::time::sleep_until(at).await;
        let seq = l.send(Instant::now());
        l.expire(Instant::now());
        if seq % 2 == 0 {
            l.caught(seq, Instant::now());
        }
    }
    assert!(l.states.len() <= MIN_RETAIN);
    // Sequence 0 was delivered long ago and has been forgotten: counted late.
    assert_eq!(l.caught(0, Instant::now()), Arrival::Late);
    advance(20 * MS).await;
    l.expire(Instant::now());
    let c = l.counts();
    assert_eq!(
        (c.sent, c.delivered, c.lost, c.in_flight),
        (5000, 2500, 2500, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn next_expiry_skips_resolved_canaries() {
    let mut l = ledger();
    assert_eq!(l.next_expiry(), None);
    let s = send_n(&mut l, 3).await; // intended at 0, 100, 200 ms
    let t0 = l.intended(0);
    assert_eq!(l.next_expiry(), Some(t0 + 1000 * MS));
    l.caught(s[0], Instant::now());
    l.caught(s[1], Instant::now());
    assert_eq!(
        l.next_expiry(),
        Some(t0 + 1200 * MS),
        "only seq 2 can still expire"
    );
    l.caught(s[2], Instant::now());
    assert_eq!(l.next_expiry(), None);
}
