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
        seqs.push(l.send(Instant::now(), &mut Vec::new()));
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
    assert_eq!(l.send(Instant::now(), &mut Vec::new()), seq);
    advance(20 * MS).await;
    let got = l.caught(seq, Instant::now(), &mut Vec::new());
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

/// Lag of tens of microseconds has buckets of its own; latency keeps the defaults.
#[tokio::test(start_paused = true)]
async fn schedule_lag_has_bounds_down_to_10_microseconds() {
    let mut l = ledger();
    let us = Duration::from_micros;
    for lag in [us(5), us(20), us(20), us(80), us(300)] {
        let (_, slot) = l.next_slot();
        l.send(slot + lag, &mut Vec::new());
    }
    let b = l.lag.buckets();
    let bounds: Vec<f64> = b.counts.iter().map(|(b, _)| *b).take(6).collect();
    assert_eq!(
        bounds,
        [0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5]
    );
    assert_eq!(b.at_or_below(0.000_01), 1);
    assert_eq!(b.at_or_below(0.000_025), 3);
    assert_eq!(b.at_or_below(0.000_1), 4);
    assert_eq!(b.at_or_below(0.000_25), 4);
    assert_eq!(b.count, 5);
    assert_eq!(l.e2e.buckets().counts[0].0, 0.000_25);
}

#[tokio::test(start_paused = true)]
async fn deadline_resolves_uncaught_canaries_as_lost_exactly_once() {
    let mut l = ledger();
    let seqs = send_n(&mut l, 5).await; // sent at 0, 100, ..., 400 ms
    l.caught(seqs[1], Instant::now(), &mut Vec::new());
    // At 999 ms nothing has expired yet; at 1000 ms the first one has.
    advance(599 * MS).await;
    assert_eq!(l.expire(Instant::now(), &mut Vec::new()), 0);
    advance(MS).await;
    assert_eq!(l.expire(Instant::now(), &mut Vec::new()), 1);
    assert_eq!(l.expire(Instant::now(), &mut Vec::new()), 0);
    advance(400 * MS).await;
    assert_eq!(
        l.expire(Instant::now(), &mut Vec::new()),
        3,
        "seq 1 was delivered, not lost"
    );
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
    assert_eq!(
        l.caught(seqs[0], Instant::now(), &mut Vec::new()),
        Arrival::Late
    );
    let c = l.counts();
    assert_eq!((c.delivered, c.lost, c.late, c.in_flight), (0, 1, 1, 0));
    assert_eq!(l.expire(Instant::now(), &mut Vec::new()), 0);
    assert!(l.counts().invariant_holds());
}

#[tokio::test(start_paused = true)]
async fn duplicates_late_and_reordered_are_observations_not_outcomes() {
    let mut l = ledger();
    let s = send_n(&mut l, 4).await;
    assert!(matches!(
        l.caught(s[1], Instant::now(), &mut Vec::new()),
        Arrival::Delivered {
            reordered: false,
            ..
        }
    ));
    assert!(matches!(
        l.caught(s[0], Instant::now(), &mut Vec::new()),
        Arrival::Delivered {
            reordered: true,
            ..
        }
    ));
    assert_eq!(
        l.caught(s[0], Instant::now(), &mut Vec::new()),
        Arrival::Duplicate
    );
    assert_eq!(
        l.caught(s[1], Instant::now(), &mut Vec::new()),
        Arrival::Duplicate
    );
    assert!(matches!(
        l.caught(s[3], Instant::now(), &mut Vec::new()),
        Arrival::Delivered {
            reordered: false,
            ..
        }
    ));
    advance(2000 * MS).await;
    assert_eq!(l.expire(Instant::now(), &mut Vec::new()), 1);
    assert_eq!(
        l.caught(s[2], Instant::now(), &mut Vec::new()),
        Arrival::Late
    );
    assert_eq!(
        l.caught(s[3], Instant::now(), &mut Vec::new()),
        Arrival::Duplicate
    );
    assert_eq!(
        l.caught(99, Instant::now(), &mut Vec::new()),
        Arrival::NeverSent
    );
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
    assert!(l.publish_failed(
        s[0],
        FailureKind::Unavailable,
        Instant::now(),
        &mut Vec::new()
    ));
    assert!(
        !l.publish_failed(s[0], FailureKind::Timeout, Instant::now(), &mut Vec::new()),
        "resolved once"
    );
    l.caught(s[1], Instant::now(), &mut Vec::new());
    assert!(
        !l.publish_failed(s[1], FailureKind::Other, Instant::now(), &mut Vec::new()),
        "a delivered canary stays delivered"
    );
    // A canary whose publish failed but that arrives anyway is late, not delivered.
    assert_eq!(
        l.caught(s[0], Instant::now(), &mut Vec::new()),
        Arrival::Late
    );
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
        let seq = l.send(Instant::now(), &mut Vec::new());
        l.expire(Instant::now(), &mut Vec::new());
        if seq.is_multiple_of(2) {
            l.caught(seq, Instant::now(), &mut Vec::new());
        }
    }
    assert!(l.states.len() <= MIN_RETAIN);
    // Sequence 0 was delivered long ago and has been forgotten: counted late.
    assert_eq!(l.caught(0, Instant::now(), &mut Vec::new()), Arrival::Late);
    advance(20 * MS).await;
    l.expire(Instant::now(), &mut Vec::new());
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
    l.caught(s[0], Instant::now(), &mut Vec::new());
    l.caught(s[1], Instant::now(), &mut Vec::new());
    assert_eq!(
        l.next_expiry(),
        Some(t0 + 1200 * MS),
        "only seq 2 can still expire"
    );
    l.caught(s[2], Instant::now(), &mut Vec::new());
    assert_eq!(l.next_expiry(), None);
}

