//! The last hour of one probe, minute by minute, for the status page: an
//! observer of the probe's ledgers (all lanes) keeping canaries sent,
//! delivered, lost and refused per minute (exact counts), the same per 10
//! seconds for the last minute, and end-to-end latency per minute in
//! log-scale buckets for the last 15 minutes (p99 kept for older minutes).
//! Memory is fixed (about 10 KiB per probe), whatever the traffic or uptime.

use crate::outcome::{LaneId, LedgerEvent, Observer, Resolution};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Minutes kept: the sparkline's hour.
pub const MINUTES: usize = 60;
/// Minutes whose latency histogram is kept: the "last 15 minutes" window.
pub const HISTOGRAM_MINUTES: usize = 15;
/// The "last minute" window is this many slots of [`SLOT`] (the current one
/// included), as the ledger's rolling latency window is.
const RECENT_SLOTS: usize = 6;
const SLOT: Duration = Duration::from_secs(10);
const MINUTE: Duration = Duration::from_secs(60);
/// Log-scale latency buckets per doubling: 2^(1/8) wide, the resolution of
/// Prometheus' native histograms at their default schema (3). A quantile
/// read as its bucket's geometric middle is within 2^(1/16) − 1 ≈ 4.4 % of
/// the exact value.
pub const BUCKETS_PER_OCTAVE: u32 = 8;
/// 32 doublings of a microsecond: up to 71 minutes, beyond the longest
/// deadline (1 h), so a delivered canary's latency always has its bucket.
const BUCKETS: usize = 32 * BUCKETS_PER_OCTAVE as usize;
/// The worst relative error of a quantile read from the buckets.
pub const QUANTILE_ERROR: f64 = 0.044_3;

/// Canaries counted over some span: sent in it, and resolved in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub publish_failed: u64,
    pub dead_lettered: u64,
}

impl Tally {
    /// Canaries that resolved in the span (delivered, dead-lettered, lost or refused).
    pub fn resolved(&self) -> u64 {
        self.delivered + self.dead_lettered + self.lost + self.publish_failed
    }

    /// Lost, refused by the producer, or dead-lettered by the pipeline.
    pub fn failed(&self) -> u64 {
        self.lost + self.publish_failed + self.dead_lettered
    }

    /// The share of resolved canaries lost or refused; `None` when none resolved.
    pub fn loss(&self) -> Option<f64> {
        let resolved = self.resolved();
        (resolved > 0).then(|| self.failed() as f64 / resolved as f64)
    }

    fn add(&mut self, other: &Counters) {
        self.sent += u64::from(other.sent);
        self.delivered += u64::from(other.delivered);
        self.lost += u64::from(other.lost);
        self.publish_failed += u64::from(other.publish_failed);
        self.dead_lettered += u64::from(other.dead_lettered);
    }
}

/// One minute of the hour, as the status page draws it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MinuteView {
    /// When the minute began (a wall-clock minute, as the clock was when the probe started).
    pub start: Instant,
    pub tally: Tally,
    /// p99 of the latencies of canaries delivered in the minute (±4.4 %).
    pub p99: Option<Duration>,
}

/// What the history says at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryView {
    /// The last minute: the current 10-second slot and the 5 before it (50–60 s).
    pub last_minute: Tally,
    /// The last 15 minutes: the current minute and the 14 before it (14–15 min).
    pub last_15_minutes: Tally,
    /// p99 over the last 15 minutes (±4.4 %, never above the largest latency seen).
    pub p99_15_minutes: Option<Duration>,
    /// The last [`MINUTES`] minutes, oldest first; the last one is the
    /// current minute, still filling. Minutes before the probe started are empty.
    pub minutes: Vec<MinuteView>,
}

/// Counts of one bucket of time. u32 holds 71 million canaries a second
/// for a minute, far beyond what a probe sends; they saturate rather than wrap.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    sent: u32,
    delivered: u32,
    lost: u32,
    publish_failed: u32,
    dead_lettered: u32,
}

