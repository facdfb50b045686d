//! `chirp check`: send N canaries per probe (or for a while), wait until
//! every one is resolved (at most its deadline), evaluate the objectives
//! over the run, write the report, and pass or fail.

use super::{fatal, load, out, Common, Exit};
use crate::report::check::{CheckReport, Gates, Verdict};
use crate::report::ProbeReport;
use crate::runtime::{Listen, Options, Runtime};
use anyhow::Context;
use clap::ValueEnum;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["count", "duration"])))]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Only these probes (repeatable); default all.
    #[arg(long = "probe", value_name = "NAME")]
    pub probes: Vec<String>,
    /// Send this many canaries per probe.
    #[arg(long)]
    pub count: Option<u64>,
    /// Send canaries for this long, e.g. `30s`.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Fail when more than this share of canaries is lost or failed, e.g. `0.1%`.
    #[arg(long, value_parser = parse_percent)]
    pub max_loss: Option<f64>,
    /// Fail when the end-to-end p99 is above this, e.g. `250ms`.
    #[arg(long, value_parser = parse_duration)]
    pub max_p99: Option<Duration>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Write the report here instead of standard output.
    #[arg(long)]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// JUnit XML: one test case per probe objective.
    Junit,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration ({e}); write e.g. `250ms`"))
}

fn parse_percent(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("`{s}` is not a percentage between 0% and 100%")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<Exit> {
    let path = &args.common.config.config;
    let Some(mut config) = load(path) else {
        return Ok(Exit::Usage);
    };
    if !args.probes.is_empty() {
        let known: Vec<String> = config.probes.iter().map(|p| p.name.clone()).collect();
        let unknown: Vec<String> = args
            .probes
            .iter()
            .filter(|n| !known.contains(n))
            .map(|n| format!("`{n}`"))
            .collect();
        if !unknown.is_empty() {
            fatal(&format!(
                "no probe named {} in {} (probes: {})",
                unknown.join(", "),
                path.display(),
                known.join(", ")
            ));
            return Ok(Exit::Usage);
        }
        config.probes.retain(|p| args.probes.contains(&p.name));
    }
    if args.count == Some(0) {
        fatal("--count must be at least 1");
        return Ok(Exit::Usage);
    }
    let opts = Options {
        listen: Listen::IfNeeded {
            given: args.common.listen,
            fallback: config.listen.address,
        },
        count: args.count,
        duration: args.duration,
        fail_fast: true,
        reload: false,
    };
    let mut rt = match Runtime::start(&config, opts).await {
        Ok(rt) => rt,
        Err(e) if e.is_unreachable() => {
            fatal(&format!("{:#}", anyhow::Error::new(e)));
            return Ok(Exit::Unreachable);
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot start the check")),
    };
    let started = std::time::Instant::now();
    let progress = progress_bar(&rt, args.count, args.duration);
    rt.injection_done().await;
    // Every canary resolves by its deadline; the margin covers the last sweep.
    let longest = config
        .probes
        .iter()
        .map(|p| p.deadline)
        .max()
        .unwrap_or_default();
    rt.drain(longest + Duration::from_secs(1)).await;
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    // Reports are read once nothing runs any more: every observer has heard
    // of every resolution, so SLO totals and counts agree.
    let probes = rt.probes();
    rt.shutdown().await;
    let now = Instant::now();
    let reports: Vec<ProbeReport> = probes.iter().map(|w| ProbeReport::of(w, now)).collect();

    let gates = Gates {
        max_loss_percent: args.max_loss,
        max_p99: args.max_p99,
    };
    let report = CheckReport::new(&config.environment, reports, &gates, started.elapsed());
    let text = match args.format {
        Format::Text => report.text(),
        Format::Junit => report.junit(),
        Format::Json => report.json().context("cannot write the JSON report")?,
    };
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => out(&text),
    }
    Ok(match report.verdict() {
        Verdict::Met => Exit::Ok,
        Verdict::Failed => Exit::Failed,
        Verdict::Unreachable => Exit::Unreachable,
    })
}

/// On a terminal, a progress bar of resolved canaries (count mode) or of
/// time (duration mode); nothing when stderr is not a terminal (CI logs).
fn progress_bar(
    rt: &Runtime,
    count: Option<u64>,
    duration: Option<Duration>,
) -> Option<(indicatif::ProgressBar, tokio::task::JoinHandle<()>)> {
    use std::io::IsTerminal;
    // For a person at a terminal: not in a log, nor among JSON lines.
    if !std::io::stderr().is_terminal() || super::json() {
        return None;
    }
    let probes: Vec<_> = rt
        .probes()
        .iter()
        .map(|w| std::sync::Arc::clone(&w.probe))
        .collect();
    let lanes: u64 = probes.iter().map(|p| p.lanes().len().max(1) as u64).sum();
    let (len, template) = match (count, duration) {
        (Some(n), _) => (
            n * lanes,
            "{spinner} {pos}/{len} canaries resolved [{bar:40}] {elapsed}",
        ),
        (None, Some(d)) => (
            d.as_secs().max(1),
            "{spinner} sending for {len}s [{bar:40}] {elapsed}, then waiting for the last canaries",
        ),
        (None, None) => return None,
    };
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    let b = bar.clone();
    let started = std::time::Instant::now();
    let task = tokio::spawn(async move {
        loop {
            let pos = match count {
                Some(_) => probes
                    .iter()
                    .map(|p| {
                        let c = p.counts();
                        c.sent - c.in_flight
                    })
                    .sum(),
                None => started.elapsed().as_secs(),
            };
            b.set_position(pos.min(len));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    Some((bar, task))
}
