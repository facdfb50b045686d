use super::*;
use crate::outcome::FailureKind;
use rand::{Rng, SeedableRng};

const LANE: LaneId = LaneId {
    id: 0,
    partition: None,
};

fn at(origin: Instant, secs: f64) -> Instant {
    origin + Duration::from_secs_f64(secs)
}

fn sent(h: &History, when: Instant) {
    h.observe(
        LANE,
        &[LedgerEvent::Sent {
            seq: 0,
            slot: when,
            lag: Duration::ZERO,
        }],
    );
}

fn resolved(h: &History, when: Instant, resolution: Resolution) {
    h.observe(
        LANE,
        &[LedgerEvent::Resolved {
            seq: 0,
            slot: when,
            resolution,
            at: when,
        }],
    );
}

fn delivered(h: &History, when: Instant, latency_ms: f64) {
    let latency = Duration::from_secs_f64(latency_ms / 1e3);
    resolved(h, when, Resolution::Delivered { latency });
}

/// The exact nearest-rank quantile.
fn exact(values: &mut [Duration], q: f64) -> Duration {
    values.sort();
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    values[rank - 1]
}

fn within_error(got: Duration, want: Duration) -> bool {
    (got.as_secs_f64() / want.as_secs_f64() - 1.0).abs() <= QUANTILE_ERROR
}

#[test]
fn counts_are_exact_per_window_and_per_minute() {
    let o = Instant::now();
    let h = History::starting_at(o);
    // Minute 0: 60 sent, 57 delivered, 2 lost, 1 refused.
    for s in 0..60 {
        sent(&h, at(o, s as f64 + 0.5));
    }
    for s in 0..57 {
        delivered(&h, at(o, s as f64 + 0.6), 10.0);
    }
    resolved(&h, at(o, 58.0), Resolution::Lost);
    resolved(&h, at(o, 59.0), Resolution::Lost);
    resolved(
        &h,
        at(o, 59.5),
        Resolution::PublishFailed(FailureKind::Unavailable),
    );
    // Just before 60 s the last minute holds all of minute 0.
    let early = h.view(at(o, 59.9));
    assert_eq!(early.last_minute.sent, 60);
    assert_eq!(early.last_minute.failed(), 3);
    // Minute 2: 10 sent, 10 delivered, in its first 10 seconds.
    for s in 0..10 {
        sent(&h, at(o, 120.0 + s as f64));
        delivered(&h, at(o, 120.5 + s as f64), 20.0);
    }

    let v = h.view(at(o, 125.0));
    let minute0 = Tally {
        sent: 60,
        delivered: 57,
        lost: 2,
        publish_failed: 1,
        dead_lettered: 0,
    };
    let minute2 = Tally {
        sent: 10,
        delivered: 10,
        lost: 0,
        publish_failed: 0,
        dead_lettered: 0,
    };
    assert_eq!(v.minutes.len(), MINUTES);
    assert_eq!(v.minutes[MINUTES - 3].tally, minute0);
    assert_eq!(v.minutes[MINUTES - 2].tally, Tally::default());
    assert_eq!(v.minutes[MINUTES - 1].tally, minute2);
    assert_eq!(v.minutes[MINUTES - 1].start, at(o, 120.0));
    // Before the probe started: empty minutes, an hour in all.
    assert_eq!(v.minutes[0].tally, Tally::default());
    assert_eq!(v.minutes[0].start, o.checked_sub(MINUTE * 57).unwrap_or(o));
    // The last minute at 125 s: slots 7..=12 (70–130 s) hold minute 2's canaries only.
    assert_eq!(v.last_minute, minute2);
    let mut both = minute0;
    both.sent += 10;
    both.delivered += 10;
    assert_eq!(v.last_15_minutes, both);
    assert_eq!(v.last_15_minutes.loss(), Some(3.0 / 70.0));
    assert_eq!(v.last_minute.loss(), Some(0.0));
}

#[test]
fn windows_forget_what_left_them() {
    let o = Instant::now();
    let h = History::starting_at(o);
    sent(&h, at(o, 5.0));
    resolved(&h, at(o, 5.0), Resolution::Lost);
    // 61 s later the canary has left the last minute, not the last 15.
    let v = h.view(at(o, 66.0));
    assert_eq!(v.last_minute, Tally::default());
    assert_eq!(v.last_15_minutes.lost, 1);
    // In minute 15 it has left the last 15 minutes too, not the hour.
    let v = h.view(at(o, 15.0 * 60.0 + 1.0));
    assert_eq!(v.last_15_minutes, Tally::default());
    assert_eq!(v.minutes[MINUTES - 16].tally.lost, 1);
    // In minute 60 it is gone.
    let v = h.view(at(o, 3600.0 + 1.0));
    assert!(v.minutes.iter().all(|m| m.tally == Tally::default()));
    // An event more than an hour late changes nothing and does not panic.
    sent(&h, at(o, 3700.0));
    resolved(&h, at(o, 61.0), Resolution::Lost);
    let v = h.view(at(o, 3701.0));
    assert_eq!(v.last_minute.sent, 1);
    assert_eq!(v.last_minute.lost, 0);
}

