use super::*;
use crate::history::HistoryView;
use crate::history::MINUTES;
use crate::probe::PublishFailure;
use crate::slo::{SliState, Totals};

fn tally(sent: u64, delivered: u64, lost: u64, publish_failed: u64) -> Tally {
    Tally {
        sent,
        delivered,
        lost,
        publish_failed,
        dead_lettered: 0,
    }
}

/// A probe every rule calls healthy: 1 s interval, 30 s deadline, all delivered.
fn healthy() -> Facts {
    let now = Instant::now();
    let minute = tally(60, 60, 0, 0);
    Facts {
        name: "orders".into(),
        inject: "nats",
        catch: "nats",
        interval: Duration::from_secs(1),
        deadline: Duration::from_secs(30),
        up: true,
        counts: Counts {
            sent: 601,
            delivered: 600,
            in_flight: 1,
            ..Counts::default()
        },
        p99_minute: Some(Duration::from_millis(12)),
        delivered_minute: 60,
        threshold: Some(Duration::from_millis(500)),
        slo: None,
        history: HistoryView {
            last_minute: minute,
            last_15_minutes: tally(600, 600, 0, 0),
            p99_15_minutes: Some(Duration::from_millis(13)),
            minutes: (0..MINUTES)
                .map(|i| MinuteView {
                    start: now,
                    tally: if i + 10 >= MINUTES {
                        minute
                    } else {
                        Tally::default()
                    },
                    p99: (i + 10 >= MINUTES).then(|| Duration::from_millis(10 + i as u64 % 3)),
                })
                .collect(),
        },
        last_catch: Some(now),
        silent_for: Duration::from_millis(300),
        last_failure: None,
    }
}

fn slo_with_burn(window: &'static str, rate: f64) -> SloState {
    SloState {
        slis: vec![SliState {
            sli: "delivery",
            objective: 0.999,
            compliance: 0.99,
            error_budget_canaries: 2592.0,
            error_budget_spent: 72,
            error_budget_remaining: 1.0 - 72.0 / 2592.0,
            burn_rates: ["5m", "30m", "1h", "6h", "1d", "3d"]
                .iter()
                .map(|w| (*w, if *w == window { rate } else { 0.0 }))
                .collect(),
        }],
        totals: Totals::default(),
        slice_compliance: 1.0,
        slice_seconds: 60,
        period_seconds: 30 * 86_400,
        recent_slices: Vec::new(),
    }
}

fn state(f: &Facts) -> State {
    assess(f).0
}

#[test]
fn a_delivering_probe_is_healthy() {
    assert_eq!(assess(&healthy()), (State::Healthy, String::new()));
}

#[test]
fn disconnected_clients_are_down_whatever_the_numbers() {
    let mut f = healthy();
    f.up = false;
    let (s, why) = assess(&f);
    assert_eq!(s, State::Down);
    assert!(why.contains("disconnected"), "{why}");
    // Even before anything resolved.
    f.counts = Counts::default();
    f.history.last_minute = Tally::default();
    assert_eq!(state(&f), State::Down);
}

#[test]
fn silence_is_down_past_the_deadline_or_ten_intervals() {
    let mut f = healthy();
    f.interval = Duration::from_secs(5);
    // The limit is max(30 s, 10 × 5 s) = 50 s.
    assert_eq!(
        silence_limit(f.interval, f.deadline),
        Duration::from_secs(50)
    );
    f.silent_for = Duration::from_secs(50);
    assert_eq!(state(&f), State::Healthy);
    f.silent_for = Duration::from_secs(51);
    let (s, why) = assess(&f);
    assert_eq!(s, State::Down);
    assert_eq!(why, "nothing caught for 51s (limit 50s)");
    // With a short interval the deadline is the limit.
    f.interval = Duration::from_millis(100);
    f.silent_for = Duration::from_secs(31);
    assert_eq!(state(&f), State::Down);
    // Nothing ever caught: counted from the start.
    f.last_catch = None;
    assert!(assess(&f).1.contains("since start"));
}

#[test]
fn a_minute_of_failures_without_a_delivery_is_down() {
    let mut f = healthy();
    f.history.last_minute = tally(60, 0, 10, 50);
    let (s, why) = assess(&f);
    assert_eq!(s, State::Down);
    assert!(why.contains("none of the 60 canaries"), "{why}");
    // One delivery among them: degraded, not down.
    f.history.last_minute = tally(60, 1, 10, 49);
    assert_eq!(state(&f), State::Degraded);
    // Sent but nothing resolved yet in the minute (a long interval): no verdict from it.
    f.history.last_minute = tally(1, 0, 0, 0);
    assert_eq!(state(&f), State::Healthy);
}

#[test]
fn nothing_resolved_yet_is_no_data() {
    let mut f = healthy();
    f.counts = Counts {
        sent: 3,
        in_flight: 3,
        ..Counts::default()
    };
    f.history.last_minute = tally(3, 0, 0, 0);
    f.last_catch = None;
    f.silent_for = Duration::from_secs(2);
    assert_eq!(
        assess(&f),
        (State::NoData, "no canary has resolved yet".into())
    );
}

