//! The status page at `/`: one row per probe with its state (healthy,
//! degraded, down, no data: colour and text), loss and p99 over the last
//! minute and 15 minutes, error budget left, the last catch, the last publish
//! error and a sparkline of the last hour; counts since start in a
//! collapsible block. Rendered from `src/server/templates/status.html`
//! (askama: checked at compile time, every value HTML-escaped).

use crate::canary;
use crate::history::{MinuteView, Tally, QUANTILE_ERROR};
use crate::outcome::{Counts, FailureKind};
use crate::report::{self, ProbeReport, Watched};
use crate::slo::SloState;
use crate::stats::Summary;
use askama::Template;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

pub use state::{assess, silence_limit, Facts, State, SILENT_INTERVALS};

/// How often the page refreshes itself (by script, or `<meta refresh>` without one).
pub const REFRESH_SECONDS: u64 = 5;
/// A value with the detail beside it and a tooltip.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub text: String,
    pub detail: String,
    pub title: String,
    /// Shown as bad (red).
    pub bad: bool,
}

/// One SLI's error budget.
#[derive(Debug, Clone)]
pub struct Budget {
    pub sli: &'static str,
    pub remaining: String,
    pub detail: String,
    pub title: String,
    /// Less than a quarter left.
    pub low: bool,
}

/// The last publish failure, as shown.
#[derive(Debug, Clone)]
pub struct ErrorView {
    pub kind: &'static str,
    pub message: String,
    pub ago: String,
    pub at: String,
}

/// One loss bar of the sparkline (a minute in which canaries failed).
#[derive(Debug, Clone)]
pub struct Bar {
    pub x: u32,
    pub y: String,
    pub height: String,
    pub title: String,
}

/// The last hour, drawn: loss per minute as red bars (a green tick for a
/// minute without loss, nothing for a minute without data) and p99 per
/// minute as a line.
#[derive(Debug, Clone)]
pub struct Spark {
    pub width: u32,
    pub height: u32,
    /// What the picture shows, for screen readers and as its tooltip.
    pub label: String,
    pub bars: Vec<Bar>,
    /// SVG path data: a tick per minute without loss.
    pub ok: String,
    /// SVG path data: p99 per minute (gaps where nothing was delivered).
    pub p99: String,
    /// SVG path data: the latency threshold, when it is within the scale.
    pub threshold: String,
}

/// One probe's row.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub route: String,
    pub interval: String,
    pub deadline: String,
    pub state: State,
    pub reason: String,
    pub loss_minute: Cell,
    pub loss_15m: Cell,
    pub p99_minute: Cell,
    pub p99_15m: Cell,
    pub budget: Vec<Budget>,
    pub last_catch: Cell,
    pub error: Option<ErrorView>,
    pub spark: Spark,
}

impl Row {
    /// Loss and p99, over the last minute and 15 minutes, in column order.
    pub fn cells(&self) -> [&Cell; 4] {
        [
            &self.loss_minute,
            &self.loss_15m,
            &self.p99_minute,
            &self.p99_15m,
        ]
    }
}

/// One line of the "since start" table (a probe, or one of its partitions).
#[derive(Debug, Clone)]
pub struct TotalsRow {
    pub name: String,
    pub partition: bool,
    pub numbers: Vec<String>,
    pub refused_by_kind: String,
}

/// The page.
#[derive(Template)]
#[template(path = "status.html", config = "src/server/templates/askama.toml")]
pub struct Page {
    pub title: String,
    pub environment: String,
    pub version: &'static str,
    pub generated: String,
    pub refresh_seconds: u64,
    pub rows: Vec<Row>,
    /// (state, probes in it), worst first, states with none left out.
    pub summary: Vec<(State, usize)>,
    /// Down and degraded probes, worst first: (row id, name, state).
    pub attention: Vec<(String, String, State)>,
    pub totals: Vec<TotalsRow>,
    pub slo_text: String,
    pub silent_intervals: u32,
    pub quantile_error: String,
}

/// `0.0123` s → `12.3ms`.
fn seconds(d: Duration) -> String {
    report::human_seconds(d.as_secs_f64())
}

/// A span of time for people: `45s`, `3m 20s`, `2h 5m`, `3d 4h`.
pub fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

fn ago(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        "just now".into()
    } else {
        format!("{} ago", span(d))
    }
}

