//! The `chirp` binary: parses the command line, sets up logging, runs one
//! subcommand (`chirp::cmd`) and turns its [`Exit`] into the process's code.
// A panic is a crash at 3 a.m.: production code handles every error; only tests unwrap.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![deny(clippy::print_stdout, clippy::print_stderr)]

use chirp::cmd::{self, Cli, Exit, LogFormat};
use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

/// `--features dhat-heap`: every allocation is tracked and, when chirp
/// exits, written to `dhat-heap.json` (open it in DHAT's viewer, or
/// `scripts/heap-report`). For measuring where memory goes, never for production.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() -> ExitCode {
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let json = matches!(cli.log_format, LogFormat::Json);
    cmd::json_messages(json);
    if json {
        json_panics();
    }
    init_logging(cli.log_format, cli.command.default_log_level());
    // Before any client makes a TLS connection: ring is rustls' provider
    // for every client that takes the process default (Google's).
    chirp::transport::install_crypto_provider();
    map_large_buffers();
    chirp::server::listener::on_flood_end(release_memory);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(chirp::runtime::worker_threads())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            cmd::fatal(&format!("cannot start the async runtime: {e}"));
            cmd::exiting(Exit::Usage);
            return ExitCode::from(Exit::Usage.code());
        }
    };
    let exit = runtime.block_on(cmd::dispatch(cli.command));
    // Shutdown is bounded already; do not wait on a client's blocking thread.
    runtime.shutdown_timeout(Duration::from_secs(1));
    cmd::exiting(exit);
    ExitCode::from(exit.code())
}

/// A command line clap refuses: its own message (help and `--version` go to
/// stdout as usual), as a JSON line when `--log-format json` was asked for.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    // Help and the version asked for; without a subcommand, the help is
    // the usage error's message (stderr, exit 2).
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() {
            Exit::Usage.code()
        } else {
            0
        });
    }
    let args: Vec<String> = std::env::args().collect();
    let json = args.iter().enumerate().any(|(i, a)| {
        a == "--log-format=json"
            || (a == "--log-format" && args.get(i + 1).is_some_and(|v| v == "json"))
    });
    if json {
        cmd::json_messages(true);
        cmd::fatal(
            e.render()
                .to_string()
                .trim_end()
                .trim_start_matches("error: "),
        );
        cmd::exiting(Exit::Usage);
    } else {
        let _ = e.print();
    }
    ExitCode::from(Exit::Usage.code())
}

/// A panic (a bug) is reported as a JSON line too, where and what, then
/// ends chirp as a panic does.
fn json_panics() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        cmd::fatal(&format!("chirp panicked{place}: {what}"));
        // On the main thread a panic ends chirp (101); in a task it does not.
        if std::thread::current().name() == Some("main") {
            cmd::exiting_with(101, "panicked");
        }
    }));
}

fn init_logging(format: LogFormat, default_level: &str) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("CHIRP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // At trace level the NATS client prints every message's headers, and a
    // configured header may carry a secret: its lines stop at debug.
    if filter.max_level_hint() == Some(tracing::level_filters::LevelFilter::TRACE) {
        // lapin dumps AMQP frames at trace: the connection's start-ok
        // carries the password. The AWS SDK logs requests (a session token
        // rides in a header), responses and signing at trace.
        for cap in [
            "async_nats=debug",
            "lapin=debug",
            "amq_protocol=debug",
            "aws_smithy_runtime=debug",
            "aws_smithy_runtime_api=debug",
            "aws_smithy_http_client=debug",
            "aws_sigv4=debug",
            "aws_runtime=debug",
            "aws_config=debug",
        ] {
            if let Ok(cap) = cap.parse() {
                filter = filter.add_directive(cap);
            }
        }
    }
    // lapin logs every returned (unroutable) message whole at warn: its
    // headers may carry a secret, and one line per canary is a flood. chirp
    // logs the broker's reply itself, once a minute.
    if let Ok(cap) = "lapin::returned_messages=error".parse() {
        filter = filter.add_directive(cap);
    }
    // Colour only for a person at a terminal: a file or journald gets plain
    // text, and NO_COLOR (https://no-color.org: set and not empty) turns it off.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // A log line that cannot be written (stderr closed) is dropped: never a panic.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Buffers of 1 MiB and more (a scrape's text with hundreds of probes) are
/// mapped on their own and unmapped when freed. glibc would otherwise raise
/// this threshold to the largest buffer freed so far (up to 32 MiB), and
/// from then on keep such buffers in its arenas after they are freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn map_large_buffers() {
    // SAFETY: mallopt takes two integers and changes only glibc's own
    // settings, under its own lock; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn map_large_buffers() {}

/// Hands the pages glibc's arenas hold free back to the system (called by
/// the listener once a flood of connections has ended, and after a large scrape).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_memory() {
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free
    // lists, under its own locks, and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_memory() {}
