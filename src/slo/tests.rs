use super::*;
use crate::config::{DeliveryObjective, LatencyObjective};
use tokio::time::advance;

const MS: Duration = Duration::from_millis(1);
const MIN: Duration = Duration::from_secs(60);

fn slo() -> Slo {
    Slo {
        latency: Some(LatencyObjective {
            threshold: 100 * MS,
            objective: 90.0,
        }),
        delivery: Some(DeliveryObjective { objective: 99.0 }),
        slice: MIN,
        period: Duration::from_secs(30 * 86_400),
    }
}

/// A tracker of a probe sending every 6 s (432,000 canaries in 30 days),
/// whose clock starts exactly on a minute boundary.
fn tracker() -> SloTracker {
    let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 3600 * 3600);
    SloTracker::new(&slo(), 6 * 1000 * MS, Instant::now(), wall).unwrap()
}

#[tokio::test(start_paused = true)]
async fn three_bad_slices_out_of_sixty_is_95_percent() {
    let mut t = tracker();
    for minute in 0..60 {
        // 10 canaries a minute; in 3 of the minutes one is lost (delivery 90% < 99%).
        for i in 0..10 {
            let outcome = if [7, 21, 42].contains(&minute) && i == 0 {
                Resolved::Failed
            } else {
                Resolved::Delivered(10 * MS)
            };
            t.record(Instant::now(), outcome);
            advance(6 * 1000 * MS).await;
        }
    }
    let s = t.state(Instant::now(), 1);
    assert_eq!(
        (
            s.totals.slices_good,
            s.totals.slices_bad,
            s.totals.slices_no_data
        ),
        (57, 3, 0)
    );
    assert!(
        (s.slice_compliance - 0.95).abs() < 1e-12,
        "{}",
        s.slice_compliance
    );
    assert_eq!(s.totals.events, 600);
    assert_eq!(s.totals.delivery_good, 597);
    let delivery = &s.slis[1];
    assert_eq!(delivery.sli, "delivery");
    assert!((delivery.compliance - 0.995).abs() < 1e-12);
    // 3 canaries failed of the period's allowance of 1% of 432,000.
    assert_eq!(delivery.error_budget_spent, 3);
    assert!((delivery.error_budget_canaries - 4320.0).abs() < 1e-6);
    assert!(
        (delivery.error_budget_remaining - (1.0 - 3.0 / 4320.0)).abs() < 1e-9,
        "{}",
        delivery.error_budget_remaining
    );
    // The 1h window now covers minutes 1..=60 (minute 0 has slid out): 3 bad
    // of 590, over an allowed 1%.
    let burn = |w: &str| delivery.burn_rates.iter().find(|(n, _)| *n == w).unwrap().1;
    assert!(
        (burn("1h") - (3.0 / 590.0) / 0.01).abs() < 1e-9,
        "{}",
        burn("1h")
    );
    // The last 5 minutes (55..59) were clean.
    assert_eq!(burn("5m"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn slices_without_data_are_neither_good_nor_bad() {
    let mut t = tracker();
    t.record(Instant::now(), Resolved::Delivered(10 * MS));
    advance(5 * MIN).await;
    t.record(Instant::now(), Resolved::Delivered(500 * MS)); // latency-bad: slice bad
    advance(MIN).await;
    let s = t.state(Instant::now(), 1);
    assert_eq!(
        (
            s.totals.slices_good,
            s.totals.slices_bad,
            s.totals.slices_no_data
        ),
        (1, 1, 4)
    );
    assert_eq!(s.slice_compliance, 0.5);
    let recent: Vec<(u64, u64, bool)> = s
        .recent_slices
        .iter()
        .map(|r| (r.events, r.latency_good, r.good))
        .collect();
    assert_eq!(recent, [(1, 1, true), (1, 0, false)]);
    assert_eq!(
        s.recent_slices[1].start_unix - s.recent_slices[0].start_unix,
        300
    );
    assert_eq!((s.totals.latency_good, s.totals.delivery_good), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn burn_rates_forget_old_minutes() {
    let mut t = tracker();
    for _ in 0..10 {
        t.record(Instant::now(), Resolved::Failed);
    }
    let s = t.state(Instant::now(), 1);
    // Everything bad: burn rate = 1 / (1 - 0.99) = 100 on every window.
    assert!(s.slis[1]
        .burn_rates
        .iter()
        .all(|(_, b)| (b - 100.0).abs() < 1e-9));
    advance(10 * MIN).await;
    t.record(Instant::now(), Resolved::Delivered(MS));
    let s = t.state(Instant::now(), 1);
    let burn = |w: &str| {
        s.slis[1]
            .burn_rates
            .iter()
            .find(|(n, _)| *n == w)
            .unwrap()
            .1
    };
    assert_eq!(burn("5m"), 0.0, "the failures are 10 minutes old");
    assert!((burn("30m") - (10.0 / 11.0) * 100.0).abs() < 1e-9);
    assert_eq!(s.slis[1].error_budget_spent, 10);
}

#[tokio::test(start_paused = true)]
async fn an_overspent_budget_is_negative_and_lanes_multiply_the_allowance() {
    let mut t = tracker();
    for _ in 0..4321 {
        t.record(Instant::now(), Resolved::Failed);
    }
    let one = t.state(Instant::now(), 1);
    assert!(one.slis[1].error_budget_remaining < 0.0, "overspent");
    // Three partitions send three canaries a slot: three times the allowance.
    let three = t.state(Instant::now(), 3);
    assert!((three.slis[1].error_budget_canaries - 12_960.0).abs() < 1e-6);
    assert!((three.slis[1].error_budget_remaining - (1.0 - 4321.0 / 12_960.0)).abs() < 1e-9);
}

#[tokio::test(start_paused = true)]
async fn memory_for_a_30_day_period_is_small() {
    let t = tracker();
    let bytes = std::mem::size_of::<SloTracker>()
        + t.minutes.len() * std::mem::size_of::<Minute>()
        + t.hours.len() * std::mem::size_of::<Hour>()
        + t.recent.capacity() * std::mem::size_of::<SliceResult>();
    assert!(bytes < 24 * 1024, "{bytes} bytes");
    assert_eq!(t.hours.len(), 720);
}

#[tokio::test(start_paused = true)]
async fn slices_follow_a_step_of_the_wall_clock() {
    let mut t = tracker();
    let wall0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 3600 * 3600);
    t.record(Instant::now(), Resolved::Delivered(MS));
    advance(30 * 1000 * MS).await;
    // NTP steps the clock one hour forward, half a minute in.
    t.resync(Instant::now(), wall0 + Duration::from_secs(3600 + 30));
    t.record(Instant::now(), Resolved::Delivered(MS));
    advance(MIN).await;
    let s = t.state(Instant::now(), 1);
    // The first slice closed, the hour in between had no data, and the slice
    // now being filled starts on the stepped clock's minute.
    assert_eq!(s.totals.slices_good, 2, "{:?}", s.totals);
    assert_eq!(s.totals.slices_no_data, 59, "{:?}", s.totals);
    let last = s.recent_slices.last().unwrap();
    assert_eq!(
        last.start_unix,
        wall0.duration_since(UNIX_EPOCH).unwrap().as_secs() + 3600
    );
}

#[tokio::test(start_paused = true)]
async fn a_period_of_90_minutes_counts_90_minutes() {
    let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000 / 3600 * 3600);
    let mut slo = slo();
    slo.period = Duration::from_secs(90 * 60);
    let mut t = SloTracker::new(&slo, 6 * 1000 * MS, Instant::now(), wall).unwrap();
    // One failure a minute for 100 minutes: the last 90 (this minute and
    // the 89 before it) are in the period; an hour's bucket would hold 40.
    for minute in 0..100 {
        if minute > 0 {
            advance(MIN).await;
        }
        t.record(Instant::now(), Resolved::Failed);
    }
    let s = t.state(Instant::now(), 1);
    assert_eq!(s.slis[1].error_budget_spent, 90, "{:?}", s.slis[1]);
}
