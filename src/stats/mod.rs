//! Latency statistics: HDR histograms (3 significant figures, microsecond
//! resolution, saturating at the probe's deadline) kept cumulatively and over
//! a rolling window, plus fixed Prometheus buckets. Memory is bounded and
//! small: each histogram keeps only the HDR buckets it hit, in counts as
//! narrow as they allow ([`hdr`]), so a measure costs a few KiB where a dense
//! histogram up to a 5 s deadline costs 105 KiB; it never exceeds the dense
//! size (see [`LatencyStats`] for the worst case).

mod hdr;

use hdr::BucketCounts;
use hdrhistogram::Histogram;
use std::time::Duration;
use tokio::time::Instant;

/// Length of the rolling window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// The window is made of this many slots; the oldest drops every `WINDOW / SLOTS`.
const SLOTS: usize = 6;

/// Default Prometheus bucket bounds, in seconds.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0,
];

/// Extra Prometheus bucket bounds of the schedule lag: the scheduler keeps
/// it to tens of microseconds, below the smallest default bound (250 µs).
pub const LAG_BUCKETS: &[Duration] = &[
    Duration::from_micros(10),
    Duration::from_micros(25),
    Duration::from_micros(50),
    Duration::from_micros(100),
];

/// Each reported percentile, with the fewest samples that resolve it. With
/// n samples the nearest-rank p-th percentile is the ⌈p·n⌉-th smallest,
/// which is the maximum until n ≥ 1 / (1 − p): from 50 canaries a "p99" is
/// the worst of them, not a 99th percentile.
pub const RESOLUTION: [(&str, u64); 5] = [
    ("p50", 2),
    ("p90", 10),
    ("p95", 20),
    ("p99", 100),
    ("p999", 1000),
];

/// The fewest samples that resolve the percentile named as in [`RESOLUTION`].
pub fn needs(name: &str) -> u64 {
    RESOLUTION
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(u64::MAX, |(_, need)| *need)
}

/// Percentiles of one histogram, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
#[serde(into = "SummaryOut")]
pub struct Summary {
    pub count: u64,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        let s = |us: u64| us as f64 / 1e6;
        // HDR reports the highest value equivalent to the bucket; clamp to the true max.
        let q = |p: f64| s(h.value_at_quantile(p).min(h.max()));
        Summary {
            count: h.len(),
            min: s(h.min()),
            p50: q(0.50),
            p90: q(0.90),
            p95: q(0.95),
            p99: q(0.99),
            p999: q(0.999),
            max: s(h.max()),
            mean: h.mean() / 1e6,
        }
    }

    /// Whether the sample resolves the percentile named as in
    /// [`RESOLUTION`] (`p99`): it holds at least one value above it.
    pub fn resolves(&self, name: &str) -> bool {
        self.count >= needs(name)
    }

    /// The percentiles this sample cannot resolve (each is its maximum, or
    /// nothing at all for an empty sample).
    pub fn unresolvable(&self) -> Vec<&'static str> {
        RESOLUTION
            .iter()
            .filter(|(_, need)| self.count < *need)
            .map(|(n, _)| *n)
            .collect()
    }

    /// The percentiles by name (the exporters' `percentile` label).
    pub fn quantiles(&self) -> [(&'static str, f64); 5] {
        [
            ("50", self.p50),
            ("90", self.p90),
            ("95", self.p95),
            ("99", self.p99),
            ("99.9", self.p999),
        ]
    }
}

/// A [`Summary`] as reports write it: with the percentiles it cannot resolve.
#[derive(serde::Serialize)]
struct SummaryOut {
    count: u64,
    min: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
    unresolvable: Vec<&'static str>,
}

impl From<Summary> for SummaryOut {
    fn from(s: Summary) -> Self {
        SummaryOut {
            unresolvable: s.unresolvable(),
            count: s.count,
            min: s.min,
            p50: s.p50,
            p90: s.p90,
            p95: s.p95,
            p99: s.p99,
            p999: s.p999,
            max: s.max,
            mean: s.mean,
        }
    }
}

