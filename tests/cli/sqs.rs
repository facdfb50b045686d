//! Amazon SQS as users run it, against moto (an emulator of SQS started by
//! the test, not AWS): `check` through a standard and a FIFO queue, exit 3
//! when the endpoint cannot be reached or the queue does not exist,
//! credentials from the standard AWS chain (the environment here), and a
//! secret access key and session token that never reach the logs, at any
//! level.

use crate::support::{exits, free_port, Conf, MotoServer, Scrape, CHIRP};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "Xyzzy-sqs-secret-0451-do-not-log";
const SESSION: &str = "Plugh-sqs-session-token-7781-do-not-log";

/// Creates the queues on the emulator.
fn create(server: &MotoServer, names: &[&str]) {
    let client = server.client();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for name in names {
            let mut req = client.create_queue().queue_name(*name);
            if name.ends_with(".fifo") {
                req = req.attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true");
            }
            req.send().await.expect("create the queue");
        }
    });
}

fn loop_conf(connection: &str) -> Conf {
    Conf::new()
        .connection("q", connection)
        .probe("{name: standard, interval: 50ms, deadline: 5s, inject: {sqs: {connection: q, queue: orders}}, catch: {sqs: {connection: q, queue: orders}}}")
        .probe("{name: fifo, interval: 50ms, deadline: 5s, inject: {sqs: {connection: q, queue: orders.fifo}}, catch: {sqs: {connection: q, queue: orders.fifo, wait: 2s}}}")
}

fn check(conf: &Conf, count: u64, code: i32, env: &[(&str, &str)]) -> String {
    let cfg = conf.file();
    let mut cmd = Command::new(&*CHIRP);
    cmd.args(["check", "--count", &count.to_string(), "-c"])
        .arg(&cfg.path);
    isolate(&mut cmd, env);
    let out = exits(&mut cmd, code);
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// No AWS settings of the machine's (profiles, credentials, instance
/// metadata: nothing leaves 127.0.0.1), only `env`.
fn isolate(cmd: &mut Command, env: &[(&str, &str)]) {
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    for (k, v) in env {
        cmd.env(k, v);
    }
}

fn row<'a>(said: &'a str, probe: &str) -> Vec<&'a str> {
    said.lines()
        .find(|l| l.starts_with(&format!("{probe} ")))
        .unwrap_or_else(|| panic!("no row for {probe}: {said}"))
        .split_whitespace()
        .collect()
}

#[test]
fn check_counts_every_canary_through_a_standard_and_a_fifo_queue() {
    let server = MotoServer::start();
    create(&server, &["orders", "orders.fifo"]);
    let said = check(&loop_conf(&server.connection()), 300, 0, &[]);
    for probe in ["standard", "fifo"] {
        // sent, delivered, dead-lettered, lost
        assert_eq!(&row(&said, probe)[1..5], ["300", "300", "0", "0"], "{said}");
    }
    // FIFO: one message group per probe, so nothing is reordered.
    assert_eq!(row(&said, "fifo")[9], "0", "{said}");
}

#[test]
fn check_exits_3_when_the_endpoint_cannot_be_reached_or_the_queue_is_missing() {
    let nowhere = format!(
        "sqs: {{region: us-east-1, endpoint: \"http://127.0.0.1:{}\", access_key_id: AKIDCHIRPTEST, secret_access_key: {SECRET}}}",
        free_port()
    );
    let said = check(&loop_conf(&nowhere), 5, 3, &[]);
    assert!(said.contains("cannot reach SQS queue `orders"), "{said}");
    assert!(!said.contains(SECRET), "{said}");

    let server = MotoServer::start();
    create(&server, &["orders.fifo"]);
    let said = check(&loop_conf(&server.connection()), 5, 3, &[]);
    assert!(
        said.contains("cannot reach SQS queue `orders`") && said.contains("does not exist"),
        "{said}"
    );
    // A queue by its URL is checked too.
    let by_url = Conf::new()
        .connection("q", server.connection())
        .probe(format!("{{name: u, inject: {{sqs: {{connection: q, queue: \"{}/123456789012/gone\"}}}}, catch: {{sqs: {{connection: q, queue: orders.fifo}}}}}}", server.endpoint()));
    let said = check(&by_url, 5, 3, &[]);
    assert!(said.contains("cannot reach SQS queue `gone`"), "{said}");
}

