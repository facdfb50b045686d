//! The SLO engine: per probe, good and total canaries per SLI (latency,
//! delivery), wall-clock aligned time slices (good when every objective holds
//! inside the slice; no data when nothing resolved), error budget remaining
//! over the period and burn rates over 5m…3d. Canaries count when they
//! resolve, never while in flight. Memory is fixed: minute buckets for the
//! last 6 hours and hour buckets for the period (about 22 KiB for 30 days).

pub mod rules;

use crate::config::Slo;
use crate::outcome::{LaneId, LedgerEvent, Observer, Resolution};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Burn-rate windows, as exported in the `window` label.
pub const BURN_WINDOWS: [(&str, u64); 6] = [
    ("5m", 300),
    ("30m", 1800),
    ("1h", 3600),
    ("6h", 21_600),
    ("1d", 86_400),
    ("3d", 259_200),
];
const MINUTES: usize = 360;
/// Closed slices with data kept for reports (`check` shows them one by one).
const RECENT_SLICES: usize = 60;

/// One closed time slice with data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SliceResult {
    /// Wall-clock start, seconds since the Unix epoch.
    pub start_unix: u64,
    pub events: u64,
    pub latency_good: u64,
    pub delivery_good: u64,
    /// Every objective held inside the slice.
    pub good: bool,
}

/// How one canary resolved, for the SLIs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Resolved {
    Delivered(Duration),
    /// Lost or publish_failed: bad for every SLI.
    Failed,
}

/// Canaries that resolved in one minute or hour. u32 holds an hour of a
/// thousand lanes at the 1 ms shortest interval; they saturate rather than wrap.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    latency_good: u32,
    delivery_good: u32,
    total: u32,
}

/// A bucket of a ring of minutes or hours, numbered from the Unix epoch: the
/// number + 1 fits a u32 until the year 10,000 (minutes).
trait Bucket: Copy {
    /// The bucket's number + 1; 0 means empty.
    fn index(&self) -> u32;
    fn empty(index: u32) -> Self;
    fn counts(&mut self) -> &mut Counts;
    fn add_to(&self, w: &mut Window);
}

#[derive(Debug, Clone, Copy, Default)]
struct Minute {
    index: u32,
    counts: Counts,
}

/// An hour also counts the slices that closed in it: at most 3,600 (a
/// slice is at least 1 s), so u16.
#[derive(Debug, Clone, Copy, Default)]
struct Hour {
    index: u32,
    counts: Counts,
    slices_good: u16,
    slices_bad: u16,
}

impl Bucket for Minute {
    fn index(&self) -> u32 {
        self.index
    }
    fn empty(index: u32) -> Self {
        Minute {
            index,
            ..Minute::default()
        }
    }
    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }
    fn add_to(&self, w: &mut Window) {
        w.add(&self.counts);
    }
}

impl Bucket for Hour {
    fn index(&self) -> u32 {
        self.index
    }
    fn empty(index: u32) -> Self {
        Hour {
            index,
            ..Hour::default()
        }
    }
    fn counts(&mut self) -> &mut Counts {
        &mut self.counts
    }
    fn add_to(&self, w: &mut Window) {
        w.add(&self.counts);
        w.slices_good += u64::from(self.slices_good);
        w.slices_bad += u64::from(self.slices_bad);
    }
}

/// Buckets summed over a window (wide enough for a whole period).
#[derive(Debug, Clone, Copy, Default)]
struct Window {
    latency_good: u64,
    delivery_good: u64,
    total: u64,
    slices_good: u64,
    slices_bad: u64,
}

impl Window {
    fn add(&mut self, c: &Counts) {
        self.total += u64::from(c.total);
        self.latency_good += u64::from(c.latency_good);
        self.delivery_good += u64::from(c.delivery_good);
    }
}

/// Totals since start, for the `_total` counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub events: u64,
    pub latency_good: u64,
    pub delivery_good: u64,
    pub slices_good: u64,
    pub slices_bad: u64,
    pub slices_no_data: u64,
}