#[test]
fn p99_is_within_the_stated_error_and_never_above_the_max() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for case in 0..50 {
        let o = Instant::now();
        let h = History::starting_at(o);
        let mut all = Vec::new();
        // 15 minutes of traffic with a long tail, from 50 µs to seconds.
        let scale = 10f64.powf(rng.gen_range(-1.3..2.0));
        for minute in 0..15 {
            for k in 0..200 {
                let ms = scale * (1.0 + rng.gen::<f64>().powi(8) * 50.0);
                delivered(&h, at(o, minute as f64 * 60.0 + k as f64 * 0.25), ms);
                all.push(Duration::from_secs_f64(ms / 1e3));
            }
        }
        let v = h.view(at(o, 14.0 * 60.0 + 59.0));
        let got = v.p99_15_minutes.unwrap();
        let want = exact(&mut all.clone(), 0.99);
        assert!(
            within_error(got, want),
            "case {case}: p99 {got:?}, exact {want:?}"
        );
        assert!(got <= *all.iter().max().unwrap());
        // Each minute's p99 too.
        let last = &all[14 * 200..];
        let got = v.minutes[MINUTES - 1].p99.unwrap();
        let want = exact(&mut last.to_vec(), 0.99);
        assert!(within_error(got, want), "minute: {got:?} vs {want:?}");
    }
    // One value: exactly it (the max clamps the bucket's middle).
    let o = Instant::now();
    let h = History::starting_at(o);
    delivered(&h, at(o, 1.0), 12.0);
    let v = h.view(at(o, 2.0));
    let p = v.p99_15_minutes.unwrap();
    assert!(within_error(p, Duration::from_millis(12)), "{p:?}");
    assert!(p <= Duration::from_millis(12));
}

#[test]
fn older_minutes_keep_their_p99_for_the_sparkline() {
    let o = Instant::now();
    let h = History::starting_at(o);
    for k in 0..100 {
        delivered(&h, at(o, 30.0 + k as f64 * 0.1), 1.0 + k as f64);
    }
    let before = h.view(at(o, 40.0)).minutes[MINUTES - 1].p99.unwrap();
    assert!(
        within_error(before, Duration::from_millis(99)),
        "{before:?}"
    );
    // Minute 15 reuses minute 0's histogram; minute 0 keeps its p99.
    delivered(&h, at(o, 15.0 * 60.0 + 1.0), 5.0);
    let v = h.view(at(o, 15.0 * 60.0 + 2.0));
    assert_eq!(v.minutes[MINUTES - 16].p99, Some(before));
    assert_eq!(v.minutes[MINUTES - 16].tally.delivered, 100);
    // The 15-minute window no longer has it.
    assert!(within_error(
        v.p99_15_minutes.unwrap(),
        Duration::from_millis(5)
    ));
}

#[test]
fn latencies_up_to_the_longest_deadline_have_their_own_bucket() {
    let hour = Duration::from_secs(3600).as_micros() as u64;
    assert!(bucket_of(hour) < BUCKETS - 1);
    let mut last = 0;
    for us in [0, 1, 2, 3, 10, 100, 1_000, 999_999, hour] {
        let b = bucket_of(us);
        assert!(b >= last, "buckets grow with the value");
        last = b;
        // Each bucket's middle is within the error of every value in it.
        if us >= 2 {
            assert!((middle_us(b) / us as f64 - 1.0).abs() <= QUANTILE_ERROR);
        }
    }
}

#[test]
fn memory_is_fixed_and_small() {
    let size = History::size();
    // Inline arrays only: 60 minutes, 6 slots, 15 histograms of 256 u16:
    // 10,056 bytes on x86_64 (the README's figure).
    assert!(size <= 10 * 1024, "{size} bytes");
    assert!(size > HISTOGRAM_MINUTES * BUCKETS * 2);
}

/// A bucket past u16 goes on counting (in u32): the p99 is still its bucket's.
#[test]
fn a_minute_with_more_than_65535_canaries_at_one_latency_counts_them_all() {
    let origin = Instant::now();
    let h = History::starting_at(origin);
    let slot = origin;
    let events: Vec<LedgerEvent> = (0..70_000)
        .map(|seq| LedgerEvent::Resolved {
            seq,
            slot,
            resolution: Resolution::Delivered {
                latency: Duration::from_millis(if seq < 69_000 { 1 } else { 900 }),
            },
            at: at(origin, 1.0),
        })
        .collect();
    h.observe(LANE, &events);
    let view = h.view(at(origin, 2.0));
    assert_eq!(view.last_15_minutes.delivered, 70_000);
    // 1,000 of 70,000 are slow: more than 1 %, so the p99 is a slow one.
    let p99 = view.p99_15_minutes.unwrap();
    assert!(within_error(p99, Duration::from_millis(900)), "{p99:?}");
    let minute = view.minutes.last().unwrap();
    assert_eq!(minute.p99, Some(p99));
    // Only 500 slow ones: below 1 %, the p99 is the fast bucket's.
    let h = History::starting_at(origin);
    h.observe(LANE, &events[..69_500]);
    let p99 = h.view(at(origin, 2.0)).p99_15_minutes.unwrap();
    assert!(within_error(p99, Duration::from_millis(1)), "{p99:?}");
}
