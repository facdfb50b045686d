//! Google Cloud Pub/Sub as users run it, on the emulator: `check` through
//! a topic and its subscription (named by ID and in full), found through
//! `endpoint` or `PUBSUB_EMULATOR_HOST`; exit 3 when Pub/Sub cannot be
//! reached or a subscription or topic does not exist; and a service account
//! key that works and whose contents never reach the logs, at any level,
//! nor an error.

use crate::support::targets::{pubsub_create, PUBSUB_PROJECT};
use crate::support::{exits, find_bin, free_port, Conf, PubSubEmulator, Scrape, TempDir, CHIRP};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Makes each (subscription, topic) on the emulator.
fn make(emulator: &PubSubEmulator, pairs: &[(&str, &str)]) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (subscription, topic) in pairs {
        rt.block_on(pubsub_create(
            &emulator.endpoint(),
            subscription,
            topic,
            false,
        ));
    }
}

fn connection(endpoint: Option<&str>, extra: &str) -> String {
    match endpoint {
        Some(e) => format!("pubsub: {{project: {PUBSUB_PROJECT}, endpoint: \"{e}\"{extra}}}"),
        None => format!("pubsub: {{project: {PUBSUB_PROJECT}{extra}}}"),
    }
}

/// Probes through topics `orders` and `events`, read on their
/// subscriptions `<topic>-<run>`. Each chirp process gets subscriptions of
/// its own: the emulator goes on handing messages to the streams of a
/// process that has stopped, for a minute or more (real Pub/Sub notices a
/// closed stream), and those canaries would be lost to the next run.
fn loop_conf(endpoint: Option<&str>, run: &str) -> Conf {
    Conf::new()
        .connection("g", connection(endpoint, ""))
        .probe(format!("{{name: by-id, interval: 10ms, deadline: 3s, inject: {{pubsub: {{connection: g, topic: orders}}}}, catch: {{pubsub: {{connection: g, subscription: orders-{run}}}}}}}"))
        .probe(format!("{{name: by-name, interval: 10ms, deadline: 3s, inject: {{pubsub: {{connection: g, topic: projects/{PUBSUB_PROJECT}/topics/events}}}}, catch: {{pubsub: {{connection: g, subscription: projects/{PUBSUB_PROJECT}/subscriptions/events-{run}}}}}}}"))
}

fn check_with(conf: &Conf, count: u64, code: i32, env: &[(&str, &str)]) -> String {
    let cfg = conf.file();
    let mut cmd = Command::new(&*CHIRP);
    cmd.args(["check", "--count", &count.to_string(), "-c"])
        .arg(&cfg.path)
        .env_remove("PUBSUB_EMULATOR_HOST");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = exits(&mut cmd, code);
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn row<'a>(said: &'a str, probe: &str) -> Vec<&'a str> {
    said.lines()
        .find(|l| l.starts_with(&format!("{probe} ")))
        .unwrap_or_else(|| panic!("no row for {probe}: {said}"))
        .split_whitespace()
        .collect()
}

#[test]
fn check_counts_every_canary_through_the_emulator() {
    let emulator = PubSubEmulator::start();
    make(
        &emulator,
        &[
            ("orders-a", "orders"),
            ("events-a", "events"),
            ("orders-b", "orders"),
            ("events-b", "events"),
            ("orders-c", "orders"),
            ("events-c", "events"),
        ],
    );
    let said = check_with(&loop_conf(Some(&emulator.endpoint()), "a"), 300, 0, &[]);
    for probe in ["by-id", "by-name"] {
        // sent, delivered, lost, failed
        assert_eq!(&row(&said, probe)[1..5], ["300", "300", "0", "0"], "{said}");
    }
    // Without `endpoint`, `PUBSUB_EMULATOR_HOST` says where the emulator is.
    let host = format!("127.0.0.1:{}", emulator.port);
    let said = check_with(
        &loop_conf(None, "b"),
        20,
        0,
        &[("PUBSUB_EMULATOR_HOST", &host)],
    );
    for probe in ["by-id", "by-name"] {
        assert_eq!(&row(&said, probe)[1..5], ["20", "20", "0", "0"], "{said}");
    }
    // The JSON report names the transport as the schema allows.
    let cfg = loop_conf(Some(&emulator.endpoint()), "c").file();
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "5", "--format", "json", "-c"])
            .arg(&cfg.path),
        0,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/check-report.schema.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("check-report.schema.json", schema)
        .unwrap();
    let index = compiler
        .compile("check-report.schema.json", &mut schemas)
        .unwrap();
    if let Err(e) = schemas.validate(&report, index) {
        panic!("{e:#}\n{report:#}");
    }
    assert!(
        report.to_string().contains(r#""inject":"pubsub""#),
        "{report}"
    );
}

#[test]
fn check_exits_3_when_pub_sub_cannot_be_reached() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let said = check_with(&loop_conf(Some(&endpoint), "a"), 5, 3, &[]);
    assert!(
        said.contains(&format!(
            "connection `g`: cannot check Pub/Sub topic `projects/{PUBSUB_PROJECT}/topics/orders` at {endpoint}"
        )),
        "{said}"
    );
}