impl Counters {
    fn count(&mut self, what: Event) {
        let c = match what {
            Event::Sent => &mut self.sent,
            Event::Delivered => &mut self.delivered,
            Event::Lost => &mut self.lost,
            Event::PublishFailed => &mut self.publish_failed,
            Event::DeadLettered => &mut self.dead_lettered,
        };
        *c = c.saturating_add(1);
    }
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Sent,
    Delivered,
    Lost,
    PublishFailed,
    DeadLettered,
}

/// No p99 known for the minute.
const NO_P99: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Minute {
    /// Minute number (since `origin`) + 1; 0 when empty. u32 holds 8,000
    /// years of minutes.
    index: u32,
    counts: Counters,
    /// The largest latency delivered in the minute, microseconds.
    max_us: u32,
    /// p99 in microseconds, set when the minute's histogram is reused.
    p99_us: u32,
}

impl Minute {
    const EMPTY: Minute = Minute {
        index: 0,
        counts: Counters {
            sent: 0,
            delivered: 0,
            lost: 0,
            publish_failed: 0,
            dead_lettered: 0,
        },
        max_us: 0,
        p99_us: NO_P99,
    };
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Slot number (since `origin`) + 1; 0 when empty.
    index: u64,
    counts: Counters,
}

#[derive(Debug, Clone)]
struct Histogram {
    /// Minute number + 1; 0 when empty.
    index: u32,
    counts: LatencyCounts,
}

impl Histogram {
    const EMPTY: Histogram = Histogram {
        index: 0,
        counts: LatencyCounts::Narrow([0; BUCKETS]),
    };
}

/// One minute's latency buckets: u16 counts (half the memory) until one
/// overflows, which takes 65,536 canaries at one latency (±4.4 %) in a
/// minute; then u32 on the heap, for that minute only.
// The narrow variant is the one nearly every minute uses, inline on purpose:
// boxing it would add an allocation per probe and minute.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
enum LatencyCounts {
    Narrow([u16; BUCKETS]),
    Wide(Box<[u32; BUCKETS]>),
}

impl LatencyCounts {
    fn add(&mut self, bucket: usize) {
        match self {
            LatencyCounts::Narrow(c) => match c[bucket].checked_add(1) {
                Some(n) => c[bucket] = n,
                None => {
                    let mut wide = Box::new([0u32; BUCKETS]);
                    for (w, n) in wide.iter_mut().zip(c.iter()) {
                        *w = u32::from(*n);
                    }
                    wide[bucket] += 1;
                    *self = LatencyCounts::Wide(wide);
                }
            },
            LatencyCounts::Wide(c) => c[bucket] = c[bucket].saturating_add(1),
        }
    }

    fn quantile(&self, q: f64, max_us: u64) -> Option<Duration> {
        match self {
            LatencyCounts::Narrow(c) => quantile(c, q, max_us),
            LatencyCounts::Wide(c) => quantile(&c[..], q, max_us),
        }
    }

    fn add_to(&self, merged: &mut [u64; BUCKETS]) {
        match self {
            LatencyCounts::Narrow(c) => merged
                .iter_mut()
                .zip(c)
                .for_each(|(m, c)| *m += u64::from(*c)),
            LatencyCounts::Wide(c) => merged
                .iter_mut()
                .zip(c.iter())
                .for_each(|(m, c)| *m += u64::from(*c)),
        }
    }
}

/// Everything kept, in fixed arrays: its size is the probe's cost.
#[derive(Debug)]
struct Ring {
    minutes: [Minute; MINUTES],
    recent: [Slot; RECENT_SLOTS],
    histograms: [Histogram; HISTOGRAM_MINUTES],
}

/// The bucket of a latency of `us` microseconds: `floor(8 · log2(us))`.
fn bucket_of(us: u64) -> usize {
    if us <= 1 {
        return 0;
    }
    let i = ((us as f64).log2() * f64::from(BUCKETS_PER_OCTAVE)).floor() as usize;
    i.min(BUCKETS - 1)
}

/// The geometric middle of bucket `i`, microseconds.
fn middle_us(i: usize) -> f64 {
    ((i as f64 + 0.5) / f64::from(BUCKETS_PER_OCTAVE)).exp2()
}