#[test]
fn credentials_come_from_the_standard_chain_when_the_connection_has_none() {
    let server = MotoServer::start();
    create(&server, &["orders", "orders.fifo"]);
    let chained = format!(
        "sqs: {{region: us-east-1, endpoint: \"{}\"}}",
        server.endpoint()
    );
    let said = check(
        &loop_conf(&chained),
        20,
        0,
        &[
            ("AWS_ACCESS_KEY_ID", "AKIDFROMENV"),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
        ],
    );
    assert_eq!(
        &row(&said, "standard")[1..5],
        ["20", "20", "0", "0"],
        "{said}"
    );
    // None anywhere: the queue cannot be reached (exit 3), and chirp says why.
    let said = check(&loop_conf(&chained), 5, 3, &[]);
    assert!(said.contains("credentials"), "{said}");
    // Nor a region: a configuration mistake (exit 2), said as such.
    let said = check(
        &loop_conf(&format!("sqs: {{endpoint: \"{}\"}}", server.endpoint())),
        5,
        2,
        &[],
    );
    assert!(said.contains("no AWS region"), "{said}");
}

fn run_and_collect_logs(level: &str, connection: &str) -> String {
    let port = free_port();
    let cfg = loop_conf(connection)
        .listen(format!("127.0.0.1:{port}"))
        .file();
    let mut cmd = Command::new(&*CHIRP);
    cmd.args(["run", "-c"])
        .arg(&cfg.path)
        .env("CHIRP_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    isolate(&mut cmd, &[]);
    let mut child = cmd.spawn().unwrap();
    // The SDK's debug lines fill a pipe in moments: read them as they come.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let give_up = Instant::now() + Duration::from_secs(20);
    loop {
        let delivered =
            Scrape::blocking(port).map(|s| s.sum("chirp_canaries_delivered_total", &[]));
        if delivered.is_some_and(|d| d >= 10.0) {
            break;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no deliveries through the emulator:\n{}",
                reader.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let logs = reader.join().unwrap();
    assert_eq!(status.code(), Some(0), "{logs}");
    logs
}

#[test]
fn the_secret_key_and_session_token_never_reach_the_logs() {
    let server = MotoServer::start();
    create(&server, &["orders", "orders.fifo"]);
    let connection = format!(
        "sqs: {{region: us-east-1, endpoint: \"{}\", access_key_id: AKIDCHIRPTEST, secret_access_key: {SECRET}, session_token: {SESSION}}}",
        server.endpoint()
    );
    for level in ["debug", "trace"] {
        let logs = run_and_collect_logs(level, &connection);
        // The SDK's own lines are there (at trace, capped at debug)…
        assert!(logs.contains("aws_smithy_runtime"), "{logs}");
        // …and its signing and wire lines are not.
        assert!(
            !logs.contains("aws_sigv4"),
            "trace lines of the signer at {level}"
        );
        for secret in [SECRET, SESSION] {
            assert!(
                !logs.contains(secret),
                "a secret leaked at {level}:\n{logs}"
            );
        }
    }
}

/// SQS hands a message to a long poll even after its client is gone, and
/// hides it from everyone else for the visibility timeout. chirp finishes
/// its last poll when it stops and gives back what that returns, so a chirp
/// started right after it (or a probe's successor after a reload) loses
/// none of its first canaries to it.
#[test]
fn a_chirp_started_right_after_another_loses_nothing_to_its_last_poll() {
    let server = MotoServer::start();
    create(&server, &["orders"]);
    let conf = Conf::new()
        .connection("q", server.connection())
        .probe("{name: again, interval: 20ms, deadline: 3s, inject: {sqs: {connection: q, queue: orders}}, catch: {sqs: {connection: q, queue: orders}}}");
    for _ in 0..3 {
        let said = check(&conf, 25, 0, &[]);
        assert_eq!(&row(&said, "again")[1..5], ["25", "25", "0", "0"], "{said}");
    }
}
