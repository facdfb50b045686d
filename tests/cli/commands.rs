//! Commands as users run them: `validate` (every mistake with its place),
//! `check` (pass, fail, unreachable targets, the self-test loop, Kafka
//! partitions) and `run` on the shipped configuration.

use crate::support::brokers::{create_topics, Tansu};
use crate::support::{
    config_file, exits, free_port, http_get, Conf, NatsServer, Scrape, CHIRP, KEY, SHIPPED,
};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PARTITIONS: i32 = 3;

fn nats_config(url: &str) -> String {
    format!(
        "environment: ci\nlisten: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  main:\n    nats: {{url: \"{url}\"}}\nprobes:\n  - name: loop\n    interval: 2ms\n    deadline: 5s\n    inject: {{nats: {{connection: main, subject: cli.loop}}}}\n    catch: {{nats: {{connection: main, subject: cli.loop}}}}\n"
    )
}

#[test]
fn validate_prints_every_mistake_with_its_place_and_exits_2() {
    let cfg = config_file(
        "signing_key: ${CHIRP_TEST_NO_SUCH_VAR}\nprobes:\n  - name: a\n    intervall: 1s\n    inject: {http: {url: /hooks/a}}\n    catch: {http: {}}\n  - name: b\n    deadline: 5 parsecs\n    inject: {http: {url: /hooks/b}}\n    catch: {http: {}}\n  - name: c\n    inject: {http: {url: /hooks/c}}\n    catch: {htp: {}}\n  - name: d\n    slo: {delivery: {objective: 0.999}}\n    inject: {http: {url: /hooks/d}}\n    catch: {http: {}}\n",
    );
    let out = Command::new(&*CHIRP)
        .args(["validate", "-c"])
        .arg(&cfg.path)
        .env_remove("CHIRP_TEST_NO_SUCH_VAR")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("5 errors"), "{err}");
    assert!(
        err.contains("signing_key: environment variable `CHIRP_TEST_NO_SUCH_VAR` is not set"),
        "{err}"
    );
    assert!(err.contains("probes[0].intervall: unknown key `intervall`; did you mean `interval`? (line 4, column 5)"), "{err}");
    assert!(
        err.contains("probes[2].catch: unknown transport `htp` (one of: nats, "),
        "{err}"
    );
    assert!(
        err.contains("); did you mean `http`? (line 13, column 5)"),
        "{err}"
    );
    assert!(err.contains("probes[3].slo.delivery.objective: `0.999` needs a `%`: write `99.9%` for a ratio of 0.999, or `0.999%` if you mean 0.999 percent (line 15, column 22)"), "{err}");
    assert!(
        err.contains("probes[1].deadline: `5 parsecs` is not a duration"),
        "{err}"
    );
}

#[test]
fn validate_accepts_the_shipped_configuration() {
    let out = exits(Command::new(&*CHIRP).args(["validate", "-c", SHIPPED]), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok (2 probes"));
}

#[test]
fn check_passes_on_a_healthy_loop_and_fails_an_impossible_p99() {
    let nats = NatsServer::start();
    let cfg = config_file(&nats_config(&nats.url()));
    let out = Command::new(&*CHIRP)
        .args(["check", "--count", "500", "--max-loss", "0%", "-c"])
        .arg(&cfg.path)
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

    let out = Command::new(&*CHIRP)
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
        .arg(&cfg.path)
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
    let cfg = config_file(&nats_config(&format!("nats://127.0.0.1:{}", free_port())));
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "5", "-c"])
            .arg(&cfg.path),
        3,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("connection `main`"));
    // JetStream and RabbitMQ as well.
    let dead = free_port();
    for (conn, inject, catch) in [
        (
            format!("nats: {{url: \"nats://127.0.0.1:{dead}\"}}"),
            "{jetstream: {connection: main, subject: a.in}}",
            "{jetstream: {connection: main, stream: A}}",
        ),
        (
            format!("amqp: {{url: \"amqp://127.0.0.1:{dead}\"}}"),
            "{amqp: {connection: main, exchange: e, routing_key: k}}",
            "{amqp: {connection: main, queue: q}}",
        ),
    ] {
        let cfg = Conf::new()
            .connection("main", conn)
            .probe(format!("{{name: gone, inject: {inject}, catch: {catch}}}"))
            .file();
        let out = exits(
            Command::new(&*CHIRP)
                .args(["check", "--count", "5", "-c"])
                .arg(&cfg.path),
            3,
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("connection `main`"), "{err}");
    }
}