/// The `q` quantile (nearest rank) of `counts`, as its bucket's middle
/// (to the microsecond), never above `max_us`; `None` when empty.
fn quantile<T: Copy + Into<u64>>(counts: &[T], q: f64, max_us: u64) -> Option<Duration> {
    let total: u64 = counts.iter().map(|c| (*c).into()).sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    let i = counts.iter().position(|c| {
        seen += (*c).into();
        seen >= rank
    })?;
    let us = middle_us(i).min(max_us as f64);
    Some(Duration::from_micros(us.round() as u64))
}

impl Ring {
    fn new() -> Ring {
        Ring {
            minutes: [Minute::EMPTY; MINUTES],
            recent: [Slot {
                index: 0,
                counts: Counters::default(),
            }; RECENT_SLOTS],
            histograms: [const { Histogram::EMPTY }; HISTOGRAM_MINUTES],
        }
    }

    /// Minute `m`'s bucket, emptied if it held an older minute; `None` when
    /// it already holds a later one (an event more than an hour late).
    fn minute(&mut self, m: u64) -> Option<&mut Minute> {
        let b = &mut self.minutes[(m % MINUTES as u64) as usize];
        if u64::from(b.index) > m + 1 {
            return None;
        }
        if u64::from(b.index) < m + 1 {
            *b = Minute {
                index: (m + 1) as u32,
                ..Minute::EMPTY
            };
        }
        Some(b)
    }

    fn slot(&mut self, s: u64) -> Option<&mut Slot> {
        let b = &mut self.recent[(s % RECENT_SLOTS as u64) as usize];
        if b.index > s + 1 {
            return None;
        }
        if b.index < s + 1 {
            *b = Slot {
                index: s + 1,
                counts: Counters::default(),
            };
        }
        Some(b)
    }

    /// Minute `m`'s histogram. The minute it held before keeps its p99.
    fn histogram(&mut self, m: u64) -> Option<&mut Histogram> {
        let i = (m % HISTOGRAM_MINUTES as u64) as usize;
        let held = self.histograms[i].index;
        if u64::from(held) > m + 1 {
            return None;
        }
        if u64::from(held) < m + 1 {
            if held > 0 {
                let old = held - 1;
                let b = &mut self.minutes[(old as usize) % MINUTES];
                if b.index == held {
                    b.p99_us = (self.histograms[i].counts)
                        .quantile(0.99, b.max_us.into())
                        .map_or(NO_P99, |d| d.as_micros().min(u128::from(NO_P99 - 1)) as u32);
                }
            }
            self.histograms[i] = Histogram {
                index: (m + 1) as u32,
                ..Histogram::EMPTY
            };
        }
        Some(&mut self.histograms[i])
    }

    fn count(&mut self, (minute, slot): (u64, u64), what: Event) {
        if let Some(b) = self.minute(minute) {
            b.counts.count(what);
        }
        if let Some(s) = self.slot(slot) {
            s.counts.count(what);
        }
    }

    fn delivered(&mut self, at: (u64, u64), latency: Duration) {
        self.count(at, Event::Delivered);
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(b) = self.minute(at.0) {
            b.max_us = b.max_us.max(us.min(u64::from(u32::MAX)) as u32);
        }
        if let Some(h) = self.histogram(at.0) {
            h.counts.add(bucket_of(us));
        }
    }

    /// The p99 of minute `m` (its bucket `b`): from its histogram while kept, else as kept.
    fn p99_of(&self, m: u64, b: &Minute) -> Option<Duration> {
        let h = &self.histograms[(m % HISTOGRAM_MINUTES as u64) as usize];
        if u64::from(h.index) == m + 1 {
            return h.counts.quantile(0.99, b.max_us.into());
        }
        (b.p99_us != NO_P99).then(|| Duration::from_micros(b.p99_us.into()))
    }
}

/// The history of one probe: hand it every ledger event (it is an
/// [`Observer`]), read it with [`History::view`].
#[derive(Debug)]
pub struct History {
    /// Minute 0 begins here: a wall-clock minute boundary at creation, so
    /// minutes read as 07:31, 07:32 on the page.
    origin: Instant,
    ring: Mutex<Ring>,
}

