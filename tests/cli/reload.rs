//! Reloading the configuration (SIGHUP, `POST /-/reload`): unchanged probes
//! keep their counts, SLO state and clients; a changed probe starts again
//! and goes on from its predecessor's counts;
//! a removed one ends and an added one starts; a file with mistakes, or one
//! that changes what cannot change while running, changes nothing.

use crate::support::{free_port, Kill, Scrape, TempDir, CHIRP};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `POST path` on 127.0.0.1:`port`: (status code, body).
fn post(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned());
    (code, body.unwrap_or_default())
}

/// A self-test loop probe (webhook to chirp's own receiver).
fn probe(name: &str, interval: &str) -> String {
    format!(
        "  - {{name: {name}, interval: {interval}, deadline: 5s, inject: {{http: {{url: /hooks/{name}}}}}, catch: {{http: {{}}}}, slo: {{delivery: {{objective: 99%}}}}}}\n"
    )
}

fn config(port: u16, probes: &[String]) -> String {
    format!(
        "environment: reload-test\nsigning_key: test-signing-key-0123456789\nlisten: 127.0.0.1:{port}\nshutdown_grace: 3s\nprobes:\n{}",
        probes.concat()
    )
}

/// Polls `/metrics` until `cond` holds (10 s at most).
fn scrape_until(port: u16, what: &str, cond: impl Fn(&Scrape) -> bool) -> Scrape {
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = Scrape::blocking(port) {
            if cond(&s) {
                return s;
            }
        }
        assert!(Instant::now() < give_up, "{what} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn sent(s: &Scrape, probe: &str) -> f64 {
    s.sum("chirp_canaries_sent_total", &[("probe", probe)])
}

#[test]
fn a_reload_keeps_unchanged_probes_and_a_bad_file_changes_nothing() {
    let port = free_port();
    let dir = TempDir::new("chirp-reload");
    let write = |probes: &[String]| dir.write("probes.yaml", config(port, probes));
    let path = write(&[
        probe("steady", "20ms"),
        probe("changing", "20ms"),
        probe("leaving", "20ms"),
    ]);
    let mut child = Kill(
        Command::new(&*CHIRP)
            .args(["run", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let before = scrape_until(port, "canaries on every probe", |s| {
        ["steady", "changing", "leaving"].iter().all(|p| {
            s.samples("chirp_canaries_sent_total", &[("probe", p)])
                .first()
                .is_some_and(|(_, v)| *v >= 50.0)
        })
    });
    let loaded_at = before.sum("chirp_config_last_reload_success_timestamp_seconds", &[]);
    assert_eq!(before.sum("chirp_config_last_reload_successful", &[]), 1.0);

    // A valid change, by SIGHUP: `changing` gets another interval, `leaving`
    // goes, `joining` comes.
    write(&[
        probe("steady", "20ms"),
        probe("changing", "50ms"),
        probe("joining", "20ms"),
    ]);
    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let after = scrape_until(port, "the reload to apply", |s| {
        !s.samples("chirp_canaries_sent_total", &[("probe", "joining")])
            .is_empty()
            && s.samples("chirp_canaries_sent_total", &[("probe", "leaving")])
                .is_empty()
    });
    assert_eq!(after.sum("chirp_config_last_reload_successful", &[]), 1.0);
    assert!(after.sum("chirp_config_last_reload_success_timestamp_seconds", &[]) > loaded_at);
    // `steady` kept its ledger and its SLO state: its counters went on.
    assert!(
        sent(&after, "steady") > sent(&before, "steady"),
        "steady: {} then {}",
        sent(&before, "steady"),
        sent(&after, "steady")
    );
    let slo_events = |s: &Scrape| s.sum("chirp_sli_events_total", &[("probe", "steady")]);
    assert!(slo_events(&after) >= slo_events(&before));
    // `changing` started again at its new interval, and went on from its
    // predecessor's counts: no series of it goes down.
    assert_eq!(
        after.sum("chirp_probe_interval_seconds", &[("probe", "changing")]),
        0.05
    );
    for series in [
        "chirp_canaries_sent_total",
        "chirp_canaries_delivered_total",
        "chirp_latency_seconds_count",
        "chirp_sli_events_total",
    ] {
        let (was, is) = (
            before.sum(series, &[("probe", "changing")]),
            after.sum(series, &[("probe", "changing")]),
        );
        assert!(is >= was, "{series} of changing went down: {was} then {is}");
    }
    // Nothing lost by the reload: every probe's canaries are caught.
    let settled = scrape_until(port, "the new probes to deliver", |s| {
        s.sum("chirp_canaries_delivered_total", &[("probe", "joining")]) >= 20.0
            && s.sum("chirp_canaries_delivered_total", &[("probe", "changing")]) >= 10.0
    });
    for p in ["steady", "changing", "joining"] {
        assert_eq!(
            settled.sum("chirp_canaries_lost_total", &[("probe", p)]),
            0.0,
            "{p} lost canaries across the reload"
        );
        assert_eq!(
            settled.sum("chirp_messages_rejected_total", &[("probe", p)]),
            0.0
        );
    }
    let reloaded_at = settled.sum("chirp_config_last_reload_success_timestamp_seconds", &[]);

    // A file with two mistakes, by POST /-/reload: 400 with both, nothing changes.
    dir.write(
        "probes.yaml",
        config(port, &[probe("steady", "20ms"), probe("changing", "-5s")])
            + "alerts: {silent_intervals: 1}\n",
    );
    let (code, body) = post(port, "/-/reload");
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("probes[1].interval") && body.contains("alerts.silent_intervals"),
        "{body}"
    );
    let refused = Scrape::blocking(port).unwrap();
    assert_eq!(refused.sum("chirp_config_last_reload_successful", &[]), 0.0);
    assert_eq!(
        refused.sum("chirp_config_last_reload_success_timestamp_seconds", &[]),
        reloaded_at
    );
    assert!(!refused
        .samples("chirp_canaries_sent_total", &[("probe", "joining")])
        .is_empty());
    assert!(sent(&refused, "steady") >= sent(&settled, "steady"));
    assert!(sent(&refused, "changing") >= sent(&settled, "changing"));

    // A valid file that moves the listener: refused as a whole, saying why.
    dir.write("probes.yaml", config(port + 1, &[probe("steady", "20ms")]));
    let (code, body) = post(port, "/-/reload");
    assert_eq!(code, 400, "{body}");
    assert!(
        body.contains("listen cannot change while chirp runs"),
        "{body}"
    );
    let still = Scrape::blocking(port).unwrap();
    assert!(!still
        .samples("chirp_canaries_sent_total", &[("probe", "joining")])
        .is_empty());

    // Back to a good file: 200, and the status is good again.
    write(&[probe("steady", "20ms"), probe("joining", "20ms")]);
    let (code, body) = post(port, "/-/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("ended: changing"), "{body}");
    let good = Scrape::blocking(port).unwrap();
    assert_eq!(good.sum("chirp_config_last_reload_successful", &[]), 1.0);
    assert!(good
        .samples("chirp_canaries_sent_total", &[("probe", "changing")])
        .is_empty());
    assert!(sent(&good, "steady") >= sent(&refused, "steady"));

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    // Every mistake of the refused file is in the log.
    assert!(err.contains("Reload refused, nothing changed"), "{err}");
    assert!(err.contains("alerts.silent_intervals"), "{err}");
    assert!(
        err.contains("listen cannot change while chirp runs"),
        "{err}"
    );
}