/// One SLI's state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SliState {
    pub sli: &'static str,
    /// Objective as a ratio (0.99 for 99%).
    pub objective: f64,
    /// Good / total over the period (1 when nothing resolved).
    pub compliance: f64,
    /// Canaries that may fail over the period: (1 − objective) × period /
    /// interval, for every lane.
    pub error_budget_canaries: f64,
    /// Canaries bad for this SLI over the period (in this process).
    pub error_budget_spent: u64,
    /// 1 − spent / allowance: the share of the period's allowance not yet
    /// spent; negative when overspent.
    pub error_budget_remaining: f64,
    /// (window, burn rate): bad share over the window / allowed bad share.
    /// Serialized as an object: `{"5m": 0.0, "30m": 0.0, ...}`.
    #[serde(serialize_with = "as_map")]
    pub burn_rates: Vec<(&'static str, f64)>,
}

fn as_map<S: serde::Serializer>(pairs: &[(&'static str, f64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (*k, *v)))
}

/// The SLO state of a probe at one moment.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SloState {
    pub slis: Vec<SliState>,
    pub totals: Totals,
    /// Good slices / slices with data, over the period (1 when none).
    pub slice_compliance: f64,
    pub slice_seconds: u64,
    pub period_seconds: u64,
    /// The last closed slices with data (at most 60), oldest first.
    pub recent_slices: Vec<SliceResult>,
}

/// Per-probe SLO bookkeeping.
#[derive(Debug)]
pub struct SloTracker {
    threshold: Option<Duration>,
    latency_objective: Option<f64>,
    delivery_objective: Option<f64>,
    slice_s: u64,
    period_s: u64,
    /// Canaries one lane sends over the period: period / interval.
    per_period: f64,
    /// Wall-clock microseconds at `inst0`: slices align to wall-clock boundaries.
    wall0_us: u64,
    inst0: Instant,
    minutes: Vec<Minute>,
    hours: Vec<Hour>,
    /// The slice being filled: its index and (latency good, delivery good, total).
    slice: u64,
    slice_acc: (u64, u64, u64),
    totals: Totals,
    recent: std::collections::VecDeque<SliceResult>,
}

/// 99.9 → 0.999, without the binary rounding residue of a plain division.
pub fn percent_to_ratio(p: f64) -> f64 {
    (p * 1e10).round() / 1e12
}

fn ratio(good: u64, total: u64) -> f64 {
    if total == 0 {
        1.0
    } else {
        good as f64 / total as f64
    }
}

impl SloTracker {
    /// A tracker for `slo` of a probe sending every `interval`, or none when
    /// it has no objective. `wall_now` is the wall clock at `now`.
    pub fn new(
        slo: &Slo,
        interval: Duration,
        now: Instant,
        wall_now: SystemTime,
    ) -> Option<SloTracker> {
        if slo.latency.is_none() && slo.delivery.is_none() {
            return None;
        }
        let wall0_us = wall_now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let slice_s = slo.slice.as_secs().max(1);
        let period_s = slo.period.as_secs().max(slice_s);
        let hours = period_s.div_ceil(3600) as usize;
        let mut t = SloTracker {
            threshold: slo.latency.map(|l| l.threshold),
            latency_objective: slo.latency.map(|l| percent_to_ratio(l.objective)),
            delivery_objective: slo.delivery.map(|d| percent_to_ratio(d.objective)),
            slice_s,
            period_s,
            per_period: period_s as f64 / interval.as_secs_f64().max(1e-9),
            wall0_us,
            inst0: now,
            minutes: vec![Minute::default(); MINUTES],
            hours: vec![Hour::default(); hours.max(1)],
            slice: 0,
            slice_acc: (0, 0, 0),
            totals: Totals::default(),
            recent: std::collections::VecDeque::with_capacity(RECENT_SLICES),
        };
        t.slice = t.wall_s(now) / slice_s;
        Some(t)
    }

    /// Follows the wall clock: after a step (NTP, a resumed VM) slice
    /// boundaries and buckets move with it rather than stay where the clock
    /// was at start. `wall_now` is the wall clock at `now`.
    pub fn resync(&mut self, now: Instant, wall_now: SystemTime) {
        self.wall0_us = wall_now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        self.inst0 = now;
    }

    fn wall_s(&self, now: Instant) -> u64 {
        (self.wall0_us + now.saturating_duration_since(self.inst0).as_micros() as u64) / 1_000_000
    }

    fn bucket<B: Bucket>(ring: &mut [B], index: u64) -> &mut B {
        let len = ring.len() as u64;
        let b = &mut ring[(index % len) as usize];
        let number = (index + 1) as u32;
        if b.index() != number {
            *b = B::empty(number);
        }
        b
    }

    /// Closes every slice that ended before `now`.
    fn advance(&mut self, now: Instant) {
        let wall = self.wall_s(now);
        let current = wall / self.slice_s;
        if current <= self.slice {
            return;
        }
        let (lat_good, del_good, total) = std::mem::take(&mut self.slice_acc);
        let end_hour = ((self.slice + 1) * self.slice_s - 1) / 3600;
        if total == 0 {
            self.totals.slices_no_data += 1;
        } else {
            let holds = |obj: Option<f64>, good: u64| {
                obj.is_none_or(|o| good as f64 >= o * total as f64 - 1e-9)
            };
            let good =
                holds(self.latency_objective, lat_good) && holds(self.delivery_objective, del_good);
            if self.recent.len() == RECENT_SLICES {
                self.recent.pop_front();
            }
            self.recent.push_back(SliceResult {
                start_unix: self.slice * self.slice_s,
                events: total,
                latency_good: lat_good,
                delivery_good: del_good,
                good,
            });
            let b = Self::bucket(&mut self.hours, end_hour);
            if good {
                b.slices_good = b.slices_good.saturating_add(1);
                self.totals.slices_good += 1;
            } else {
                b.slices_bad = b.slices_bad.saturating_add(1);
                self.totals.slices_bad += 1;
            }
        }
        // Slices in between saw nothing at all.
        self.totals.slices_no_data += current - self.slice - 1;
        self.slice = current;
    }

    /// Counts one canary that resolved at `now`.
    pub fn record(&mut self, now: Instant, outcome: Resolved) {
        self.advance(now);
        let (lat, del) = match outcome {
            Resolved::Delivered(latency) => (self.threshold.is_none_or(|t| latency <= t), true),
            Resolved::Failed => (false, false),
        };
        let wall = self.wall_s(now);
        for b in [
            Self::bucket(&mut self.minutes, wall / 60).counts(),
            Self::bucket(&mut self.hours, wall / 3600).counts(),
        ] {
            b.total = b.total.saturating_add(1);
            b.latency_good = b.latency_good.saturating_add(lat as u32);
            b.delivery_good = b.delivery_good.saturating_add(del as u32);
        }
        self.slice_acc.0 += lat as u64;
        self.slice_acc.1 += del as u64;
        self.slice_acc.2 += 1;
        self.totals.events += 1;
        self.totals.latency_good += lat as u64;
        self.totals.delivery_good += del as u64;
    }

    /// Sums buckets of `ring` (of `unit` seconds) covering the last `window` seconds up to `wall`.
    fn sum<B: Bucket>(ring: &[B], unit: u64, wall: u64, window: u64) -> Window {
        let cur = wall / unit;
        let n = (window / unit).max(1);
        let first = (cur + 1).saturating_sub(n);
        let mut s = Window::default();
        for b in ring.iter().filter(|b| {
            let i = u64::from(b.index());
            i > first && i <= cur + 1
        }) {
            b.add_to(&mut s);
        }
        s
    }

    /// The state at `now` of a probe with `lanes` lanes (each sends one
    /// canary per interval).
    pub fn state(&mut self, now: Instant, lanes: usize) -> SloState {
        self.advance(now);
        let wall = self.wall_s(now);
        // Periods of up to 6 hours are summed by the minute (a 90m period
        // is not a whole number of hours); longer ones by the hour.
        let slices = Self::sum(&self.hours, 3600, wall, self.period_s);
        let period = if self.period_s <= MINUTES as u64 * 60 {
            Self::sum(&self.minutes, 60, wall, self.period_s)
        } else {
            slices
        };
        let mut slis = Vec::new();
        for (sli, objective, good_of) in [
            (
                "latency",
                self.latency_objective,
                (|b: &Window| b.latency_good) as fn(&Window) -> u64,
            ),
            ("delivery", self.delivery_objective, |b: &Window| {
                b.delivery_good
            }),
        ] {
            let Some(objective) = objective else { continue };
            let allowed = 1.0 - objective;
            // A count of canaries: rounded so 0.1% of 360,000 reads 360,
            // not 360.00000000000036.
            let exact = allowed * self.per_period * lanes.max(1) as f64;
            let allowance = (exact * 1e6).round() / 1e6;
            let spent = period.total - good_of(&period);
            let bad_share = |b: &Window| 1.0 - ratio(good_of(b), b.total);
            let burn_rates = BURN_WINDOWS
                .iter()
                .map(|(name, secs)| {
                    let b = if *secs <= MINUTES as u64 * 60 {
                        Self::sum(&self.minutes, 60, wall, *secs)
                    } else {
                        Self::sum(&self.hours, 3600, wall, *secs)
                    };
                    (*name, bad_share(&b) / allowed)
                })
                .collect();
            slis.push(SliState {
                sli,
                objective,
                compliance: ratio(good_of(&period), period.total),
                error_budget_canaries: allowance,
                error_budget_spent: spent,
                // From the unrounded allowance, which is never 0: a finite
                // number even where the rounded one reads 0.
                error_budget_remaining: 1.0 - spent as f64 / exact,
                burn_rates,
            });
        }
        SloState {
            slis,
            totals: self.totals,
            slice_compliance: ratio(slices.slices_good, slices.slices_good + slices.slices_bad),
            slice_seconds: self.slice_s,
            period_seconds: self.period_s,
            recent_slices: self.recent.iter().copied().collect(),
        }
    }
}

/// The SLO engine of one probe: an observer of its ledgers (all lanes).
#[derive(Debug)]
pub struct SloObserver {
    tracker: Mutex<SloTracker>,
}

impl SloObserver {
    /// The engine for `slo` of a probe sending every `interval`, or none
    /// when it has no objective.
    pub fn new(slo: &Slo, interval: Duration) -> Option<Arc<SloObserver>> {
        SloTracker::new(slo, interval, Instant::now(), SystemTime::now()).map(|t| {
            Arc::new(SloObserver {
                tracker: Mutex::new(t),
            })
        })
    }

    /// The probe now sends every `interval` (a reload changed it): the
    /// period's allowance follows; what was counted stays.
    pub fn set_interval(&self, interval: Duration) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        t.per_period = t.period_s as f64 / interval.as_secs_f64().max(1e-9);
    }

    /// Takes over `old`'s totals (a reload changed the objectives): the
    /// counters go on; the windows start afresh.
    pub fn inherit_totals(&self, old: &SloObserver) {
        let o = old.tracker.lock().unwrap_or_else(|p| p.into_inner()).totals;
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        t.totals.events += o.events;
        t.totals.latency_good += o.latency_good;
        t.totals.delivery_good += o.delivery_good;
        t.totals.slices_good += o.slices_good;
        t.totals.slices_bad += o.slices_bad;
        t.totals.slices_no_data += o.slices_no_data;
    }

    /// The state at `now` of a probe with `lanes` lanes.
    pub fn state(&self, now: Instant, lanes: usize) -> SloState {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        t.resync(Instant::now(), SystemTime::now());
        t.state(now, lanes)
    }
}

impl Observer for SloObserver {
    fn observe(&self, _lane: LaneId, events: &[LedgerEvent]) {
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        t.resync(Instant::now(), SystemTime::now());
        for e in events {
            if let LedgerEvent::Resolved { resolution, at, .. } = e {
                let outcome = match resolution {
                    Resolution::Delivered { latency } => Resolved::Delivered(*latency),
                    Resolution::Lost | Resolution::PublishFailed(_) | Resolution::DeadLettered => {
                        Resolved::Failed
                    }
                };
                t.record(*at, outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests;