impl History {
    /// A history starting now, its minutes aligned to the wall clock's.
    pub fn new() -> History {
        let now = Instant::now();
        let into_minute = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| Duration::from_micros((d.as_micros() % 60_000_000) as u64))
            .unwrap_or_default();
        History::starting_at(now.checked_sub(into_minute).unwrap_or(now))
    }

    /// A history whose minute 0 begins at `origin` (tests).
    pub fn starting_at(origin: Instant) -> History {
        History {
            origin,
            ring: Mutex::new(Ring::new()),
        }
    }

    /// The bytes one probe's history takes. It allocates nothing else,
    /// unless 65,536 canaries of one minute fall in one latency bucket: then
    /// 1 KiB more for that minute, for the 15 minutes it is kept.
    pub const fn size() -> usize {
        std::mem::size_of::<History>()
    }

    /// (minute, 10-second slot) of `at`.
    fn ticks(&self, at: Instant) -> (u64, u64) {
        let since = at.saturating_duration_since(self.origin).as_nanos();
        (
            (since / MINUTE.as_nanos()) as u64,
            (since / SLOT.as_nanos()) as u64,
        )
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Every update is a few integer adds: a panic elsewhere leaves it consistent.
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The history as of `now`.
    pub fn view(&self, now: Instant) -> HistoryView {
        let ring = self.ring();
        let (minute, slot) = self.ticks(now);
        let mut last_minute = Tally::default();
        for s in &ring.recent {
            if s.index > 0 && s.index - 1 + RECENT_SLOTS as u64 > slot && s.index - 1 <= slot {
                last_minute.add(&s.counts);
            }
        }
        let in_15 = |index: u64| {
            index > 0 && index - 1 + HISTOGRAM_MINUTES as u64 > minute && index - 1 <= minute
        };
        let mut last_15_minutes = Tally::default();
        let mut max_us = 0u64;
        for b in ring.minutes.iter().filter(|b| in_15(b.index.into())) {
            last_15_minutes.add(&b.counts);
            max_us = max_us.max(b.max_us.into());
        }
        let mut merged = [0u64; BUCKETS];
        for h in ring.histograms.iter().filter(|h| in_15(h.index.into())) {
            h.counts.add_to(&mut merged);
        }
        let p99_15_minutes = quantile(&merged, 0.99, max_us);
        // Oldest first; before the probe's 60th minute, the hour begins before it did.
        let minutes = (0..MINUTES as u64)
            .rev()
            .map(|back| {
                let empty = |start| MinuteView {
                    start,
                    tally: Tally::default(),
                    p99: None,
                };
                let Some(m) = minute.checked_sub(back) else {
                    let before = MINUTE * u32::try_from(back - minute).unwrap_or(u32::MAX);
                    return empty(self.origin.checked_sub(before).unwrap_or(self.origin));
                };
                let start = self.origin + MINUTE * u32::try_from(m).unwrap_or(u32::MAX);
                let b = &ring.minutes[(m % MINUTES as u64) as usize];
                if u64::from(b.index) != m + 1 {
                    return empty(start);
                }
                let mut tally = Tally::default();
                tally.add(&b.counts);
                MinuteView {
                    start,
                    tally,
                    p99: ring.p99_of(m, b),
                }
            })
            .collect();
        HistoryView {
            last_minute,
            last_15_minutes,
            p99_15_minutes,
            minutes,
        }
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl Observer for History {
    fn observe(&self, _lane: LaneId, events: &[LedgerEvent]) {
        let mut ring = self.ring();
        for e in events {
            match e {
                LedgerEvent::Sent { slot, lag, .. } => {
                    ring.count(self.ticks(*slot + *lag), Event::Sent);
                }
                LedgerEvent::Resolved { resolution, at, .. } => {
                    let at = self.ticks(*at);
                    match resolution {
                        Resolution::Delivered { latency } => ring.delivered(at, *latency),
                        Resolution::Lost => ring.count(at, Event::Lost),
                        Resolution::PublishFailed(_) => ring.count(at, Event::PublishFailed),
                        Resolution::DeadLettered => ring.count(at, Event::DeadLettered),
                    }
                }
                LedgerEvent::Acknowledged { .. } | LedgerEvent::Caught { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
