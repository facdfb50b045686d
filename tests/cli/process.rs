//! The process as an operator meets it: closed pipes (`chirp run 2>&1 |
//! head`, a restarted journald) never crash it and never cost `check` its
//! exit code; SIGHUP reloads rather than kills it; a second SIGTERM during
//! the grace period ends it at once.

use crate::support::{free_port, http_get, Conf, Scrape, CHIRP};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `chirp <args>` with its stdout and stderr into a pipe whose reader
/// has gone, stopping it with SIGTERM after `for_` when it runs; its exit code.
fn with_closed_pipes(args: &str, for_: Option<Duration>) -> i32 {
    let run = match for_ {
        Some(d) => format!(
            "timeout --preserve-status -s TERM {} {} {args}",
            d.as_secs(),
            *CHIRP
        ),
        None => format!("{} {args}", *CHIRP),
    };
    // `true` exits at once: every write to the pipe fails (EPIPE).
    let script = format!("{run} 2>&1 | true; exit ${{PIPESTATUS[0]}}");
    let status = Command::new("bash").args(["-c", &script]).status().unwrap();
    status.code().unwrap_or(-1)
}

fn self_test(port: u16) -> crate::support::ConfigFile {
    Conf::new()
        .listen(format!("127.0.0.1:{port}"))
        .probe(
            "{name: self, interval: 20ms, inject: {http: {url: /hooks/self}}, catch: {http: {}}}",
        )
        .file()
}

#[test]
fn closed_pipes_crash_nothing_and_check_keeps_its_exit_code() {
    let cfg = self_test(free_port());
    let path = cfg.path.display();
    // `run` logs at info: every line fails to write; it still drains and exits 0.
    assert_eq!(
        with_closed_pipes(&format!("run -c {path}"), Some(Duration::from_secs(2))),
        0
    );
    // `check` passes (0) or fails (1) as it would with a reader.
    assert_eq!(
        with_closed_pipes(&format!("check --count 10 -c {path}"), None),
        0
    );
    assert_eq!(
        with_closed_pipes(&format!("check --count 10 --max-p99 1ns -c {path}"), None),
        1
    );
    // Errors go to a closed stderr too: still exit 2.
    assert_eq!(
        with_closed_pipes("validate -c /nonexistent/probes.yaml", None),
        2
    );
}

#[test]
fn sighup_reloads_rather_than_stops_chirp_and_a_second_sigterm_stops_it_at_once() {
    // An endpoint that never answers keeps canaries in flight for their 30 s deadline.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in silent.incoming().flatten() {
            held.push(s);
        }
    });
    let port = free_port();
    let cfg = Conf::new()
        .listen(format!("127.0.0.1:{port}"))
        .top("shutdown_grace: 60s")
        .probe(format!(
            "{{name: stuck, interval: 100ms, deadline: 30s, publish_timeout: 30s, inject: {{http: {{url: \"http://{silent_addr}/in\"}}}}, catch: {{http: {{}}}}}}"
        ))
        .file();
    let mut child = Command::new(&*CHIRP)
        .args(["run", "-c"])
        .arg(&cfg.path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let kill = |sig: &str, pid: u32| {
        Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .unwrap();
    };
    let give_up = Instant::now() + Duration::from_secs(10);
    while Scrape::blocking(port).is_none_or(|s| s.sum("chirp_canaries_in_flight", &[]) < 3.0) {
        assert!(Instant::now() < give_up, "no canaries in flight within 10s");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill("HUP", child.id());
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped chirp");
    assert!(
        http_get(port, "/healthz").is_some_and(|r| r.contains("ok")),
        "chirp serves after SIGHUP"
    );
    // The first SIGTERM starts a 60 s grace period; the second ends it.
    kill("TERM", child.id());
    std::thread::sleep(Duration::from_millis(500));
    assert!(child.try_wait().unwrap().is_none(), "still draining");
    let second = Instant::now();
    kill("TERM", child.id());
    let status = child.wait().unwrap();
    let took = second.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "the second signal took {took:?} to stop chirp:\n{err}"
    );
    // The file did not change: the reload keeps the probe as it was.
    assert!(
        err.contains("Configuration reloaded: restarted: none; started: none; ended: none; unchanged: stuck."),
        "{err}"
    );
    assert!(err.contains("Second signal: stopping at once"), "{err}");
}

/// A log file or journald gets plain text: no ANSI escape in what chirp
/// writes to a stderr that is not a terminal.
#[test]
fn logs_to_a_file_have_no_colour_codes() {
    let port = free_port();
    let cfg = self_test(port);
    let dir = crate::support::TempDir::new("chirp-plain-log");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(&*CHIRP)
        .args(["run", "-c"])
        .arg(&cfg.path)
        .env_remove("NO_COLOR")
        .env("CHIRP_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(10);
    while Scrape::blocking(port).is_none_or(|s| s.sum("chirp_canaries_delivered_total", &[]) < 5.0)
    {
        assert!(Instant::now() < give_up, "no deliveries within 10s");
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let text = std::fs::read(&log).unwrap();
    assert!(
        String::from_utf8_lossy(&text).contains("chirp is running"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert!(
        !text.contains(&0x1b),
        "an escape byte in the log file:\n{}",
        String::from_utf8_lossy(&text)
    );
}
