//! Benchmark: the heap one probe keeps, measured with dhat. Builds N probes'
//! state as the runtime builds it for a one-lane probe (its ledger behind a
//! mutex, the SLO observer with a 30-day period, the history), drives them
//! with simulated traffic (tokio's paused clock: 5 minutes at 10 Hz, a 30 s
//! stall in which every latency ramps up to the 5 s deadline, 2 more normal
//! minutes, a scrape every 15 s), and prints live heap bytes per probe and
//! per component, for N = 100 and 1,000. Run with
//! `cargo bench --bench probe_memory` (`-- --save FILE` also writes dhat's
//! profile, for `dh_view.html`; `-- --probes 10 --after 1440` runs 10
//! probes with a day of normal traffic after the stall, for the size a
//! long-running probe settles at). dhat counts the bytes asked for; the
//! allocator's own overhead comes on top in RSS. Figures only: nothing here
//! asserts a size.
//!
//! The SLO observer resynchronises with the real wall clock at every event
//! (as it does in the runtime), so its buckets are those of the real minutes
//! the run takes; its memory is fixed, so that does not change the figures.

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

use chirp::config::{DeliveryObjective, LatencyObjective, Slo};
use chirp::history::History;
use chirp::outcome::{LaneId, Observer};
use chirp::probe::ledger::{Events, Ledger};
use chirp::slo::SloObserver;
use chirp::stats::LatencyStats;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

const INTERVAL: Duration = Duration::from_millis(100);
const DEADLINE: Duration = Duration::from_secs(5);
const THRESHOLD: Duration = Duration::from_millis(3);
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
/// Normal traffic, then the stall, then normal traffic again (seconds; the
/// last is 2 minutes unless `--after MINUTES`).
const NORMAL_S: u64 = 300;
const STALL_S: u64 = 30;
const LANE: LaneId = LaneId {
    id: 0,
    partition: None,
};

/// Live heap bytes now.
fn live() -> u64 {
    dhat::HeapStats::get().curr_bytes as u64
}

/// Live bytes that `f` leaves behind (allocated and not freed).
fn kept<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let before = live();
    let t = f();
    (t, live().saturating_sub(before))
}

/// Live bytes that `f` frees.
fn freed(f: impl FnOnce()) -> u64 {
    let before = live();
    f();
    before.saturating_sub(live())
}

/// A value drawn uniformly from `lo..=hi` µs, moved towards the deadline by
/// `stall` (0: normal, 1: at the deadline).
fn latency(rng: &mut StdRng, lo: u64, hi: u64, stall: f64) -> Duration {
    let normal = rng.gen_range(lo..=hi) as f64;
    let deadline = DEADLINE.as_micros() as f64;
    Duration::from_micros((normal + stall * (deadline - normal)) as u64)
}

struct Row {
    name: &'static str,
    built: u64,
    after: u64,
}

