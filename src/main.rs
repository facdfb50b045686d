//! The `chirp` binary: parses the command line, sets up logging, dispatches,
//! and maps outcomes to exit codes (0 ok, 1 an objective failed, 2 usage or
//! configuration error, 3 a target could not be reached).
// A panic is a crash at 3 a.m.: production code handles every error; only tests unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use anyhow::Context;
use chirp::config::{self, Config, ProcessEnv};
use chirp::report::{self, Gates, ProbeReport, Span};
use chirp::runtime::{Options, Runtime};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

#[derive(Parser)]
#[command(
    name = "chirp",
    version,
    about = "Synthetic heartbeat and latency prober for event pipelines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the probes until stopped, serving /metrics, /api/probes and webhooks.
    Run {
        #[command(flatten)]
        common: Common,
    },
    /// Run the probes for a while, wait for every canary, and pass or fail.
    Check(CheckArgs),
    /// Print Prometheus recording rules and burn-rate alerts for the SLOs.
    Rules {
        /// Configuration file.
        #[arg(short, long, env = "CHIRP_CONFIG", default_value = "probes.yaml")]
        config: PathBuf,
    },
    /// Parse, interpolate and validate the configuration; print every error.
    Validate {
        /// Configuration file.
        #[arg(short, long, env = "CHIRP_CONFIG", default_value = "probes.yaml")]
        config: PathBuf,
    },
}

#[derive(Args)]
struct Common {
    /// Configuration file.
    #[arg(short, long, env = "CHIRP_CONFIG", default_value = "probes.yaml")]
    config: PathBuf,
    /// Listen on this address instead of the configured `listen`.
    #[arg(long)]
    listen: Option<SocketAddr>,
}

