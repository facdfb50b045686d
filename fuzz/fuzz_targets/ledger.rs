//! The ledger, driven by any sequence of sends, acknowledgements, refusals,
//! catches (of any sequence number, at any time) and expiries: never a
//! panic, and after every step each sent canary is in exactly one outcome
//! (`sent = delivered + lost + publish_failed + in_flight`), resolutions
//! only grow, and no canary resolves twice.
#![no_main]

use arbitrary::Arbitrary;
use chirp::outcome::{FailureKind, LedgerEvent};
use chirp::probe::ledger::Ledger;
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Arbitrary, Debug)]
enum Step {
    Advance(u32),
    Send,
    Published { back: u16, micros: u32 },
    Failed { back: u16 },
    Caught { seq: u64 },
    CaughtRecent { back: u16 },
    Expire,
    Snapshot,
}

#[derive(Arbitrary, Debug)]
struct Run {
    interval_ms: u16,
    deadline_ms: u32,
    steps: Vec<Step>,
}

fuzz_target!(|run: Run| {
    let interval = Duration::from_millis(u64::from(run.interval_ms.max(1)));
    let deadline = Duration::from_millis(u64::from(run.deadline_ms % 3_600_000).max(1));
    let start = Instant::now();
    let mut now = start;
    let mut ledger = Ledger::new(start, interval, deadline, &[deadline / 2]);
    ledger.start_schedule(start);
    let mut resolved = HashSet::new();
    let mut events = Vec::new();
    let mut last = ledger.counts();
    for step in run.steps.iter().take(2000) {
        let next = ledger.next_slot().0;
        let recent = |back: u16| next.checked_sub(u64::from(back) + 1);
        match *step {
            Step::Advance(ms) => now += Duration::from_micros(u64::from(ms)),
            Step::Send => {
                ledger.send(now, &mut events);
            }
            Step::Published { back, micros } => {
                if let Some(seq) = recent(back) {
                    ledger.published(seq, Duration::from_micros(u64::from(micros)), now, &mut events);
                }
            }
            Step::Failed { back } => {
                if let Some(seq) = recent(back) {
                    ledger.publish_failed(seq, FailureKind::Unavailable, now, &mut events);
                }
            }
            Step::Caught { seq } => {
                ledger.caught(seq, now, &mut events);
            }
            Step::CaughtRecent { back } => {
                if let Some(seq) = recent(back) {
                    ledger.caught(seq, now, &mut events);
                }
            }
            Step::Expire => {
                ledger.expire(now, &mut events);
            }
            Step::Snapshot => {
                let _ = ledger.snapshot(now);
            }
        }
        for e in events.drain(..) {
            if let LedgerEvent::Resolved { seq, .. } = e {
                assert!(resolved.insert(seq), "canary {seq} resolved twice");
            }
        }
        let c = ledger.counts();
        assert_eq!(c.sent, c.delivered + c.lost + c.publish_failed + c.in_flight, "{c:?}");
        assert!(c.delivered >= last.delivered && c.lost >= last.lost && c.publish_failed >= last.publish_failed);
        last = c;
    }
});
