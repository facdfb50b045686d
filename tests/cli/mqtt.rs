//! MQTT as users run it: `check` over `mqtts://` with the test's own CA
//! (and exit 3 with another CA, or with no broker), and credentials in the
//! URL that work and never reach the logs, at any level.

use crate::support::{exits, free_port, Conf, MosquittoServer, Scrape, CHIRP};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Hunter2-mqtt-xyzzy-0451";

fn loop_conf(url: &str, tls: &str) -> Conf {
    Conf::new()
        .connection("m", format!("mqtt: {{url: \"{url}\"{tls}}}"))
        .probe("{name: loop, interval: 20ms, deadline: 2s, inject: {mqtt: {connection: m, topic: chirp/loop}}, catch: {mqtt: {connection: m, topic: chirp/+}}}")
}

fn check(conf: &Conf, code: i32) -> String {
    let cfg = conf.file();
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "20", "-c"])
            .arg(&cfg.path),
        code,
    );
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn check_over_tls_trusts_the_given_ca_only() {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let dir = crate::support::TempDir::new("mqtt-tls");
    let cert = dir.write("server.pem", ck.cert.pem());
    let key = dir.write("server.key", ck.key_pair.serialize_pem());
    let wrong = dir.write("other.pem", other.cert.pem());
    let broker = MosquittoServer::start_with(
        &format!("certfile {}\nkeyfile {}", cert.display(), key.display()),
        true,
    );
    let url = format!("mqtts://127.0.0.1:{}", broker.port);
    let said = check(
        &loop_conf(&url, &format!(", tls: {{ca_file: {}}}", cert.display())),
        0,
    );
    let row = said
        .lines()
        .find(|l| l.starts_with("loop "))
        .unwrap_or_else(|| panic!("no row: {said}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], ["20", "20", "0", "0"], "{row}");

    let said = check(
        &loop_conf(&url, &format!(", tls: {{ca_file: {}}}", wrong.display())),
        3,
    );
    assert!(said.contains("connection `m`"), "{said}");
    // Plain MQTT to a TLS listener does not pass either.
    check(
        &loop_conf(&format!("mqtt://127.0.0.1:{}", broker.port), ""),
        3,
    );
}

#[test]
fn check_exits_3_when_the_mqtt_broker_cannot_be_reached() {
    let said = check(
        &loop_conf(&format!("mqtt://127.0.0.1:{}", free_port()), ""),
        3,
    );
    assert!(
        said.contains("connection `m`: cannot connect to MQTT at mqtt://127.0.0.1:"),
        "{said}"
    );
}

fn run_and_collect_logs(level: &str, url: &str) -> String {
    let port = free_port();
    let cfg = loop_conf(url, "")
        .listen(format!("127.0.0.1:{port}"))
        .file();
    let mut child = Command::new(&*CHIRP)
        .args(["run", "-c"])
        .arg(&cfg.path)
        .env("CHIRP_LOG", level)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let delivered =
            Scrape::blocking(port).map(|s| s.sum("chirp_canaries_delivered_total", &[]));
        if delivered.is_some_and(|d| d >= 5.0) {
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
fn mqtt_url_credentials_work_and_never_reach_the_logs() {
    let dir = crate::support::TempDir::new("mqtt-passwd");
    let file = dir.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-c", "-b"])
        .arg(&file)
        .args(["alice", PASSWORD])
        .status()
        .expect("mosquitto_passwd (apt-get install -y mosquitto)");
    assert!(made.success());
    let broker = MosquittoServer::start_with(&format!("password_file {}", file.display()), false);
    for level in ["debug", "trace"] {
        let url = format!("mqtt://alice:{PASSWORD}@127.0.0.1:{}", broker.port);
        let logs = run_and_collect_logs(level, &url);
        assert!(logs.contains("MQTT connected"), "{logs}");
        // The client library did log at this level (so the check means something).
        assert!(
            logs.contains("rumqttc"),
            "no client library lines at {level}:\n{logs}"
        );
        assert!(
            !logs.contains(PASSWORD),
            "the password leaked at {level}:\n{logs}"
        );
    }
    // A wrong password: `check` cannot connect (exit 3), and says so without it.
    let said = check(
        &loop_conf(
            &format!("mqtt://alice:wrong-{PASSWORD}@127.0.0.1:{}", broker.port),
            "",
        ),
        3,
    );
    assert!(!said.contains(PASSWORD), "{said}");
}