#[test]
fn loss_slow_p99_or_a_fast_burn_is_degraded() {
    let mut f = healthy();
    f.history.last_minute = tally(60, 59, 1, 0);
    let (s, why) = assess(&f);
    assert_eq!(s, State::Degraded);
    assert_eq!(
        why,
        "1 of 60 lost, refused or dead-lettered in the last minute"
    );

    let mut f = healthy();
    f.p99_minute = Some(Duration::from_millis(600));
    let (s, why) = assess(&f);
    assert_eq!(s, State::Degraded);
    assert_eq!(why, "p99 600ms over the 500ms objective");
    // Without a latency objective, a slow p99 is not a state.
    f.threshold = None;
    assert_eq!(state(&f), State::Healthy);

    let mut f = healthy();
    f.slo = Some(slo_with_burn("1h", 2.5));
    let (s, why) = assess(&f);
    assert_eq!(s, State::Degraded);
    assert_eq!(why, "delivery budget burning 2.5× over 1h");
    // A burn of exactly 1 spends the budget as planned; a fast 5m burn alone is not 1h.
    f.slo = Some(slo_with_burn("1h", 1.0));
    assert_eq!(state(&f), State::Healthy);
    f.slo = Some(slo_with_burn("5m", 50.0));
    assert_eq!(state(&f), State::Healthy);

    // Several reasons at once are all given.
    let mut f = healthy();
    f.history.last_minute = tally(60, 58, 1, 1);
    f.p99_minute = Some(Duration::from_secs(1));
    assert_eq!(
        assess(&f).1,
        "2 of 60 lost, refused or dead-lettered in the last minute; p99 1.000s over the 500ms objective"
    );
}

#[test]
fn numbers_read_as_people_expect() {
    assert_eq!(budget_percent(1.0 - 72.0 / 2592.0), "97.2 %");
    assert_eq!(budget_percent(1.0), "100.0 %");
    // Rounded down: one canary spent never shows as 100 %.
    assert_eq!(budget_percent(1.0 - 1.0 / 2592.0), "99.9 %");
    assert_eq!(budget_percent(-0.5), "-50.0 %");
    assert_eq!(percent(0.0), "0 %");
    assert_eq!(percent(1.0 / 60.0), "1.67 %");
    assert_eq!(percent(0.5), "50 %");
    assert_eq!(percent(1.0), "100 %");
    assert_eq!(percent(0.00001), "<0.01 %");
    assert_eq!(percent(0.99999), ">99.99 %");
    assert_eq!(span(Duration::from_secs(42)), "42s");
    assert_eq!(span(Duration::from_secs(200)), "3m 20s");
    assert_eq!(span(Duration::from_secs(7500)), "2h 5m");
    let b = budgets(&Some(slo_with_burn("1h", 0.0)));
    assert_eq!(b[0].remaining, "97.2 %");
    assert_eq!(b[0].detail, "72 of 2,592 canaries");
}

#[test]
fn the_sparkline_marks_loss_and_p99_per_minute() {
    let mut f = healthy();
    let last = MINUTES - 1;
    f.history.minutes[last - 1].tally = tally(60, 45, 15, 0);
    let s = spark(&f.history.minutes, f.threshold);
    assert_eq!(s.width, MINUTES as u32 * SPARK_STEP);
    assert_eq!(s.bars.len(), 1);
    assert_eq!(s.bars[0].x, (last as u32 - 1) * SPARK_STEP);
    assert!(s.bars[0]
        .title
        .ends_with("15 of 60 lost, refused or dead-lettered (25 %)"));
    // Nine minutes without loss get a tick each; the 50 without data nothing.
    assert_eq!(s.ok.matches('M').count(), 9);
    assert!(s.p99.starts_with('M') && s.p99.contains('L'), "{}", s.p99);
    assert!(
        s.label.contains("10 minutes with data, 1 with loss"),
        "{}",
        s.label
    );
    // The 500 ms threshold is far above the 12 ms scale: no line for it.
    assert!(s.threshold.is_empty());
}

#[test]
fn what_a_probe_or_an_error_says_is_escaped() {
    let mut f = healthy();
    f.name = "<script>alert(1)</script>".into();
    f.up = false;
    f.last_failure = Some(PublishFailure {
        kind: FailureKind::Unavailable,
        error: "broker said <script>steal()</script> & \"left\"".into(),
        at: Instant::now(),
    });
    let now = Instant::now();
    let html = page("prod <b>eu</b>", vec![row(&f, now)], &[])
        .render()
        .unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("<script>steal"), "{html}");
    assert!(!html.contains("<b>eu</b>"), "{html}");
    // askama writes `<` and `>` as numeric references.
    assert!(
        html.contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{html}"
    );
    assert!(
        html.contains("broker said &#60;script&#62;steal()&#60;/script&#62; &#38; &#34;left&#34;"),
        "{html}"
    );
    // The page's own refresh script is the only script.
    assert_eq!(html.matches("<script").count(), 1);
    // The row says its state in words and in its data attribute.
    assert!(html.contains(r#"data-state="down""#), "{html}");
    assert!(html.contains("✕</span> down</span>"), "{html}");
    assert!(html.contains("Needs attention"), "{html}");
    // The title counts the probes that are down.
    assert!(html.contains("· 1 down</title>"), "{html}");
}

#[test]
fn the_page_works_without_script_and_without_probes() {
    let html = page("test", Vec::new(), &[]).render().unwrap();
    assert!(html.contains(r#"<noscript><meta http-equiv="refresh" content="5"></noscript>"#));
    assert!(html.contains("No probes are configured."));
    assert!(html.contains(r#"id="legend""#));
}

/// 60 canaries in the last minute cannot resolve a p99: the cell says it is
/// their maximum; 600 over 15 minutes can, and that cell says nothing more.
#[test]
fn a_p99_from_too_few_canaries_says_it_is_the_maximum() {
    let f = healthy();
    let r = row(&f, Instant::now());
    assert_eq!(r.p99_minute.detail, "max of 60");
    assert!(
        r.p99_minute
            .title
            .contains("too few to resolve a p99 (it needs 100)"),
        "{}",
        r.p99_minute.title
    );
    assert_eq!(r.p99_15m.detail, "");
    assert!(!r.p99_15m.title.contains("too few"));
    let mut f = healthy();
    f.delivered_minute = 100;
    assert_eq!(row(&f, Instant::now()).p99_minute.detail, "");
}
