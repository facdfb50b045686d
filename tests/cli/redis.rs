//! Redis Streams as users run it: `check` through a stream read as a
//! consumer group and from the stream's end, exit 3 when Redis cannot be
//! reached or refuses the credentials, and an ACL password in the URL that
//! works and never reaches the logs, at any level.

use crate::support::{exits, free_port, Conf, RedisServer, Scrape, CHIRP};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Hunter2-redis-xyzzy-0451";

fn loop_conf(url: &str) -> Conf {
    Conf::new()
        .connection("r", format!("redis: {{url: \"{url}\"}}"))
        .probe("{name: grouped, interval: 10ms, deadline: 2s, inject: {redis: {connection: r, stream: in.grouped, maxlen: 1000}}, catch: {redis: {connection: r, stream: in.grouped, group: chirp}}}")
        .probe("{name: tail, interval: 10ms, deadline: 2s, inject: {redis: {connection: r, stream: in.tail}}, catch: {redis: {connection: r, stream: in.tail}}}")
}

fn check(conf: &Conf, count: u64, code: i32) -> String {
    let cfg = conf.file();
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", &count.to_string(), "-c"])
            .arg(&cfg.path),
        code,
    );
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
fn check_counts_every_canary_through_a_stream_both_ways_of_reading() {
    let server = RedisServer::start();
    let said = check(&loop_conf(&server.url()), 300, 0);
    for probe in ["grouped", "tail"] {
        // sent, delivered, lost, failed
        assert_eq!(&row(&said, probe)[1..5], ["300", "300", "0", "0"], "{said}");
    }
}

#[test]
fn check_exits_3_when_redis_cannot_be_reached() {
    let said = check(
        &loop_conf(&format!("redis://127.0.0.1:{}", free_port())),
        5,
        3,
    );
    assert!(
        said.contains("connection `r`: cannot connect to Redis at redis://127.0.0.1:"),
        "{said}"
    );
}

fn run_and_collect_logs(level: &str, url: &str) -> String {
    let port = free_port();
    let cfg = loop_conf(url).listen(format!("127.0.0.1:{port}")).file();
    let mut child = Command::new(&*CHIRP)
        .args(["run", "-c"])
        .arg(&cfg.path)
        .env("CHIRP_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let delivered =
            Scrape::blocking(port).map(|s| s.sum("chirp_canaries_delivered_total", &[]));
        if delivered.is_some_and(|d| d >= 10.0) {
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
fn acl_credentials_in_the_url_work_and_never_reach_the_logs() {
    let server = RedisServer::start_with(&format!(
        "user default off\nuser app on >{PASSWORD} ~* &* +@all"
    ));
    let url = |password: &str| format!("redis://app:{password}@127.0.0.1:{}", server.port);
    for level in ["debug", "trace"] {
        let logs = run_and_collect_logs(level, &url(PASSWORD));
        assert!(logs.contains("Redis connected"), "{logs}");
        assert!(
            !logs.contains(PASSWORD),
            "the password leaked at {level}:\n{logs}"
        );
    }
    // A wrong password, or none: `check` cannot connect (exit 3), and says
    // so without the password.
    let said = check(&loop_conf(&url(&format!("wrong-{PASSWORD}"))), 5, 3);
    assert!(!said.contains(PASSWORD), "{said}");
    assert!(said.contains("connection `r`"), "{said}");
    check(
        &loop_conf(&format!("redis://127.0.0.1:{}", server.port)),
        5,
        3,
    );
}

#[test]
fn check_over_tls_trusts_the_given_ca_only() {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let server = RedisServer::with_tls(&ck.cert.pem(), &ck.key_pair.serialize_pem());
    let dir = crate::support::TempDir::new("redis-ca");
    let ca = dir.write("ca.pem", ck.cert.pem());
    let wrong = dir.write("other.pem", other.cert.pem());
    let url = format!("rediss://127.0.0.1:{}", server.port);
    let conf = |ca: &std::path::Path| {
        Conf::new()
            .connection("r", format!("redis: {{url: \"{url}\", tls: {{ca_file: {}}}}}", ca.display()))
            .probe("{name: tls, interval: 10ms, deadline: 2s, inject: {redis: {connection: r, stream: s}}, catch: {redis: {connection: r, stream: s, group: g}}}")
    };
    let said = check(&conf(&ca), 20, 0);
    assert_eq!(&row(&said, "tls")[1..5], ["20", "20", "0", "0"], "{said}");
    let said = check(&conf(&wrong), 5, 3);
    assert!(said.contains("connection `r`"), "{said}");
    // Plain Redis to a TLS listener does not pass either.
    check(
        &loop_conf(&format!("redis://127.0.0.1:{}", server.port)),
        5,
        3,
    );
}
