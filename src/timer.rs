//! The schedule's clock. tokio's timer wheel has a 1 ms tick and wakes
//! about a millisecond late, which every latency measured from a slot
//! would carry. [`Timer::precise`] is one process-wide thread that sleeps
//! with 1 ns timer slack until the earliest registered instant, wakes that
//! task [`LEAD`] early, and the task spins the rest: slots are kept to
//! tens of microseconds at the cost of one thread wake-up per distinct
//! instant, not per task. Callers make instants coincide (slots on a
//! common grid, see [`align`]) so that many slots share one wake-up.
//!
//! [`Timer::Tokio`] is tokio's own timer, for tests on paused time.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant as StdInstant};
use tokio::time::Instant;

/// How long before its instant the thread wakes a task: what the thread
/// wakes late (p50 ~30 µs with 1 ns slack here) plus what handing a
/// wake-up to a tokio worker takes (~20–25 µs).
pub const LEAD: Duration = Duration::from_micros(60);
/// A sleep polled this close to its instant spins the rest. Longer than
/// [`LEAD`], so that a task woken early spins instead of sleeping again.
const SPIN: Duration = Duration::from_micros(150);
/// The grid slots are put on, so that probes' sends share wake-ups and writes.
pub const GRID: Duration = Duration::from_millis(1);

/// Where a schedule's sleeps are kept.
#[derive(Clone, Copy, Debug)]
pub enum Timer {
    /// The precise thread (production).
    Precise(&'static Precise),
    /// tokio's timer: follows paused time in tests; wakes ~1 ms late.
    Tokio,
}

impl Timer {
    /// The process-wide precise timer, its thread started on first use.
    pub fn precise() -> Timer {
        static PRECISE: OnceLock<&'static Precise> = OnceLock::new();
        Timer::Precise(PRECISE.get_or_init(Precise::start))
    }

    /// Waits until `at`; with the precise timer, returns within tens of
    /// microseconds after it, never before it.
    pub async fn sleep_until(self, at: Instant) {
        match self {
            Timer::Tokio => tokio::time::sleep_until(at).await,
            Timer::Precise(p) => {
                Sleep {
                    timer: p,
                    at: at.into_std(),
                    entry: None,
                }
                .await
            }
        }
    }
}

/// The first multiple of [`GRID`] (counted from a process-wide epoch) at or
/// after `at`: slots of every probe fall on shared instants.
pub fn align(at: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let grid = GRID.as_nanos();
    let steps = since.div_ceil(grid);
    epoch + Duration::from_nanos(u64::try_from(steps * grid).unwrap_or(u64::MAX))
}

/// One registered sleep: its waker, updated when polled again, and
/// whether it was dropped (the thread then skips it).
struct Entry {
    waker: Mutex<Option<Waker>>,
    cancelled: AtomicBool,
}

struct Due {
    wake_at: StdInstant,
    entry: Arc<Entry>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.wake_at == other.wake_at
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.wake_at.cmp(&other.wake_at)
    }
}

/// The timer thread's queue.
pub struct Precise {
    queue: Mutex<BinaryHeap<Reverse<Due>>>,
    changed: Condvar,
}

impl std::fmt::Debug for Precise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Precise")
    }
}