#[tokio::test(start_paused = true)]
async fn every_resolution_is_reported_once_as_an_event() {
    let mut l = ledger();
    let mut ev = Vec::new();
    let s0 = l.send(Instant::now(), &mut ev);
    let slot0 = l.intended(s0);
    assert_eq!(
        ev,
        [LedgerEvent::Sent {
            seq: 0,
            slot: slot0,
            lag: Duration::ZERO
        }]
    );
    ev.clear();
    advance(100 * MS).await;
    let s1 = l.send(Instant::now(), &mut ev);
    advance(100 * MS).await;
    let s2 = l.send(Instant::now(), &mut ev);
    ev.clear();
    advance(5 * MS).await;
    l.caught(s1, Instant::now(), &mut ev);
    l.caught(s1, Instant::now(), &mut ev); // a duplicate resolves nothing
    assert_eq!(
        ev,
        [LedgerEvent::Resolved {
            seq: s1,
            slot: l.intended(s1),
            resolution: Resolution::Delivered { latency: 105 * MS },
            at: Instant::now(),
        }]
    );
    ev.clear();
    assert!(l.publish_failed(s2, FailureKind::Auth, Instant::now(), &mut ev));
    assert!(!l.publish_failed(s2, FailureKind::Auth, Instant::now(), &mut ev));
    advance(1000 * MS).await;
    assert_eq!(l.expire(Instant::now(), &mut ev), 1);
    let kinds: Vec<(u64, Resolution)> = ev
        .iter()
        .filter_map(|e| match e {
            LedgerEvent::Resolved {
                seq, resolution, ..
            } => Some((*seq, *resolution)),
            _ => None,
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (s2, Resolution::PublishFailed(FailureKind::Auth)),
            (s0, Resolution::Lost)
        ]
    );
    let c = l.counts();
    assert_eq!(
        (c.delivered, c.lost, c.publish_failed, c.in_flight),
        (1, 1, 1, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn the_last_catch_is_any_catch_of_a_sent_canary() {
    let start = Instant::now();
    let mut l = ledger();
    assert_eq!(l.last_caught(), start, "the ledger's start until the first");
    let seqs = send_n(&mut l, 3).await;
    l.caught(seqs[0], Instant::now(), &mut Vec::new());
    let first = Instant::now();
    assert_eq!(l.last_caught(), first);
    advance(50 * MS).await;
    // A duplicate is a catch too: the pipeline moves.
    l.caught(seqs[0], Instant::now(), &mut Vec::new());
    assert_eq!(l.last_caught(), first + 50 * MS);
    // A sequence never sent is not.
    advance(50 * MS).await;
    l.caught(99, Instant::now(), &mut Vec::new());
    assert_eq!(l.last_caught(), first + 50 * MS);
}

#[tokio::test(start_paused = true)]
async fn a_successor_takes_over_every_count_and_keeps_the_invariant() {
    let mut old = ledger();
    let seqs = send_n(&mut old, 6).await;
    for s in &seqs[..3] {
        old.caught(*s, Instant::now(), &mut Vec::new());
    }
    old.caught(seqs[0], Instant::now(), &mut Vec::new()); // a duplicate
    old.publish_failed(seqs[3], FailureKind::Auth, Instant::now(), &mut Vec::new());
    old.stray(Stray::Foreign);
    // Seq 4 and 5 expire: lost.
    advance(2000 * MS).await;
    old.expire(Instant::now(), &mut Vec::new());
    let was = old.counts();
    assert_eq!(
        (
            was.sent,
            was.delivered,
            was.lost,
            was.publish_failed,
            was.in_flight
        ),
        (6, 3, 2, 1, 0)
    );
    let mut new = ledger();
    let mine = send_n(&mut new, 2).await;
    new.caught(mine[0], Instant::now(), &mut Vec::new());
    new.inherit(&old);
    let c = new.counts();
    assert_eq!(
        (c.sent, c.delivered, c.lost, c.publish_failed, c.in_flight),
        (8, 4, 2, 1, 1)
    );
    assert_eq!(
        (c.duplicate, c.foreign, c.failed(FailureKind::Auth)),
        (1, 1, 1)
    );
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(new.e2e.count(), 4, "the latency histogram goes on too");
    // A predecessor cut short (a stop signal) with canaries in flight: they
    // leave `sent`, as at shutdown, so the invariant still holds.
    let mut cut = ledger();
    send_n(&mut cut, 3).await;
    let mut after = ledger();
    after.inherit(&cut);
    let c = after.counts();
    assert_eq!((c.sent, c.in_flight), (0, 0));
    assert!(c.invariant_holds());
}

/// A canary caught on the dead-letter queue before its deadline resolves
/// as dead-lettered (once); caught there after a delivery it is a
/// duplicate, after its deadline late; caught at the output after being
/// dead-lettered, a duplicate. The invariant holds throughout, and a DLQ
/// catch is no catch for silence.
#[tokio::test(start_paused = true)]
async fn dead_lettered_canaries_resolve_once_and_keep_the_invariant() {
    let mut l = ledger();
    let start = l.last_caught();
    let s = send_n(&mut l, 5).await;
    let mut ev = Vec::new();
    // s0: dead-lettered, then caught at the output and on the DLQ again.
    let got = l.dead_lettered(s[0], Instant::now(), &mut ev);
    assert!(matches!(got, Arrival::DeadLettered { .. }), "{got:?}");
    assert_eq!(l.caught(s[0], Instant::now(), &mut ev), Arrival::Duplicate);
    assert_eq!(
        l.dead_lettered(s[0], Instant::now(), &mut ev),
        Arrival::Duplicate
    );
    assert_eq!(
        l.last_caught(),
        start + 400 * MS,
        "the output catch of s0 counts"
    );
    // s1: delivered, then dead-lettered too (a pipeline that does both).
    assert!(matches!(
        l.caught(s[1], Instant::now(), &mut ev),
        Arrival::Delivered { .. }
    ));
    assert_eq!(
        l.dead_lettered(s[1], Instant::now(), &mut ev),
        Arrival::Duplicate
    );
    // s2: on the DLQ only: not a catch for silence.
    let before = l.last_caught();
    advance(10 * MS).await;
    assert!(matches!(
        l.dead_lettered(s[2], Instant::now(), &mut ev),
        Arrival::DeadLettered { .. }
    ));
    assert_eq!(l.last_caught(), before);
    // s3: past its deadline when the DLQ sees it: lost, and late.
    advance(1000 * MS).await;
    assert_eq!(
        l.dead_lettered(s[3], Instant::now(), &mut ev),
        Arrival::Late
    );
    // A sequence never sent.
    assert_eq!(
        l.dead_lettered(99, Instant::now(), &mut ev),
        Arrival::NeverSent
    );
    l.expire(Instant::now(), &mut ev);
    let c = l.counts();
    assert!(c.invariant_holds(), "{c:?}");
    assert_eq!(
        (c.sent, c.delivered, c.dead_lettered, c.lost, c.in_flight),
        (5, 1, 2, 2, 0),
        "{c:?}"
    );
    assert_eq!((c.duplicate, c.late, c.rejected), (3, 1, 1), "{c:?}");
    let dead: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            LedgerEvent::Resolved {
                seq,
                resolution: Resolution::DeadLettered,
                ..
            } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(dead, [s[0], s[2]]);
}
