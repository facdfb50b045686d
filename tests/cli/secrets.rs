//! Secrets never reach a log line, at any level, including the client
//! libraries' own debug and trace logs: NATS credentials written in the URL
//! are taken out of it and given to the client as auth options (and work).

use crate::support::brokers::RabbitMq;
use crate::support::{free_port, Conf, NatsServer, Scrape, CHIRP};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Hunter2-xyzzy-0451";
/// A configured header value: it may carry a credential too.
const HEADER_SECRET: &str = "Bearer-S3cr3t-header-77";

fn run_and_collect_logs(level: &str, url: &str) -> String {
    run_with_logs(
        level,
        &format!("nats: {{url: \"{url}\"}}"),
        &format!(
            "{{nats: {{connection: main, subject: s, headers: {{x-auth: {HEADER_SECRET}}}}}}}"
        ),
        "{nats: {connection: main, subject: s}}",
    )
}

/// Runs a loop probe through `connection` at log `level` until 5 canaries
/// are delivered (the credentials work); its stderr.
fn run_with_logs(level: &str, connection: &str, inject: &str, catch: &str) -> String {
    run_with_logs_and(level, connection, inject, catch, None, |_| true)
}

/// As [`run_with_logs`], with another probe beside the loop, until `also`
/// holds of a scrape too.
fn run_with_logs_and(
    level: &str,
    connection: &str,
    inject: &str,
    catch: &str,
    other: Option<&str>,
    also: impl Fn(&Scrape) -> bool,
) -> String {
    let port = free_port();
    let mut conf = Conf::new()
        .listen(format!("127.0.0.1:{port}"))
        .connection("main", connection)
        .probe(format!(
            "{{name: loop, interval: 20ms, inject: {inject}, catch: {catch}}}"
        ));
    if let Some(o) = other {
        conf = conf.probe(o);
    }
    let cfg = conf.file();
    let mut child = Command::new(&*CHIRP)
        .args(["run", "-c"])
        .arg(&cfg.path)
        .env("CHIRP_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The credentials work: canaries go through the server that requires them.
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let done = Scrape::blocking(port).is_some_and(|s| {
            s.sum("chirp_canaries_delivered_total", &[("probe", "loop")]) >= 5.0 && also(&s)
        });
        if done {
            break;
        }
        if Instant::now() > give_up {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "no deliveries with URL credentials:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn nats_url_credentials_work_and_never_reach_the_logs() {
    let nats = NatsServer::with_user("alice", PASSWORD);
    for level in ["debug", "trace"] {
        let url = format!("nats://alice:{PASSWORD}@127.0.0.1:{}", nats.port);
        let logs = run_and_collect_logs(level, &url);
        assert!(logs.contains("NATS connected"), "{logs}");
        // The libraries did log at this level (so the check means something).
        assert!(
            logs.contains("async_nats"),
            "no client library lines at {level}:\n{logs}"
        );
        assert!(
            !logs.contains(PASSWORD),
            "the password leaked at {level}:\n{logs}"
        );
        assert!(
            !logs.contains(HEADER_SECRET),
            "a header value leaked at {level}:\n{logs}"
        );
    }
    // Percent-encoded in the URL: neither form may appear.
    let encoded = PASSWORD.replace('-', "%2D");
    let url = format!("nats://alice:{encoded}@127.0.0.1:{}", nats.port);
    let logs = run_and_collect_logs("trace", &url);
    assert!(
        !logs.contains(PASSWORD) && !logs.contains(&encoded),
        "{logs}"
    );
}

/// A password with `#`, `/` or `?` unencoded, the `nats//` typo, or a stray
/// character: `validate` refuses the URL as `run` and `check` would (it
/// used to say "ok"), and no output of any of them quotes the password.
#[test]
fn urls_that_cannot_be_used_are_refused_everywhere_without_their_password() {
    let port = free_port();
    for url in [
        format!("nats://alice:hunt#er2-xyzzy@127.0.0.1:{port}"),
        format!("nats://alice:hunt/er2-xyzzy@127.0.0.1:{port}"),
        format!("nats://alice:hunt?er2-xyzzy@127.0.0.1:{port}"),
        format!("nats//alice:hunter2-xyzzy@127.0.0.1:{port}"),
        format!("nats://alice:hunter2-xyzzy@127.0.0.1:{port};x"),
    ] {
        let cfg = Conf::new()
            .connection("main", format!("nats: {{url: \"{url}\"}}"))
            .probe("{name: a, inject: {nats: {connection: main, subject: s}}, catch: {nats: {connection: main, subject: s}}}")
            .file();
        for args in [&["validate"][..], &["check", "--count", "1"][..]] {
            let out = Command::new(&*CHIRP)
                .args(args)
                .arg("-c")
                .arg(&cfg.path)
                .env("CHIRP_LOG", "trace")
                .output()
                .unwrap();
            let all = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.status.code(), Some(2), "{args:?} {url}:\n{all}");
            assert!(
                all.contains("is not a NATS server URL"),
                "{args:?} {url}:\n{all}"
            );
            assert!(
                !all.contains("er2-xyzzy"),
                "{args:?} printed the password:\n{all}"
            );
        }
    }
}

/// RabbitMQ credentials in the URL and in `password` work and never reach a
/// log line, lapin's own trace logs (AMQP frames) included.
#[test]
fn amqp_credentials_work_and_never_reach_the_logs() {
    let rabbit = RabbitMq::with_user("alice", PASSWORD);
    let declared =
        "{amqp: {connection: main, queue: q, declare: true, bind: {exchange: e, routing_key: k}}}";
    let inject = format!("{{amqp: {{connection: main, exchange: e, routing_key: k, declare: true, headers: {{x-auth: {HEADER_SECRET}}}}}}}");
    for (level, connection) in [
        (
            "debug",
            format!(
                "amqp: {{url: \"amqp://alice:{PASSWORD}@127.0.0.1:{}\"}}",
                rabbit.port
            ),
        ),
        (
            "trace",
            format!(
                "amqp: {{url: \"amqp://alice:{PASSWORD}@127.0.0.1:{}\"}}",
                rabbit.port
            ),
        ),
        (
            "trace",
            format!(
                "amqp: {{url: \"amqp://127.0.0.1:{}\", user: alice, password: {PASSWORD}}}",
                rabbit.port
            ),
        ),
    ] {
        let logs = run_with_logs(level, &connection, &inject, declared);
        assert!(logs.contains("RabbitMQ connected"), "{logs}");
        assert!(
            logs.contains("lapin"),
            "no client library lines at {level}:\n{logs}"
        );
        assert!(
            !logs.contains(PASSWORD),
            "the password leaked at {level}:\n{logs}"
        );
        assert!(
            !logs.contains(HEADER_SECRET),
            "a header value leaked at {level}:\n{logs}"
        );
    }
}

/// Canaries RabbitMQ returns as unroutable are publish failures, and what
/// is said of them is chirp's own line, once a minute: never the returned
/// message (its headers may carry a credential), whatever the level.
#[test]
fn returned_amqp_messages_are_said_once_without_their_headers() {
    let rabbit = RabbitMq::start();
    let url = rabbit.url();
    let unroutable = format!("{{name: nowhere, interval: 20ms, inject: {{amqp: {{connection: main, exchange: e, routing_key: no.queue, declare: true, headers: {{x-auth: {HEADER_SECRET}}}}}}}, catch: {{amqp: {{connection: main, queue: q2, declare: true}}}}}}");
    for level in ["info", "debug"] {
        let logs = run_with_logs_and(
            level,
            &format!("amqp: {{url: \"{url}\"}}"),
            "{amqp: {connection: main, exchange: e, routing_key: k, declare: true}}",
            "{amqp: {connection: main, queue: q, declare: true, bind: {exchange: e, routing_key: k}}}",
            Some(&unroutable),
            |s| s.sum("chirp_canaries_publish_failed_total", &[("probe", "nowhere"), ("kind", "rejected")]) >= 20.0,
        );
        assert_eq!(
            logs.matches("was returned as unroutable").count(),
            1,
            "at {level}:\n{logs}"
        );
        assert!(
            logs.contains("NO_ROUTE"),
            "the broker's reply is said: {logs}"
        );
        assert!(
            !logs.contains(HEADER_SECRET),
            "a header value leaked at {level}:\n{logs}"
        );
    }
}