#[derive(Args)]
#[command(group(clap::ArgGroup::new("amount").required(true).args(["count", "duration"])))]
struct CheckArgs {
    #[command(flatten)]
    common: Common,
    /// Only these probes (repeatable); default all.
    #[arg(long = "probe", value_name = "NAME")]
    probes: Vec<String>,
    /// Send this many canaries per probe.
    #[arg(long)]
    count: Option<u64>,
    /// Send canaries for this long, e.g. `30s`.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Fail when more than this share of canaries is lost or failed, e.g. `0.1%`.
    #[arg(long, value_parser = parse_percent)]
    max_loss: Option<f64>,
    /// Fail when the end-to-end p99 is above this, e.g. `250ms`.
    #[arg(long, value_parser = parse_duration)]
    max_p99: Option<Duration>,
    /// Report format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Write the report here instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
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

const EXIT_FAILED: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_UNREACHABLE: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    init_logging(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Validate { config } => validate(&config),
            Command::Rules { config } => match load(&config) {
                Some(c) => {
                    print!("{}", chirp::slo::rules::render(&c));
                    Ok(ExitCode::SUCCESS)
                }
                None => Ok(ExitCode::from(EXIT_CONFIG)),
            },
            Command::Run { common } => run(common).await,
            Command::Check(args) => check(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CHIRP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Loads the configuration, printing every error; `None` means exit 2.
fn load(path: &Path) -> Option<Config> {
    match config::load_file(path, &ProcessEnv) {
        Ok(c) => Some(c),
        Err(errors) => {
            eprint!("{errors}");
            None
        }
    }
}

fn validate(path: &Path) -> anyhow::Result<ExitCode> {
    let Some(config) = load(path) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    println!(
        "{}: ok ({} probe{}, environment `{}`)",
        path.display(),
        config.probes.len(),
        if config.probes.len() == 1 { "" } else { "s" },
        config.environment
    );
    if let Some(o) = &config.otlp {
        let traces = match o.traces {
            Some(t) => format!(
                "traces to {} (sample ratio {})",
                o.traces_endpoint, t.sample_ratio
            ),
            None => "no traces".to_owned(),
        };
        println!(
            "OTLP over {}: metrics to {} every {}; {traces}",
            o.protocol.as_str(),
            o.metrics_endpoint,
            humantime::format_duration(o.interval)
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(common: Common) -> anyhow::Result<ExitCode> {
    let Some(config) = load(&common.config) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    let opts = Options {
        listen: common.listen,
        ..Options::default()
    };
    let mut rt = Runtime::start(&config, opts)
        .await
        .with_context(|| format!("cannot start with {}", common.config.display()))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %common.config.display(),
        listen = %rt.addr,
        environment = %config.environment,
        probes = config.probes.len(),
        run_id = %format!("{:016x}", rt.run_id),
        "chirp is running."
    );
    for p in &config.probes {
        tracing::info!(
            probe = %p.name,
            inject = p.inject.system(),
            catch = p.catch.system(),
            interval = %humantime::format_duration(p.interval),
            deadline = %humantime::format_duration(p.deadline),
            "Probe started."
        );
    }
    shutdown_signal().await;
    tracing::info!(grace = %humantime::format_duration(config.shutdown_grace), "Stopping: no new canaries; waiting for those in flight.");
    let left = rt.drain(config.shutdown_grace).await;
    if left > 0 {
        tracing::warn!(
            in_flight = left,
            "Grace period expired with canaries still in flight; they are not counted."
        );
    }
    rt.shutdown().await;
    tracing::info!("Stopped.");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

async fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let Some(mut config) = load(&args.common.config) else {
        return Ok(ExitCode::from(EXIT_CONFIG));
    };
    if !args.probes.is_empty() {
        let known: Vec<String> = config.probes.iter().map(|p| p.name.clone()).collect();
        let unknown: Vec<&String> = args.probes.iter().filter(|n| !known.contains(n)).collect();
        if !unknown.is_empty() {
            eprintln!(
                "error: no probe named {} in {} (probes: {})",
                unknown
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                args.common.config.display(),
                known.join(", ")
            );
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
        config.probes.retain(|p| args.probes.contains(&p.name));
    }
    if args.count == Some(0) {
        eprintln!("error: --count must be at least 1");
        return Ok(ExitCode::from(EXIT_CONFIG));
    }
    let opts = Options {
        listen: args.common.listen,
        count: args.count,
        duration: args.duration,
        fail_fast: true,
    };
    let mut rt = match Runtime::start(&config, opts).await {
        Ok(rt) => rt,
        Err(e) if e.is_unreachable() => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(EXIT_UNREACHABLE));
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
    let now = Instant::now();
    if let Some((bar, task)) = progress {
        task.abort();
        bar.finish_and_clear();
    }
    let reports: Vec<ProbeReport> = rt.probes.iter().map(|p| ProbeReport::of(p, now)).collect();
    rt.shutdown().await;

    let gates = Gates {
        max_loss_percent: args.max_loss,
        max_p99: args.max_p99,
    };
    let unreachable = reports.iter().any(|r| {
        r.counts.sent > 0 && r.counts.delivered == 0 && r.counts.publish_failed == r.counts.sent
    });
    let evaluated: Vec<(ProbeReport, Vec<report::Objective>)> = reports
        .into_iter()
        .map(|r| {
            let o = report::evaluate(&r, &gates);
            (r, o)
        })
        .collect();
    let passed = evaluated.iter().all(|(_, o)| o.iter().all(|x| x.met));
    let text = match args.format {
        Format::Text => check_text(&evaluated, started.elapsed()),
        Format::Junit => report::junit(&evaluated, started.elapsed().as_secs_f64()),
        Format::Json => {
            let probes: Vec<serde_json::Value> = evaluated
                .iter()
                .map(|(r, o)| {
                    let mut v = serde_json::to_value(r).unwrap_or_default();
                    v["objectives"] = serde_json::to_value(o).unwrap_or_default();
                    v["passed"] = serde_json::Value::Bool(o.iter().all(|x| x.met));
                    v
                })
                .collect();
            let doc = serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "environment": config.environment,
                "elapsed_seconds": started.elapsed().as_secs_f64(),
                "passed": passed && !unreachable,
                "probes": probes,
            });
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
        }
    };
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{text}"),
    }
    Ok(if unreachable {
        ExitCode::from(EXIT_UNREACHABLE)
    } else if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_FAILED)
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
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let probes = rt.probes.clone();
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

fn check_text(evaluated: &[(ProbeReport, Vec<report::Objective>)], elapsed: Duration) -> String {
    let reports: Vec<ProbeReport> = evaluated.iter().map(|(r, _)| r.clone()).collect();
    let mut out = report::text_table(&reports, Span::Total);
    out.push('\n');
    for (r, objectives) in evaluated {
        for o in objectives {
            let bound = if o.unit == "seconds" || o.name == "max_loss" {
                "at most"
            } else {
                "at least"
            };
            out.push_str(&format!(
                "{} {}: {} measured {} (objective {bound} {}): {}\n",
                if o.met { "PASS" } else { "FAIL" },
                r.name,
                o.name,
                report::format_value(o, o.measured),
                report::format_value(o, o.target),
                report::describe(r, o),
            ));
        }
        if let Some(slo) = &r.slo {
            let t = &slo.totals;
            if t.slices_good + t.slices_bad > 1 {
                out.push_str(&format!(
                    "     {}: {} of {} time slices of {}s good ({} without data)\n",
                    r.name,
                    t.slices_good,
                    t.slices_good + t.slices_bad,
                    slo.slice_seconds,
                    t.slices_no_data
                ));
                for s in &slo.recent_slices {
                    let start = std::time::UNIX_EPOCH + Duration::from_secs(s.start_unix);
                    out.push_str(&format!(
                        "       {} {}: {} canaries, {} delivered, {} within the latency threshold\n",
                        humantime::format_rfc3339_seconds(start),
                        if s.good { "good" } else { "BAD " },
                        s.events,
                        s.delivery_good,
                        s.latency_good
                    ));
                }
            }
        }
    }
    out.push_str(&format!("checked in {:.1}s\n", elapsed.as_secs_f64()));
    out
}