async fn run(n: usize, after_s: u64) -> Vec<Row> {
    let slo = Slo {
        latency: Some(LatencyObjective {
            threshold: THRESHOLD,
            objective: 99.0,
        }),
        delivery: Some(DeliveryObjective { objective: 99.9 }),
        slice: chirp::config::DEFAULT_SLICE,
        period: chirp::config::DEFAULT_PERIOD,
    };
    let start = Instant::now();
    // The bench's own vectors first, so the components' figures leave them out.
    let mut ledgers: Vec<Arc<Mutex<Ledger>>> = Vec::with_capacity(n);
    let mut slos: Vec<Arc<SloObserver>> = Vec::with_capacity(n);
    let mut histories: Vec<Arc<History>> = Vec::with_capacity(n);
    let baseline = live();
    let ((), ledger_built) = kept(|| {
        for _ in 0..n {
            ledgers.push(Arc::new(Mutex::new(Ledger::new(
                start,
                INTERVAL,
                DEADLINE,
                &[THRESHOLD],
            ))));
        }
    });
    let ((), slo_built) = kept(|| {
        for _ in 0..n {
            slos.push(SloObserver::new(&slo, INTERVAL).expect("the SLO has objectives"));
        }
    });
    let ((), history_built) = kept(|| {
        for _ in 0..n {
            histories.push(Arc::new(History::new()));
        }
    });
    let whole_built = live().saturating_sub(baseline);
    // The three measures as a new ledger holds them (the lag's bounds are
    // the ledger's business: read them from one).
    let stats_built = n as u64 * {
        let l = ledgers[0].lock().expect("unpoisoned");
        let bounds = |s: &LatencyStats| -> Vec<Duration> {
            s.buckets()
                .counts
                .iter()
                .filter(|(b, _)| *b < f64::MAX)
                .map(|(b, _)| Duration::from_micros((b * 1e6).round() as u64))
                .collect()
        };
        let (e2e, lag) = (bounds(&l.e2e), bounds(&l.lag));
        kept(|| LatencyStats::new(DEADLINE, &e2e, start)).1
            + kept(|| LatencyStats::new(DEADLINE, &[], start)).1
            + kept(|| LatencyStats::new(DEADLINE, &lag, start)).1
    };

    traffic(&ledgers, &slos, &histories, start, after_s).await;
    // Everything live now that was not before the probes were built.
    let whole = live().saturating_sub(baseline);

    // Swap each measure for a fresh one built beforehand: what the swap
    // frees is what the measure held after the traffic.
    let mut fresh: Vec<LatencyStats> = Vec::with_capacity(3 * n);
    let ((), fresh_bytes) = kept(|| {
        for _ in 0..3 * n {
            fresh.push(LatencyStats::new(DEADLINE, &[], Instant::now()));
        }
    });
    let mut measure = |pick: fn(&mut Ledger) -> &mut LatencyStats| {
        freed(|| {
            for l in &ledgers {
                let mut l = l.lock().expect("unpoisoned");
                let new = fresh.pop().expect("3 per probe");
                drop(std::mem::replace(pick(&mut l), new));
            }
        })
    };
    let e2e = measure(|l| &mut l.e2e);
    let publish = measure(|l| &mut l.publish);
    let lag = measure(|l| &mut l.lag);
    // The ledgers now hold the fresh measures: the rest is what they free less those.
    let ledger_rest = freed(|| ledgers.drain(..).for_each(drop)).saturating_sub(fresh_bytes);
    let slo_after = freed(|| slos.drain(..).for_each(drop));
    let history_after = freed(|| histories.drain(..).for_each(drop));

    let per = |b: u64| b / n as u64;
    vec![
        Row {
            name: "ledger: e2e + publish + lag stats",
            built: per(stats_built),
            after: per(e2e + publish + lag),
        },
        Row {
            name: "  e2e LatencyStats",
            built: 0,
            after: per(e2e),
        },
        Row {
            name: "  publish LatencyStats",
            built: 0,
            after: per(publish),
        },
        Row {
            name: "  lag LatencyStats",
            built: 0,
            after: per(lag),
        },
        Row {
            name: "ledger: the rest (ring, Arc<Mutex<_>>)",
            built: per(ledger_built.saturating_sub(stats_built)),
            after: per(ledger_rest),
        },
        Row {
            name: "SLO observer (30-day period)",
            built: per(slo_built),
            after: per(slo_after),
        },
        Row {
            name: "history",
            built: per(history_built),
            after: per(history_after),
        },
        Row {
            name: "total (sum of the above)",
            built: per(ledger_built + slo_built + history_built),
            after: per(e2e + publish + lag + ledger_rest + slo_after + history_after),
        },
        Row {
            name: "live heap / N (cross-check)",
            built: per(whole_built),
            after: per(whole),
        },
    ]
}