/// The wall-clock time of `at`, to the second, UTC.
fn wall(at: Instant) -> String {
    humantime::format_rfc3339_seconds(canary::wall(at)).to_string()
}

/// `0.0167` → `1.67 %`; never rounds a loss to 0 or a partial loss to 100.
pub fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p <= 0.0 {
        "0 %".into()
    } else if p < 0.01 {
        "<0.01 %".into()
    } else if p >= 100.0 {
        "100 %".into()
    } else if p > 99.99 {
        ">99.99 %".into()
    } else {
        let t = format!("{p:.2}");
        format!("{} %", t.trim_end_matches('0').trim_end_matches('.'))
    }
}

fn loss_cell(t: &Tally, span: &str) -> Cell {
    let Some(loss) = t.loss() else {
        return Cell {
            text: "–".into(),
            detail: String::new(),
            title: format!("no canary resolved in the {span}"),
            bad: false,
        };
    };
    Cell {
        text: percent(loss),
        detail: format!(
            "{} of {}",
            report::thousands(t.failed()),
            report::thousands(t.resolved())
        ),
        title: format!(
            "{} lost, {} refused by the producer and {} dead-lettered by the pipeline, of {} resolved in the {span}",
            report::thousands(t.lost),
            report::thousands(t.publish_failed),
            report::thousands(t.dead_lettered),
            report::thousands(t.resolved())
        ),
        bad: t.failed() > 0,
    }
}

/// A p99 cell; from fewer than 100 canaries the p99 is their maximum, and
/// the cell says "max of N" rather than pass it off as a percentile.
fn p99_cell(p99: Option<Duration>, threshold: Option<Duration>, what: &str, from: u64) -> Cell {
    let Some(p) = p99 else {
        return Cell {
            text: "–".into(),
            detail: String::new(),
            title: format!("nothing delivered in the {what}"),
            bad: false,
        };
    };
    let over = threshold.is_some_and(|t| p > t);
    let need = crate::stats::needs("p99");
    let resolved = from >= need;
    let mut detail = Vec::new();
    if let (Some(t), true) = (threshold, over) {
        detail.push(format!("over {}", seconds(t)));
    }
    if !resolved {
        detail.push(format!("max of {from}"));
    }
    let mut title = match threshold {
        Some(t) => format!("p99 over the {what}; objective threshold {}", seconds(t)),
        None => format!("p99 over the {what}"),
    };
    if !resolved {
        title.push_str(&format!(
            "; only {from} canaries delivered, too few to resolve a p99 (it needs {need}): this is their maximum"
        ));
    }
    Cell {
        text: seconds(p),
        detail: detail.join(", "),
        title,
        bad: over,
    }
}

/// Budget remaining to one decimal, rounded down: never more than there is.
fn budget_percent(remaining: f64) -> String {
    let tenths = (remaining * 1000.0 + 1e-6).floor() / 10.0;
    format!("{tenths:.1} %")
}

fn budgets(slo: &Option<SloState>) -> Vec<Budget> {
    let Some(slo) = slo else { return Vec::new() };
    let period = humantime::format_duration(Duration::from_secs(slo.period_seconds));
    slo.slis
        .iter()
        .map(|s| {
            let allowance = report::thousands(s.error_budget_canaries.floor() as u64);
            Budget {
                sli: s.sli,
                remaining: budget_percent(s.error_budget_remaining),
                detail: format!(
                    "{} of {allowance} canaries",
                    report::thousands(s.error_budget_spent)
                ),
                title: format!(
                    "{allowance} canaries may fail the {} objective ({} %) in {period}; {} have, in this process",
                    s.sli,
                    s.objective * 100.0,
                    report::thousands(s.error_budget_spent)
                ),
                low: s.error_budget_remaining < 0.25,
            }
        })
        .collect()
}

const SPARK_STEP: u32 = 3;
const SPARK_HEIGHT: u32 = 32;

