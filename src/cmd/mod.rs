//! The subcommands, one module each, and the one exit-code enum. `main.rs`
//! parses the command line, sets up logging and maps [`Exit`] to the
//! process's code; everything a subcommand does is here, where tests reach it.

pub mod check;
pub mod rules;
pub mod run;
pub mod validate;

use crate::config::{self, Config, ProcessEnv};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// How chirp ends: 0 met, 1 an objective failed, 2 usage, configuration or
/// local error, 3 a target could not be reached at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failed = 1,
    Usage = 2,
    Unreachable = 3,
}

impl Exit {
    pub fn code(self) -> u8 {
        self as u8
    }
}

#[derive(Parser)]
#[command(
    name = "chirp",
    version = concat!(env!("CARGO_PKG_VERSION"), " (rev ", env!("CHIRP_BUILD_REVISION"), ")"),
    about = "Synthetic heartbeat and latency prober for event pipelines"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the probes until stopped, serving /metrics, /api/probes and webhooks.
    Run(run::Args),
    /// Run the probes for a while, wait for every canary, and pass or fail.
    Check(check::Args),
    /// Print Prometheus recording rules and burn-rate alerts for the SLOs.
    Rules(ConfigArg),
    /// Parse, interpolate and validate the configuration; print every error.
    Validate(ConfigArg),
}

impl Command {
    /// The log level when `CHIRP_LOG` does not say: `run` tells what it does.
    pub fn default_log_level(&self) -> &'static str {
        match self {
            Command::Run(_) => "info",
            _ => "warn",
        }
    }
}

#[derive(Args)]
pub struct ConfigArg {
    /// Configuration file.
    #[arg(short, long, env = "CHIRP_CONFIG", default_value = "probes.yaml")]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct Common {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Listen on this address instead of the configured `listen`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// Runs one subcommand to its end.
pub async fn dispatch(command: Command) -> Exit {
    let result = match command {
        Command::Validate(a) => Ok(validate::run(&a.config)),
        Command::Rules(a) => Ok(rules::run(&a.config)),
        Command::Run(a) => run::run(a).await,
        Command::Check(a) => check::run(a).await,
    };
    result.unwrap_or_else(|e| {
        err(&format!("error: {e:#}\n"));
        Exit::Usage
    })
}

/// Writes to standard output. A closed stdout (`chirp check | head`) is
/// not an error: the exit code still says how the run went.
pub fn out(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}

/// Writes to standard error, never panicking (a closed pipe, a restarted journald).
pub fn err(text: &str) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Loads the configuration, printing every error; `None` means exit 2.
pub fn load(path: &Path) -> Option<Config> {
    match config::load_file(path, &ProcessEnv) {
        Ok(c) => Some(c),
        Err(errors) => {
            err(&errors.to_string());
            None
        }
    }
}