/// A Prometheus histogram: per-bucket (not cumulative) counts by upper bound
/// in seconds; the last bound is `f64::MAX`, meaning +Inf.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    pub counts: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Buckets {
    /// Canaries at or below `bound` seconds.
    pub fn at_or_below(&self, bound: f64) -> u64 {
        self.counts
            .iter()
            .take_while(|(b, _)| *b <= bound)
            .map(|(_, n)| n)
            .sum()
    }
}

/// Cumulative and rolling-window latency for one measure of one probe.
///
/// Its percentiles are those of a dense `Histogram::<u64>::new(3)` holding
/// the same values, exactly. Worst case, with `L` the number of HDR buckets
/// up to the deadline (13,509 for 5 s, 16,168 for 30 s, 23,221 for 1 h):
/// the cumulative histogram takes at most `8·L` bytes (`4·L` while no
/// bucket holds 2³² values), and each of the window's 6 slots at most `2·L`
/// while none of its buckets gets 65,536 values in 10 s (a lane sends
/// 10,000 in 10 s at the 1 ms shortest interval; only a backlog of a long
/// deadline draining at once gets more, and then `4·L`), so `20·L` in all
/// (264 KiB for 5 s) plus about 1 KiB, and only when the latencies hit every
/// bucket from 1 µs to the deadline. At steady latencies a measure takes a
/// few KiB (4–10 KB in the probe_memory bench).
#[derive(Debug)]
pub struct LatencyStats {
    cumulative: BucketCounts,
    /// Rolling-window slots, each the values recorded in its `slot_len`.
    window: [BucketCounts; SLOTS],
    /// Index of the slot being written.
    current: usize,
    /// When the current slot began.
    slot_start: Instant,
    slot_len: Duration,
    /// Values above this are recorded as this (saturation, never an error).
    max_us: u64,
    /// Prometheus histogram: upper bounds in microseconds and in seconds, and non-cumulative counts.
    bounds_us: Vec<u64>,
    bounds_s: Vec<f64>,
    bucket_counts: Vec<u64>,
    sum_s: f64,
}

/// An empty auto-resizing histogram with 3 significant figures, the layout
/// [`LatencyStats`] keeps its counts in: to merge several of them at scrape
/// time ([`LatencyStats::add_to`]).
pub fn histogram() -> Histogram<u64> {
    // Auto-resizing: memory follows the largest value added, at most a deadline.
    let mut h =
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant figures is valid"));
    h.auto(true);
    h
}

impl LatencyStats {
    /// `max` bounds the values kept; `extra_bounds` are added to the default
    /// Prometheus buckets exactly (e.g. SLO thresholds).
    pub fn new(max: Duration, extra_bounds: &[Duration], now: Instant) -> Self {
        let mut bounds_us: Vec<u64> = DEFAULT_BUCKETS
            .iter()
            .map(|s| (s * 1e6).round() as u64)
            .chain(extra_bounds.iter().map(|d| d.as_micros() as u64))
            .collect();
        bounds_us.sort_unstable();
        bounds_us.dedup();
        let bounds_s = bounds_us.iter().map(|us| *us as f64 / 1e6).collect();
        let n = bounds_us.len();
        let max_us = max.as_micros().max(1) as u64;
        LatencyStats {
            cumulative: BucketCounts::new(max_us),
            window: std::array::from_fn(|_| BucketCounts::new(max_us)),
            current: 0,
            slot_start: now,
            slot_len: WINDOW / SLOTS as u32,
            max_us,
            bounds_us,
            bounds_s,
            bucket_counts: vec![0; n + 1],
            sum_s: 0.0,
        }
    }

    pub fn record(&mut self, value: Duration, now: Instant) {
        self.rotate(now);
        let us = (value.as_micros() as u64).min(self.max_us);
        let bucket = hdr::index_of(us);
        self.cumulative.add(bucket, 1);
        self.window[self.current].add(bucket, 1);
        let i = self.bounds_us.partition_point(|b| *b < us);
        self.bucket_counts[i] = self.bucket_counts[i].saturating_add(1);
        self.sum_s += us as f64 / 1e6;
    }

