//! The binary as users run it: `validate`, `check` (exit codes, table, JSON)
//! and `run` (serves /metrics with a growing delivered count, exits 0 on SIGTERM).

mod common;

use common::{free_port, NatsServer, KEY};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::CHIRP;

fn write_config(text: &str) -> tempfile_path::Path {
    let p = tempfile_path::Path::new();
    std::fs::File::create(&p.0)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .expect("write config");
    p
}

mod tempfile_path {
    pub struct Path(pub std::path::PathBuf);
    impl Path {
        pub fn new() -> Path {
            Path(std::env::temp_dir().join(format!(
                "chirp-cli-{}-{}.yaml",
                std::process::id(),
                rand::random::<u32>()
            )))
        }
    }
    impl Drop for Path {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn nats_config(url: &str) -> String {
    format!(
        "environment: ci\nlisten: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  main:\n    nats: {{url: \"{url}\"}}\nprobes:\n  - name: loop\n    interval: 2ms\n    deadline: 5s\n    inject: {{nats: {{connection: main, subject: cli.loop}}}}\n    catch: {{nats: {{connection: main, subject: cli.loop}}}}\n"
    )
}

#[test]
fn validate_prints_every_mistake_with_its_place_and_exits_2() {
    let cfg = write_config(
        "signing_key: ${CHIRP_TEST_NO_SUCH_VAR}\nprobes:\n  - name: a\n    intervall: 1s\n    inject: {http: {url: /hooks/a}}\n    catch: {htp: {}}\n  - name: b\n    deadline: 5 parsecs\n    inject: {http: {url: /hooks/b}}\n    catch: {http: {}}\n",
    );
    let out = Command::new(CHIRP)
        .args(["validate", "-c"])
        .arg(&cfg.0)
        .env_remove("CHIRP_TEST_NO_SUCH_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4 errors"), "{err}");
    assert!(
        err.contains("signing_key: environment variable `CHIRP_TEST_NO_SUCH_VAR` is not set"),
        "{err}"
    );
    assert!(err.contains("probes[0].intervall: unknown key `intervall`; did you mean `interval`? (line 4, column 5)"), "{err}");
    assert!(err.contains("probes[0].catch.htp: unknown transport `htp`; did you mean `http`? (line 6, column 13)"), "{err}");
    assert!(
        err.contains("probes[1].deadline: `5 parsecs` is not a duration"),
        "{err}"
    );
}

#[test]
fn validate_accepts_the_shipped_configuration() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/probes.yaml");
    let out = common::exits(Command::new(CHIRP).args(["validate", "-c", shipped]), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 probes"));
}

#[test]
fn check_passes_on_a_healthy_loop_and_fails_an_impossible_p99() {
    let nats = NatsServer::start();
    let cfg = write_config(&nats_config(&nats.url()));
    let out = Command::new(CHIRP)
        .args(["check", "--count", "500", "--max-loss", "0%", "-c"])
        .arg(&cfg.0)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("loop "))
        .unwrap_or_else(|| panic!("no row: {stdout}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[1..5],
        ["500", "500", "0", "0"],
        "sent delivered lost failed: {row}"
    );
    assert!(
        stdout.contains("PASS loop: max_loss measured 0.000%"),
        "{stdout}"
    );

    let out = Command::new(CHIRP)
        .args([
            "check",
            "--count",
            "200",
            "--max-p99",
            "1us",
            "--format",
            "json",
            "-c",
        ])
        .arg(&cfg.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["passed"], false);
    let p = &v["probes"][0];
    assert_eq!(p["name"], "loop");
    assert_eq!(p["counts"]["sent"], 200);
    assert_eq!(p["counts"]["delivered"], 200);
    assert_eq!(p["objectives"][0]["name"], "max_p99");
    assert_eq!(p["objectives"][0]["met"], false);
    assert!(p["objectives"][0]["measured"].as_f64().unwrap() > 0.000_001);
}

#[test]
fn check_exits_3_when_the_broker_cannot_be_reached() {
    let cfg = write_config(&nats_config(&format!("nats://127.0.0.1:{}", free_port())));
    let out = common::exits(
        Command::new(CHIRP)
            .args(["check", "--count", "5", "-c"])
            .arg(&cfg.0),
        3,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection `main`"));
}

#[test]
fn check_without_an_amount_is_a_usage_error() {
    let out = Command::new(CHIRP)
        .args(["check", "-c", "probes.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The whole HTTP/1.0 response (status line, headers, body) to `GET path`.
fn get(port: u16, path: &str) -> Option<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

fn scrape(port: u16) -> Option<String> {
    get(port, "/metrics")
}

/// Sum of every sample of metric `name` (all label sets).
fn metric(text: &str, name: &str) -> Option<u64> {
    let values: Vec<f64> = text
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}

#[test]
fn run_with_the_shipped_config_serves_growing_counts_and_stops_on_sigterm() {
    let port = free_port();
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/probes.yaml");
    let mut child = Command::new(CHIRP)
        .args([
            "run",
            "-c",
            shipped,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let kafka_delivered = |api: &str| -> u64 {
        let json = api.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v["probes"][1]["counts"]["delivered"].as_u64())
            .unwrap_or(0)
    };
    let give_up = Instant::now() + Duration::from_secs(10);
    while (seen.len() < 2 || kafka_delivered(&get(port, "/api/probes").unwrap_or_default()) == 0)
        && Instant::now() < give_up
    {
        if let Some(d) = scrape(port).and_then(|t| metric(&t, "chirp_canaries_delivered_total")) {
            if seen.last().is_none_or(|last| d > *last) && d > 0 {
                seen.push(d);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let text = scrape(port).unwrap_or_default();
    let api = get(port, "/api/probes").unwrap_or_default();
    let readyz = get(port, "/readyz").unwrap_or_default();
    // SIGTERM: stop injecting, drain, exit 0.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert_eq!(
        seen.len(),
        2,
        "delivered count did not grow within 10s: {seen:?}"
    );
    assert!(
        readyz.starts_with("HTTP/1.0 200") || readyz.starts_with("HTTP/1.1 200"),
        "{readyz}"
    );
    let json = api.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {api}"));
    assert_eq!(v["probes"][0]["name"], "self-test");
    assert_eq!(v["probes"][0]["up"], true);
    assert!(
        v["probes"][0]["counts"]["delivered"].as_u64().unwrap() > 0,
        "{v}"
    );
    // The embedded Kafka probe delivers too, on every partition.
    assert_eq!(v["probes"][1]["name"], "kafka-selftest");
    let partitions = v["probes"][1]["partitions"]
        .as_array()
        .expect("per-partition rows");
    assert_eq!(partitions.len(), 3, "{v}");
    assert!(
        v["probes"][1]["counts"]["delivered"].as_u64().unwrap() > 0,
        "{v}"
    );
    let m = |name| metric(&text, name).unwrap_or_else(|| panic!("{name} missing: {text}"));
    assert_eq!(
        m("chirp_canaries_sent_total"),
        m("chirp_canaries_delivered_total")
            + m("chirp_canaries_lost_total")
            + m("chirp_canaries_publish_failed_total")
            + m("chirp_canaries_in_flight"),
        "invariant in the scrape: {text}"
    );
    assert_eq!(status.code(), Some(0));
}

#[test]
fn check_for_a_duration_on_the_self_test_loop() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/probes.yaml");
    let out = common::exits(
        Command::new(CHIRP)
            .args([
                "check",
                "-c",
                shipped,
                "--listen",
                "127.0.0.1:0",
                "--duration",
                "1s",
                "--probe",
                "self-test",
            ])
            .args(["--max-loss", "0%", "--format", "json"]),
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let c = &v["probes"][0]["counts"];
    // 1 s at one canary per 200 ms: slots at 0, 200, 400, 600 and 800 ms.
    assert_eq!(c["sent"], 5, "{v}");
    assert_eq!(c["delivered"], 5, "{v}");
    assert_eq!(v["passed"], true);

    let out = Command::new(CHIRP)
        .args([
            "check",
            "-c",
            shipped,
            "--listen",
            "127.0.0.1:0",
            "--count",
            "1",
            "--probe",
            "nope",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no probe named `nope`"));
}
