//! The subcommands, one module each, and the one exit-code enum. `main.rs`
//! parses the command line, sets up logging and maps [`Exit`] to the
//! process's code; everything a subcommand does is here, where tests reach it.

pub mod check;
pub mod completions;
pub mod rules;
pub mod run;
pub mod validate;

use crate::config::{self, Config, ProcessEnv};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

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

    /// What the code means, for the JSON exit line.
    pub fn reason(self) -> &'static str {
        match self {
            Exit::Ok => "success",
            Exit::Failed => "an objective or gate failed",
            Exit::Usage => "usage, configuration or local error",
            Exit::Unreachable => "a target could not be reached",
        }
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
    /// Print a shell completion script (bash: `source <(chirp completions bash)`).
    Completions(completions::Args),
    /// Print chirp's man page (`chirp man > chirp.1; man ./chirp.1`), or write every page with --dir.
    Man(completions::ManArgs),
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
        Command::Completions(a) => Ok(completions::run(a)),
        Command::Man(a) => Ok(completions::man(a)),
    };
    result.unwrap_or_else(|e| {
        fatal(&format!("{e:#}"));
        Exit::Usage
    })
}

/// Whether chirp's own messages on stderr (fatal errors, warnings, the exit
/// line) are JSON, as the logs are with `--log-format json`.
static JSON: AtomicBool = AtomicBool::new(false);

/// Makes [`fatal`], [`warn`] and [`exiting`] write JSON lines.
pub fn json_messages(on: bool) {
    JSON.store(on, Ordering::Relaxed);
}

/// Whether chirp's stderr is JSON lines (no progress bar then).
pub fn json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// With JSON messages, the exit line of a process ended otherwise (a panic).
pub fn exiting_with(code: u8, reason: &str) {
    if !json() {
        return;
    }
    let mut fields = serde_json::Map::new();
    fields.insert("exit_code".into(), code.into());
    say("ERROR", "", &format!("chirp exits: {reason}"), fields);
}

/// A message that ends the command: `error: …` on stderr, or a JSON line
/// shaped as the JSON logs are (`timestamp`, `level`, `fields.message`, `target`).
pub fn fatal(message: &str) {
    say("ERROR", "error", message, serde_json::Map::new());
}

/// A warning that does not end the command.
pub fn warn(message: &str) {
    say("WARN", "warning", message, serde_json::Map::new());
}

/// With JSON messages, the last line chirp writes: its exit code and why.
/// (Text output needs none: the report, `Stopped.` or the error says it.)
pub fn exiting(exit: Exit) {
    if !JSON.load(Ordering::Relaxed) {
        return;
    }
    let mut fields = serde_json::Map::new();
    fields.insert("exit_code".into(), exit.code().into());
    let level = if exit == Exit::Ok { "INFO" } else { "ERROR" };
    say(
        level,
        "",
        &format!("chirp exits: {}", exit.reason()),
        fields,
    );
}

fn say(
    level: &str,
    prefix: &str,
    message: &str,
    mut fields: serde_json::Map<String, serde_json::Value>,
) {
    if !JSON.load(Ordering::Relaxed) {
        err(&format!("{prefix}: {message}\n"));
        return;
    }
    let mut all = serde_json::Map::new();
    all.insert("message".into(), message.into());
    all.append(&mut fields);
    let line = serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": level,
        "fields": all,
        "target": "chirp",
    });
    err(&format!("{line}\n"));
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
            let missing = !path.exists();
            if JSON.load(Ordering::Relaxed) {
                let list: Vec<serde_json::Value> = errors
                    .errors
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "path": e.path,
                            "message": e.message,
                            "line": e.location.map(|l| l.0),
                            "column": e.location.map(|l| l.1),
                        })
                    })
                    .collect();
                let mut fields = serde_json::Map::new();
                fields.insert("file".into(), errors.file.clone().into());
                fields.insert("errors".into(), list.into());
                let n = errors.errors.len();
                let mut message = format!(
                    "the configuration has {n} error{}",
                    if n == 1 { "" } else { "s" }
                );
                if missing {
                    message.push_str(&format!("; {}", MISSING_HINT));
                }
                say("ERROR", "error", &message, fields);
            } else {
                err(&errors.to_string());
                if missing {
                    err(&format!("  {MISSING_HINT}\n"));
                }
            }
            None
        }
    }
}

/// Said when the configuration file does not exist.
const MISSING_HINT: &str = "name the configuration file with `-c FILE` (or CHIRP_CONFIG); chirp reads probes.yaml in the current directory otherwise";