    /// Drops the slots that have aged out of the window.
    fn rotate(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.slot_start);
        if elapsed < self.slot_len {
            return;
        }
        let steps = (elapsed.as_nanos() / self.slot_len.as_nanos()) as u64;
        for _ in 0..steps.min(SLOTS as u64) {
            self.current = (self.current + 1) % SLOTS;
            self.window[self.current].clear();
        }
        self.slot_start += self.slot_len * steps.min(u32::MAX as u64) as u32;
    }

    pub fn cumulative(&self) -> Summary {
        hdr::summarize(self.cumulative.iter(), self.cumulative.total())
    }

    /// Adds this measure's window and cumulative counts into `window` and
    /// `cumulative`, to summarise several lanes together.
    pub fn add_to(
        &mut self,
        now: Instant,
        window: &mut Histogram<u64>,
        cumulative: &mut Histogram<u64>,
    ) {
        self.rotate(now);
        // Each bucket as its lowest value: the same bucket in `Histogram`.
        let add = |h: &mut Histogram<u64>, (bucket, n): (u16, u64)| {
            let value = hdr::lowest(bucket);
            // Only on count overflow, where saturating is right.
            if h.record_n(value, n).is_err() {
                h.saturating_record_n(value, n);
            }
        };
        self.cumulative.iter().for_each(|c| add(cumulative, c));
        for slot in &self.window {
            slot.iter().for_each(|c| add(window, c));
        }
    }

    /// Percentiles over the last [`WINDOW`] (between 50 and 60 s, as slots age out).
    pub fn window(&mut self, now: Instant) -> Summary {
        self.rotate(now);
        let mut merged: Vec<(u16, u64)> = self.window.iter().flat_map(|s| s.iter()).collect();
        merged.sort_unstable_by_key(|(bucket, _)| *bucket);
        // One entry per bucket: the mean sums bucket by bucket.
        merged.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                kept.1 = kept.1.saturating_add(later.1);
            }
            same
        });
        let total = self
            .window
            .iter()
            .fold(0u64, |t, s| t.saturating_add(s.total()));
        hdr::summarize(merged.into_iter(), total)
    }

    /// The Prometheus histogram.
    pub fn buckets(&self) -> Buckets {
        let mut counts: Vec<(f64, u64)> = self
            .bounds_s
            .iter()
            .copied()
            .zip(self.bucket_counts.iter().copied())
            .collect();
        counts.push((f64::MAX, self.bucket_counts[self.bounds_s.len()]));
        Buckets {
            count: self.bucket_counts.iter().sum(),
            sum: self.sum_s,
            counts,
        }
    }

    pub fn count(&self) -> u64 {
        self.cumulative.total()
    }

    /// Adds what `old` recorded since its start, so a probe that starts
    /// again (a reload) goes on counting: the cumulative percentiles, and
    /// the Prometheus buckets. Where the bounds differ (an SLO threshold
    /// changed), each bound gets `old`'s count at the nearest bound at or
    /// below it: exact for every bound both have. The rolling window starts
    /// afresh.
    pub fn inherit(&mut self, old: &LatencyStats) {
        // An old value above this deadline counts as this deadline, as
        // `record` would count it.
        for (bucket, n) in old.cumulative.iter() {
            self.cumulative.add(bucket, n);
        }
        self.sum_s += old.sum_s;
        if old.bounds_us == self.bounds_us {
            for (a, b) in self.bucket_counts.iter_mut().zip(&old.bucket_counts) {
                *a += b;
            }
            return;
        }
        // Cumulative count of `old` at or below `bound`.
        let at_or_below = |bound: u64| -> u64 {
            old.bounds_us
                .iter()
                .zip(&old.bucket_counts)
                .take_while(|(b, _)| **b <= bound)
                .map(|(_, c)| c)
                .sum()
        };
        let mut below = 0;
        for (i, bound) in self.bounds_us.iter().enumerate() {
            let cum = at_or_below(*bound);
            self.bucket_counts[i] += cum - below;
            below = cum;
        }
        let total: u64 = old.bucket_counts.iter().sum();
        let last = self.bounds_us.len();
        self.bucket_counts[last] += total - below;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A percentile is resolvable from exactly 1/(1-p) samples on: below
    /// that the nearest rank is the last, so the "percentile" is the maximum.
    #[test]
    fn a_percentile_resolves_once_a_sample_lies_above_it() {
        for (name, need) in RESOLUTION {
            let p = match name {
                "p50" => 0.5,
                "p90" => 0.9,
                "p95" => 0.95,
                "p99" => 0.99,
                _ => 0.999,
            };
            for n in [need - 1, need] {
                // n distinct values 1..=n µs: the maximum is n.
                let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
                (1..=n).for_each(|v| h.record(v).unwrap());
                let s = Summary::of(&h);
                let at_max = h.value_at_quantile(p) == h.max();
                assert_eq!(s.resolves(name), !at_max, "{name} with {n} samples");
                assert_eq!(s.unresolvable().contains(&name), at_max, "{name} with {n}");
            }
        }
        assert_eq!(Summary::default().unresolvable().len(), RESOLUTION.len());
    }

    /// Values as a probe sees them, and worse: zero, exact microseconds,
    /// spread over every magnitude, at and above the clamp.
    fn value(rng: &mut impl rand::Rng, max_us: u64) -> u64 {
        match rng.gen_range(0..10) {
            0 => 0,
            1 => max_us,
            2 => max_us + rng.gen_range(1..1_000_000),
            3..=5 => rng.gen_range(1..3000),
            _ => {
                // Log-uniform up to twice the clamp.
                let top = (2 * max_us) as f64;
                top.powf(rng.gen::<f64>()) as u64
            }
        }
    }

    /// The dense histogram of `values`, clamped as `LatencyStats` clamps.
    fn dense(values: impl Iterator<Item = u64>, max_us: u64) -> Histogram<u64> {
        let mut h = histogram();
        values.for_each(|v| h.record(v.min(max_us)).unwrap());
        h
    }

    /// Every `Summary` field, window and cumulative, equals what a dense
    /// `hdrhistogram` with the same values gives, through sparse, widened
    /// and dense layouts, as slots age out, and merged with `add_to`.
    #[test]
    fn summaries_equal_a_dense_hdr_histogram() {
        use rand::SeedableRng;
        let t0 = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut went_dense = false;
        for (max, n) in [(1, 3_000), (5, 60_000), (30, 20_000), (3600, 5_000)] {
            let max_us = max * 1_000_000;
            let deadline = Duration::from_secs(max);
            let mut s = LatencyStats::new(deadline, &[Duration::from_millis(3)], t0);
            let mut other = LatencyStats::new(deadline, &[], t0);
            // (value, slot index) of every value recorded.
            let mut seen: Vec<(u64, u64)> = Vec::new();
            for i in 0..n {
                // A value every 7 ms, with gaps of a minute now and then.
                let at = Duration::from_millis(7 * i) + Duration::from_secs(60 * (i / 4000));
                let now = t0 + at;
                let v = value(&mut rng, max_us);
                s.record(Duration::from_micros(v), now);
                other.record(Duration::from_micros(v / 3), now);
                seen.push((v, at.as_secs() / 10));
                if i % 997 != 0 && i + 1 != n {
                    continue;
                }
                let slot = at.as_secs() / 10;
                let cumulative = dense(seen.iter().map(|(v, _)| *v), max_us);
                let live = seen.iter().filter(|(_, s)| s + 6 > slot);
                let window = dense(live.map(|(v, _)| *v), max_us);
                assert_eq!(s.cumulative(), Summary::of(&cumulative), "{max} s, {i}");
                assert_eq!(s.window(now), Summary::of(&window), "{max} s, {i}");
                assert_eq!(s.count(), cumulative.len());
                // Two lanes merged: the dense histograms of both.
                let (mut w, mut c) = (histogram(), histogram());
                s.add_to(now, &mut w, &mut c);
                other.add_to(now, &mut w, &mut c);
                let thirds = |h: &mut Histogram<u64>, live: bool| {
                    seen.iter()
                        .filter(|(_, s)| !live || s + 6 > slot)
                        .for_each(|(v, _)| h.record((v / 3).min(max_us)).unwrap());
                };
                let (mut want_w, mut want_c) = (window.clone(), cumulative.clone());
                thirds(&mut want_w, true);
                thirds(&mut want_c, false);
                assert_eq!(Summary::of(&w), Summary::of(&want_w), "{max} s, {i}");
                assert_eq!(Summary::of(&c), Summary::of(&want_c), "{max} s, {i}");
            }
            went_dense |= s.cumulative.is_dense();
        }
        assert!(went_dense, "the test covers the dense layout");
    }

    #[tokio::test(start_paused = true)]
    async fn a_successor_goes_on_counting_even_with_another_threshold() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut old = LatencyStats::new(Duration::from_secs(10), &[], now);
        for v in [1, 3, 40, 300] {
            old.record(ms(v), now);
        }
        // Same bounds: the buckets add up exactly.
        let mut same = LatencyStats::new(Duration::from_secs(10), &[], now);
        same.record(ms(2), now);
        same.inherit(&old);
        assert_eq!(same.buckets().count, 5);
        assert_eq!(same.buckets().at_or_below(0.005), 3);
        assert_eq!(same.count(), 5);
        // A new 42 ms threshold: every bound both have is exact, and the new
        // one is never below the bound under it.
        let mut other = LatencyStats::new(Duration::from_secs(10), &[ms(42)], now);
        other.inherit(&old);
        let b = other.buckets();
        assert_eq!(b.count, 4);
        assert_eq!(b.at_or_below(0.025), 2);
        assert_eq!(b.at_or_below(0.05), 3);
        assert_eq!(b.at_or_below(0.042), 2);
        assert_eq!(b.at_or_below(10.0), 4);
        assert!((b.sum - 0.344).abs() < 1e-9, "{}", b.sum);
    }

    #[tokio::test(start_paused = true)]
    async fn percentiles_are_within_three_significant_figures() {
        let now = Instant::now();
        let mut s = LatencyStats::new(Duration::from_secs(30), &[], now);
        for ms in 1..=1000u64 {
            s.record(Duration::from_micros(ms * 1000), now);
        }
        let c = s.cumulative();
        assert_eq!(c.count, 1000);
        assert!((c.p50 - 0.500).abs() <= 0.0005, "{}", c.p50);
        assert!((c.p99 - 0.990).abs() <= 0.001, "{}", c.p99);
        assert!((c.max - 1.0).abs() <= 0.001, "{}", c.max);
        assert_eq!(s.window(now), c);
    }

    #[tokio::test(start_paused = true)]
    async fn window_forgets_old_values_but_cumulative_keeps_them() {
        let t0 = Instant::now();
        let mut s = LatencyStats::new(Duration::from_secs(30), &[], t0);
        s.record(Duration::from_millis(900), t0);
        tokio::time::advance(Duration::from_secs(30)).await;
        s.record(Duration::from_millis(1), Instant::now());
        assert_eq!(s.window(Instant::now()).count, 2);
        // 61 s after the first value, its slot has aged out.
        tokio::time::advance(Duration::from_secs(31)).await;
        let w = s.window(Instant::now());
        assert_eq!(w.count, 1);
        assert!(w.max < 0.002);
        assert_eq!(s.cumulative().count, 2);
        // After a long silence the window is empty.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(s.window(Instant::now()).count, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn saturates_at_the_maximum_and_buckets_include_extra_bounds() {
        let now = Instant::now();
        let mut s = LatencyStats::new(Duration::from_secs(1), &[Duration::from_millis(300)], now);
        s.record(Duration::from_secs(100), now);
        s.record(Duration::from_millis(300), now);
        s.record(Duration::from_micros(300_001), now);
        assert!(s.cumulative().max <= 1.001);
        let b = s.buckets();
        assert_eq!(b.count, 3);
        assert!(
            b.counts.iter().any(|(x, _)| *x == 0.3),
            "the 300ms bound is exact"
        );
        assert_eq!(b.at_or_below(0.3), 1, "bounds are inclusive");
        assert_eq!(b.at_or_below(0.5), 2);
        assert_eq!(b.at_or_below(1.0), 3, "100 s saturates at the 1 s maximum");
        assert_eq!(b.at_or_below(f64::MAX), 3);
    }
}