#[test]
fn check_without_an_amount_is_a_usage_error() {
    let out = exits(Command::new(&*CHIRP).args(["check", "-c", SHIPPED]), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the following required arguments were not provided"),
        "{err}"
    );
    assert!(
        err.contains("--count <COUNT>|--duration <DURATION>"),
        "{err}"
    );
}

#[test]
fn run_with_the_shipped_config_serves_growing_counts_and_stops_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(&*CHIRP)
        .args([
            "run",
            "-c",
            SHIPPED,
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
    while (seen.len() < 2
        || kafka_delivered(&http_get(port, "/api/probes").unwrap_or_default()) == 0)
        && Instant::now() < give_up
    {
        if let Some(s) = Scrape::blocking(port) {
            let d = s.sum("chirp_canaries_delivered_total", &[]);
            if seen.last().is_none_or(|last| d > *last) && d > 0.0 {
                seen.push(d);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let scrape = Scrape::blocking(port).expect("a scrape");
    let api = http_get(port, "/api/probes").unwrap_or_default();
    let readyz = http_get(port, "/readyz").unwrap_or_default();
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
    let m = |name| scrape.sum(name, &[]);
    assert_eq!(
        m("chirp_canaries_sent_total"),
        m("chirp_canaries_delivered_total")
            + m("chirp_canaries_dead_lettered_total")
            + m("chirp_canaries_lost_total")
            + m("chirp_canaries_publish_failed_total")
            + m("chirp_canaries_in_flight"),
        "invariant in the scrape: {}",
        scrape.text
    );
    assert_eq!(status.code(), Some(0));
}

#[test]
fn check_for_a_duration_on_the_self_test_loop() {
    let out = exits(
        Command::new(&*CHIRP)
            .args([
                "check",
                "-c",
                SHIPPED,
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

    let out = Command::new(&*CHIRP)
        .args([
            "check",
            "-c",
            SHIPPED,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_tansu_reports_partitions_and_passes() {
    let tansu = Tansu::start();
    create_topics(&tansu.bootstrap(), &[("canaries", PARTITIONS)]).await;
    let cfg = Conf::new()
        .connection("t", format!("kafka: {{brokers: \"{}\"}}", tansu.bootstrap()))
        .probe("{name: tk, interval: 5ms, deadline: 5s, inject: {kafka: {connection: t, topic: canaries, partitions: all}}, catch: {kafka: {connection: t, topic: canaries}}}")
        .file();
    let out = exits(
        Command::new(&*CHIRP)
            .args([
                "check",
                "--count",
                "500",
                "--max-loss",
                "0%",
                "--format",
                "json",
                "-c",
            ])
            .arg(&cfg.path),
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    let p = &v["probes"][0];
    assert_eq!(p["counts"]["sent"], 500 * PARTITIONS as u64, "{v}");
    assert_eq!(p["counts"]["delivered"], 500 * PARTITIONS as u64, "{v}");
    let parts = p["partitions"].as_array().expect("per-partition rows");
    assert_eq!(parts.len(), PARTITIONS as usize, "{v}");
    for (i, part) in parts.iter().enumerate() {
        assert_eq!(part["partition"], i);
        assert_eq!(part["counts"]["sent"], 500);
        assert_eq!(part["counts"]["delivered"], 500);
        assert!(part["latency"]["cumulative"]["p99"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn check_exits_3_when_the_topic_does_not_exist() {
    let tansu = Tansu::start();
    let cfg = Conf::new()
        .connection("t", format!("kafka: {{brokers: \"{}\"}}", tansu.bootstrap()))
        .probe("{name: tk, inject: {kafka: {connection: t, topic: nowhere, partitions: all}}, catch: {kafka: {connection: t, topic: nowhere}}}")
        .file();
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "5", "-c"])
            .arg(&cfg.path),
        3,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("topic `nowhere`"), "{err}");
}

/// Whether commented text `rest` is YAML (an example), not prose.
fn is_yaml(rest: &str) -> bool {
    let t = rest.trim_start();
    let key: String = t
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == '-')
        .collect();
    t.starts_with("- ")
        || t.starts_with('#')
        || (!key.is_empty() && t[key.len()..].starts_with(':'))
}

/// The shipped file's commented examples uncommented as a user would, by
/// deleting the `# ` of each block at the block's column (what a block
/// selection in an editor does), and every line whose `#` is not at its
/// block's column.
fn uncommented(text: &str) -> (String, Vec<String>) {
    let mut out = Vec::new();
    let mut misplaced = Vec::new();
    let mut column: Option<usize> = None;
    for (n, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        match line[indent..].strip_prefix("# ") {
            Some(rest) if is_yaml(rest) => {
                let col = *column.get_or_insert(indent);
                if indent != col {
                    misplaced.push(format!(
                        "line {}: `#` at column {}, its block's at {}",
                        n + 1,
                        indent + 1,
                        col + 1
                    ));
                }
                out.push(format!("{}{rest}", &line[..indent]));
            }
            _ => {
                column = None;
                out.push(line.to_owned());
            }
        }
    }
    (out.join("\n"), misplaced)
}

#[test]
fn the_shipped_examples_are_valid_once_uncommented() {
    let text = std::fs::read_to_string(SHIPPED).unwrap();
    let (all, misplaced) = uncommented(&text);
    assert!(
        misplaced.is_empty(),
        "mis-indented examples in probes.yaml: {misplaced:#?}"
    );
    assert_ne!(all, text, "there are examples to uncomment");
    let c = chirp::config::load_str(&all, &std::collections::HashMap::new())
        .unwrap_or_else(|e| panic!("the uncommented examples do not load: {e:#?}\n{all}"));
    for conn in ["main-nats", "main-kafka", "main-rabbit"] {
        assert!(c.connections.contains_key(conn), "{conn}");
    }
    for probe in ["orders", "orders-js", "orders-rabbit"] {
        assert!(
            c.probes.iter().any(|p| p.name == probe),
            "{probe}: {:?}",
            c.probes
        );
    }
    assert!(c.otlp.is_some());
}

#[test]
fn the_public_demo_key_is_called_out_on_a_real_pipeline() {
    let shipped = exits(
        Command::new(&*CHIRP).args(["check", "--count", "2", "-c", SHIPPED]),
        0,
    );
    assert!(!String::from_utf8_lossy(&shipped.stderr).contains("public demo key"));
    let refused = format!("http://127.0.0.1:{}/in", free_port());
    let cfg = config_file(&format!(
        "signing_key: chirp-demo-key-not-secret\nlisten: 127.0.0.1:0\nprobes:\n  - {{name: orders, inject: {{http: {{url: \"{refused}\"}}}}, catch: {{http: {{}}}}}}\n"
    ));
    let out = Command::new(&*CHIRP)
        .args(["check", "--count", "1", "-c"])
        .arg(&cfg.path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("The signing key is the public demo key") && err.contains("orders"),
        "{err}"
    );
}

/// The try-it-by-hand configurations in `examples/` load as they are.
#[test]
fn the_broker_examples_validate() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            exits(
                Command::new(&*CHIRP).arg("validate").arg("-c").arg(&path),
                0,
            );
            seen += 1;
        }
    }
    assert!(seen >= 2, "examples/ has {seen} configurations");
}