impl Precise {
    fn start() -> &'static Precise {
        let timer: &'static Precise = Box::leak(Box::new(Precise {
            queue: Mutex::new(BinaryHeap::new()),
            changed: Condvar::new(),
        }));
        let spawned = std::thread::Builder::new()
            .name("chirp-timer".into())
            .spawn(move || timer.run());
        if let Err(e) = spawned {
            // Without the thread no sleep would ever end: the schedule
            // cannot run at all, which must not pass for a quiet probe.
            panic!("cannot start the schedule's timer thread: {e}");
        }
        timer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BinaryHeap<Reverse<Due>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn register(&self, wake_at: StdInstant, entry: Arc<Entry>) {
        let mut q = self.lock();
        let earliest = q.peek().is_none_or(|Reverse(d)| wake_at < d.wake_at);
        q.push(Reverse(Due { wake_at, entry }));
        drop(q);
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        set_timer_slack();
        let mut due: Vec<Waker> = Vec::new();
        let mut q = self.lock();
        loop {
            let now = StdInstant::now();
            while let Some(Reverse(d)) = q.peek() {
                if d.wake_at > now {
                    break;
                }
                let Some(Reverse(d)) = q.pop() else { break };
                if !d.entry.cancelled.load(Ordering::Acquire) {
                    if let Some(w) = d
                        .entry
                        .waker
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take()
                    {
                        due.push(w);
                    }
                }
            }
            if !due.is_empty() {
                // Wake outside the lock: a woken task may register at once.
                drop(q);
                due.drain(..).for_each(Waker::wake);
                q = self.lock();
                continue;
            }
            q = match q.peek() {
                None => self.changed.wait(q).unwrap_or_else(|p| p.into_inner()),
                Some(Reverse(d)) => {
                    let wait = d.wake_at.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(q, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }
}

/// Asks the kernel to wake this thread when asked, not up to 50 µs later
/// (the default timer slack); Linux only, elsewhere the default stays.
fn set_timer_slack() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1)) {
        tracing::warn!(error = %e, "Cannot lower the timer thread's slack; slots may be kept up to 50 µs late.");
    }
}

struct Sleep {
    timer: &'static Precise,
    at: StdInstant,
    entry: Option<Arc<Entry>>,
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let now = StdInstant::now();
        if now >= self.at {
            return Poll::Ready(());
        }
        if self.at - now <= SPIN {
            // Woken early on purpose: the last microseconds are spun, as
            // no sleep of any kind ends this precisely.
            while StdInstant::now() < self.at {
                std::hint::spin_loop();
            }
            return Poll::Ready(());
        }
        match &self.entry {
            Some(e) => {
                let mut w = e.waker.lock().unwrap_or_else(|p| p.into_inner());
                match w.as_mut() {
                    Some(w) => w.clone_from(cx.waker()),
                    // Already fired (woken early, polled later than SPIN
                    // before its instant only if the clock moved): register again.
                    None => {
                        *w = Some(cx.waker().clone());
                        drop(w);
                        let entry = Arc::clone(e);
                        let timer = self.timer;
                        timer.register(self.at - LEAD, entry);
                    }
                }
            }
            None => {
                let entry = Arc::new(Entry {
                    waker: Mutex::new(Some(cx.waker().clone())),
                    cancelled: AtomicBool::new(false),
                });
                self.timer.register(self.at - LEAD, Arc::clone(&entry));
                self.entry = Some(entry);
            }
        }
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(e) = &self.entry {
            e.cancelled.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Never early, and every sleep ends (registered latest first); how
    /// late is the benchmark's business, not a test's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sleeps_end_at_or_after_their_instant() {
        let timer = Timer::precise();
        let start = Instant::now();
        let ends = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in (0..20u64).rev() {
            let at = start + Duration::from_micros(2_000 + 500 * i);
            let ends = Arc::clone(&ends);
            tasks.push(tokio::spawn(async move {
                timer.sleep_until(at).await;
                let now = Instant::now();
                assert!(now >= at, "woke {:?} early", at - now);
                ends.lock().unwrap().push((i, now));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let ends = ends.lock().unwrap();
        assert_eq!(ends.len(), 20);
    }

    #[tokio::test]
    async fn a_dropped_sleep_does_not_disturb_the_others() {
        let timer = Timer::precise();
        let at = Instant::now() + Duration::from_millis(100);
        // Registered (polled once), then dropped before its instant.
        let mut dropped = Box::pin(timer.sleep_until(at));
        assert!(futures::poll!(dropped.as_mut()).is_pending());
        drop(dropped);
        timer.sleep_until(at).await;
        assert!(Instant::now() >= at);
        // An instant in the past returns at once.
        timer.sleep_until(at).await;
    }

    #[test]
    fn aligned_instants_fall_on_the_grid_never_before() {
        let now = Instant::now();
        for offset_us in [0u64, 1, 999, 1000, 1001, 123_456] {
            let at = now + Duration::from_micros(offset_us);
            let a = align(at);
            assert!(a >= at && a - at < GRID);
            assert_eq!(align(a), a, "an aligned instant stays");
            let b = align(at + Duration::from_millis(7));
            assert_eq!((b - a).as_nanos() % GRID.as_nanos(), 0);
        }
    }
}