fn spark(minutes: &[MinuteView], threshold: Option<Duration>) -> Spark {
    let h = f64::from(SPARK_HEIGHT);
    let top = 2.0;
    let max_p99 = minutes
        .iter()
        .filter_map(|m| m.p99)
        .max()
        .unwrap_or_default();
    let min_p99 = minutes.iter().filter_map(|m| m.p99).min();
    let scale = max_p99.as_secs_f64();
    let y_of = |d: Duration| h - 1.0 - (h - 1.0 - top) * d.as_secs_f64() / scale;
    let mut bars = Vec::new();
    let mut ok = String::new();
    let mut p99 = String::new();
    let mut pen_down = false;
    let (mut with_data, mut with_loss, mut worst) = (0, 0, None::<(f64, usize)>);
    for (i, m) in minutes.iter().enumerate() {
        let x = i as u32 * SPARK_STEP;
        let t = &m.tally;
        match t.loss() {
            None => {}
            Some(_) if t.failed() == 0 => {
                with_data += 1;
                ok.push_str(&format!("M{x} {:.1}h2", h - 0.5));
            }
            Some(loss) => {
                with_data += 1;
                with_loss += 1;
                if worst.is_none_or(|(w, _)| loss > w) {
                    worst = Some((loss, i));
                }
                let bar = (loss * (h - top)).max(2.0);
                bars.push(Bar {
                    x,
                    y: format!("{:.1}", h - bar),
                    height: format!("{bar:.1}"),
                    title: format!(
                        "{}: {} of {} lost, refused or dead-lettered ({})",
                        minute_label(m, i + 1 == minutes.len()),
                        report::thousands(t.failed()),
                        report::thousands(t.resolved()),
                        percent(loss)
                    ),
                });
            }
        }
        match m.p99 {
            Some(p) if scale > 0.0 => {
                // A lone point is a dot: a zero-length segment with round caps.
                let (cmd, dot) = if pen_down { ('L', "") } else { ('M', "h0") };
                p99.push_str(&format!(
                    "{cmd}{:.1} {:.1}{dot}",
                    f64::from(x) + 1.0,
                    y_of(p)
                ));
                pen_down = true;
            }
            _ => pen_down = false,
        }
    }
    let threshold_path = match threshold {
        Some(t) if scale > 0.0 && t <= max_p99 => {
            format!("M0 {:.1}H{}", y_of(t), minutes.len() as u32 * SPARK_STEP)
        }
        _ => String::new(),
    };
    let mut label = format!(
        "Last hour, one mark per minute: {with_data} minutes with data, {with_loss} with loss"
    );
    if let Some((loss, i)) = worst {
        label.push_str(&format!(
            " (worst {}: {})",
            minute_label(&minutes[i], i + 1 == minutes.len()),
            percent(loss)
        ));
    }
    if let Some(min) = min_p99 {
        label.push_str(&format!(
            "; p99 per minute from {} to {}",
            seconds(min),
            seconds(max_p99)
        ));
    }
    label.push('.');
    Spark {
        width: minutes.len() as u32 * SPARK_STEP,
        height: SPARK_HEIGHT,
        label,
        bars,
        ok,
        p99,
        threshold: threshold_path,
    }
}

/// `07:31 UTC`, or "this minute" for the current one.
fn minute_label(m: &MinuteView, current: bool) -> String {
    if current {
        return "this minute so far".into();
    }
    let t = wall(m.start);
    // RFC 3339: 2026-11-27T07:31:00Z → 07:31 UTC
    format!("{} UTC", t.get(11..16).unwrap_or(&t))
}

/// The row of a probe.
pub fn row(f: &Facts, now: Instant) -> Row {
    let (state, reason) = assess(f);
    let h = &f.history;
    Row {
        id: format!("probe-{}", f.name),
        name: f.name.clone(),
        route: format!("{} → {}", f.inject, f.catch),
        interval: humantime::format_duration(f.interval).to_string(),
        deadline: humantime::format_duration(f.deadline).to_string(),
        state,
        reason,
        loss_minute: loss_cell(&h.last_minute, "last minute"),
        loss_15m: loss_cell(&h.last_15_minutes, "last 15 minutes"),
        p99_minute: p99_cell(f.p99_minute, f.threshold, "last minute", f.delivered_minute),
        p99_15m: p99_cell(
            h.p99_15_minutes,
            f.threshold,
            "last 15 minutes",
            h.last_15_minutes.delivered,
        ),
        budget: budgets(&f.slo),
        last_catch: match f.last_catch {
            Some(at) => Cell {
                text: ago(now.saturating_duration_since(at)),
                detail: String::new(),
                title: wall(at),
                bad: f.silent_for > silence_limit(f.interval, f.deadline),
            },
            None => Cell {
                text: "never".into(),
                detail: String::new(),
                title: "no canary caught since start".into(),
                bad: f.silent_for > silence_limit(f.interval, f.deadline),
            },
        },
        error: f.last_failure.as_ref().map(|e| ErrorView {
            kind: e.kind.as_str(),
            message: e.error.clone(),
            ago: ago(now.saturating_duration_since(e.at)),
            at: wall(e.at),
        }),
        spark: spark(&h.minutes, f.threshold),
    }
}