#[test]
fn check_exits_3_on_a_missing_subscription_or_topic() {
    let emulator = PubSubEmulator::start();
    // `orders` and `events` exist, and a subscription to `events`; no
    // subscription `orders-a`.
    make(&emulator, &[("unused", "orders"), ("events-a", "events")]);
    let said = check_with(&loop_conf(Some(&emulator.endpoint()), "a"), 5, 3, &[]);
    assert!(
        said.contains(&format!(
            "probe `by-id`: catch: no Pub/Sub subscription `projects/{PUBSUB_PROJECT}/subscriptions/orders-a`"
        )),
        "{said}"
    );
    let conf = Conf::new()
        .connection("g", connection(Some(&emulator.endpoint()), ""))
        .probe("{name: nowhere, interval: 10ms, inject: {pubsub: {connection: g, topic: no-such-topic}}, catch: {pubsub: {connection: g, subscription: events-a}}}");
    let said = check_with(&conf, 5, 3, &[]);
    assert!(
        said.contains(&format!(
            "connection `g`: no Pub/Sub topic `projects/{PUBSUB_PROJECT}/topics/no-such-topic`"
        )),
        "{said}"
    );
}

/// A service account key file of a key made here (the emulator takes any
/// credentials, so chirp signs its tokens with this key for real): the
/// file's text, and the key's base64 lines.
fn service_account(dir: &TempDir) -> (std::path::PathBuf, Vec<String>) {
    let openssl = find_bin("openssl", "openssl");
    let out = Command::new(openssl)
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl genpkey failed");
    let pem = String::from_utf8(out.stdout).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
    let lines: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::to_owned)
        .collect();
    let key = serde_json::json!({
        "type": "service_account",
        "project_id": PUBSUB_PROJECT,
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": "chirp@chirp-test.iam.gserviceaccount.com",
        "client_id": "123456789",
        "token_uri": "https://oauth2.googleapis.com/token",
    });
    let path = dir.write("key.json", serde_json::to_vec_pretty(&key).unwrap());
    (path, lines)
}

fn run_and_collect_logs(level: &str, conf: &Conf) -> String {
    let port = free_port();
    let cfg = conf.clone().listen(format!("127.0.0.1:{port}")).file();
    let mut child = Command::new(&*CHIRP)
        .args(["run", "-c"])
        .arg(&cfg.path)
        .env("CHIRP_LOG", level)
        .env_remove("PUBSUB_EMULATOR_HOST")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes: at trace the clients write thousands of lines a
    // second, and a full pipe would stall chirp.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stderr, &mut text);
        String::from_utf8_lossy(&text).into_owned()
    });
    let give_up = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered =
            Scrape::blocking(port).map(|s| s.sum("chirp_canaries_delivered_total", &[]));
        if delivered.is_some_and(|d| d >= 20.0) {
            break;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let _ = child.wait();
            let logs = reader.join().unwrap();
            let tail: Vec<&str> = logs.lines().rev().take(200).collect();
            panic!("no deliveries with the service account key; last lines:\n{tail:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    reader.join().unwrap()
}

#[test]
fn a_service_account_key_works_and_never_reaches_the_logs_or_errors() {
    let emulator = PubSubEmulator::start();
    let levels = ["debug", "trace"];
    for level in levels {
        make(&emulator, &[(level, "orders")]);
    }
    let dir = TempDir::new("pubsub-key");
    let (key, lines) = service_account(&dir);
    let with_key = |file: &std::path::Path, subscription: &str| {
        Conf::new()
            .connection(
                "g",
                connection(
                    Some(&emulator.endpoint()),
                    &format!(", credentials_file: {}", file.display()),
                ),
            )
            .probe(format!("{{name: keyed, interval: 10ms, deadline: 3s, inject: {{pubsub: {{connection: g, topic: orders}}}}, catch: {{pubsub: {{connection: g, subscription: {subscription}}}}}}}"))
    };
    let leaked = |text: &str| {
        // Any line of the key, the key's header, or a signed token
        // (`{"alg":…` in base64) would be a leak.
        lines.iter().any(|l| text.contains(l.as_str()))
            || text.contains("PRIVATE KEY")
            || text.contains("eyJhbGci")
    };
    for level in levels {
        let logs = run_and_collect_logs(level, &with_key(&key, level));
        // The run was logged at that level (the listener's start, at least).
        assert!(logs.contains("chirp is running"), "{logs}");
        assert!(!leaked(&logs), "the key leaked at {level}:\n{logs}");
    }
    // A key that is no key: Pub/Sub cannot be asked (exit 3), and the
    // error says why without quoting it.
    let mut garbled: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&key).unwrap()).unwrap();
    let mut reversed = lines.clone();
    reversed.reverse();
    garbled["private_key"] = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        reversed.join("\n")
    )
    .into();
    let garbled = dir.write("garbled.json", serde_json::to_vec(&garbled).unwrap());
    let said = check_with(&with_key(&garbled, "debug"), 5, 3, &[]);
    assert!(said.contains("authentication"), "{said}");
    assert!(!leaked(&said), "{said}");
    // A key file chirp cannot read: `check` says which file, and nothing of it.
    let broken = dir.write(
        "broken.json",
        format!(
            "{{\"type\": \"service_account\", \"private_key\": \"{}\"",
            lines.join("\\n")
        ),
    );
    let said = check_with(&with_key(&broken, "debug"), 5, 2, &[]);
    assert!(
        said.contains(&broken.display().to_string())
            && said.contains("not a JSON credentials file"),
        "{said}"
    );
    assert!(!leaked(&said), "{said}");
}