/// Drives every probe through the traffic; returns when it is over and
/// everything the bench itself allocated for it is freed.
async fn traffic(
    ledgers: &[Arc<Mutex<Ledger>>],
    slos: &[Arc<SloObserver>],
    histories: &[Arc<History>],
    start: Instant,
    after_s: u64,
) {
    let mut rng = StdRng::seed_from_u64(13);
    let mut events = Events::new();
    // Catches to come: (when, probe, sequence).
    let mut catches: BinaryHeap<Reverse<(Instant, usize, u64)>> = BinaryHeap::new();
    let ticks = (NORMAL_S + STALL_S + after_s) * 1000 / INTERVAL.as_millis() as u64;
    let stall_ticks = STALL_S * 1000 / INTERVAL.as_millis() as u64;
    let stall_from = NORMAL_S * 1000 / INTERVAL.as_millis() as u64;
    let mut next_scrape = start + SCRAPE_EVERY;
    let tell = |i: usize, events: &mut Events| {
        slos[i].observe(LANE, events);
        histories[i].observe(LANE, events);
        events.clear();
    };
    for tick in 0..ticks {
        let slot = start + INTERVAL * tick as u32;
        let now = Instant::now();
        if slot > now {
            tokio::time::advance(slot - now).await;
        }
        while let Some(Reverse((at, i, seq))) = catches.peek().copied() {
            if at > slot {
                break;
            }
            catches.pop();
            ledgers[i]
                .lock()
                .expect("unpoisoned")
                .caught(seq, at, &mut events);
            tell(i, &mut events);
        }
        // Ramps from 0 to 1 over the stall, the last canary at the deadline.
        let stall = match tick.checked_sub(stall_from) {
            Some(k) if k < stall_ticks => (k + 1) as f64 / stall_ticks as f64,
            _ => 0.0,
        };
        for (i, ledger) in ledgers.iter().enumerate() {
            let lag = latency(&mut rng, 0, 250, stall);
            let publish = latency(&mut rng, 50, 500, stall);
            let e2e = latency(&mut rng, 100, 5000, stall).max(lag + publish);
            let mut l = ledger.lock().expect("unpoisoned");
            l.expire(slot, &mut events);
            let seq = l.send(slot + lag, &mut events);
            l.published(seq, publish, slot + lag + publish, &mut events);
            drop(l);
            tell(i, &mut events);
            catches.push(Reverse((slot + e2e, i, seq)));
        }
        if slot >= next_scrape {
            next_scrape += SCRAPE_EVERY;
            for i in 0..ledgers.len() {
                let snapshot = ledgers[i].lock().expect("unpoisoned").snapshot(slot);
                let slo = slos[i].state(slot, 1);
                let view = histories[i].view(slot);
                std::hint::black_box((snapshot, slo, view));
            }
        }
    }
    // Whatever is still in flight resolves.
    let end = start + INTERVAL * ticks as u32 + DEADLINE;
    tokio::time::advance(end - Instant::now()).await;
    for (i, ledger) in ledgers.iter().enumerate() {
        ledger.lock().expect("unpoisoned").expire(end, &mut events);
        tell(i, &mut events);
    }
}

fn main() {
    // `cargo bench` passes `--bench`; only the options below are read.
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let save = arg("--save").map(std::path::PathBuf::from);
    let number = |name: &str| arg(name).map(|v| v.parse::<u64>().expect("a number"));
    let sizes: Vec<usize> = match number("--probes") {
        Some(n) => vec![n as usize],
        None => vec![100, 1000],
    };
    let after_s = number("--after").map_or(120, |m| m * 60);
    let _profiler = match &save {
        Some(file) => dhat::Profiler::builder().file_name(file).build(),
        None => dhat::Profiler::builder().testing().build(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let runs: Vec<Vec<Row>> = rt.block_on(async {
        let mut runs = Vec::new();
        for n in &sizes {
            runs.push(run(*n, after_s).await);
        }
        runs
    });
    println!(
        "Heap per probe, bytes (dhat), one lane, interval {}, deadline {}, 30-day SLO; traffic {} normal, {} stall, {} normal:",
        humantime::format_duration(INTERVAL),
        humantime::format_duration(DEADLINE),
        humantime::format_duration(Duration::from_secs(NORMAL_S)),
        humantime::format_duration(Duration::from_secs(STALL_S)),
        humantime::format_duration(Duration::from_secs(after_s)),
    );
    print!("{:<42}", "");
    for n in &sizes {
        print!(" {:>10} {:>10}", format!("N={n} built"), "traffic");
    }
    println!();
    for (r, row) in runs[0].iter().enumerate() {
        print!("{:<42}", row.name);
        for run in &runs {
            let built = match run[r].built {
                0 => String::new(),
                b => b.to_string(),
            };
            print!(" {:>10} {:>10}", built, run[r].after);
        }
        println!();
    }
}