fn summary_cells(s: &Summary) -> [String; 3] {
    let cell = |v: f64| {
        if s.count == 0 {
            "–".to_owned()
        } else {
            report::human_seconds(v)
        }
    };
    let mut p99 = cell(s.p99);
    if s.count > 0 && !s.resolves("p99") {
        // Fewer than 100 delivered: this "p99" is the maximum (see the legend).
        p99.push('*');
    }
    [cell(s.p50), p99, cell(s.max)]
}

fn totals_row(name: String, partition: bool, c: &Counts, latency: &Summary) -> TotalsRow {
    let n = report::thousands;
    let [p50, p99, max] = summary_cells(latency);
    TotalsRow {
        name,
        partition,
        numbers: vec![
            n(c.sent),
            n(c.delivered),
            n(c.dead_lettered),
            n(c.lost),
            n(c.publish_failed),
            n(c.in_flight),
            n(c.duplicate),
            n(c.late),
            n(c.reordered),
            n(c.foreign),
            n(c.rejected),
            n(c.unrelated),
            p50,
            p99,
            max,
        ],
        refused_by_kind: FailureKind::ALL
            .iter()
            .filter(|k| c.failed(**k) > 0)
            .map(|k| format!("{} {}", k.as_str(), n(c.failed(*k))))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The page for `rows` (with `reports` for the since-start block), at `now`.
pub fn page(environment: &str, rows: Vec<Row>, reports: &[ProbeReport]) -> Page {
    let mut summary: Vec<(State, usize)> = State::ALL
        .iter()
        .map(|s| (*s, rows.iter().filter(|r| r.state == *s).count()))
        .collect();
    summary.retain(|(_, n)| *n > 0);
    let mut attention: Vec<(String, String, State)> = rows
        .iter()
        .filter(|r| r.state <= State::Degraded)
        .map(|r| (r.id.clone(), r.name.clone(), r.state))
        .collect();
    attention.sort_by_key(|(_, _, s)| *s);
    let mut totals = Vec::new();
    for r in reports {
        totals.push(totals_row(
            r.name.clone(),
            false,
            &r.counts,
            &r.latency.cumulative,
        ));
        for p in &r.partitions {
            totals.push(totals_row(
                format!("partition {}", p.partition),
                true,
                &p.counts,
                &p.latency.cumulative,
            ));
        }
    }
    let down = rows.iter().filter(|r| r.state == State::Down).count();
    let degraded = rows.iter().filter(|r| r.state == State::Degraded).count();
    let mut title = format!("chirp · {environment}");
    if down > 0 {
        title.push_str(&format!(" · {down} down"));
    }
    if degraded > 0 {
        title.push_str(&format!(" · {degraded} degraded"));
    }
    Page {
        title,
        environment: environment.to_owned(),
        version: env!("CARGO_PKG_VERSION"),
        generated: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        refresh_seconds: REFRESH_SECONDS,
        rows,
        summary,
        attention,
        totals,
        slo_text: report::slo_lines(reports),
        silent_intervals: SILENT_INTERVALS,
        quantile_error: format!("{:.1} %", QUANTILE_ERROR * 100.0),
    }
}

/// The status page of `probes` at `now`, as HTML.
pub fn render(
    environment: &str,
    probes: &[Watched],
    now: Instant,
) -> Result<String, askama::Error> {
    let reports: Vec<ProbeReport> = probes.iter().map(|w| ProbeReport::of(w, now)).collect();
    let rows = probes
        .iter()
        .zip(&reports)
        .map(|(w, r)| row(&Facts::of(w, r, now), now))
        .collect();
    page(environment, rows, &reports).render()
}

mod state;
#[cfg(test)]
mod tests;
