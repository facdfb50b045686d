//! The listener: `/readyz` means "configuration loaded and listener
//! serving", whatever the brokers do; `check` binds nothing it does not need,
//! so it runs next to a `run` of the same configuration; a port already taken
//! is a clear error; and shutdown ends within the grace period plus a small
//! margin, whatever a client is waiting for.

use crate::support::{
    self, exits, free_port, http_get, nats_conf, Conf, Kill, NatsServer, Scrape, CHIRP,
};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_stays_ready_while_a_broker_is_down_and_probe_up_says_so() {
    // Nothing listens on this port: the broker is down from the start.
    let down = format!("nats://127.0.0.1:{}", free_port());
    let config = nats_conf(&down)
        .probe("{name: orders, interval: 100ms, inject: {nats: {connection: main, subject: a}}, catch: {nats: {connection: main, subject: a}}}")
        .build();
    let rt = support::start(&config).await;
    let addr = rt.addr.expect("a listener");
    let readyz = reqwest::get(format!("http://{addr}/readyz")).await.unwrap();
    assert_eq!(
        readyz.status(),
        200,
        "a broker outage must not take chirp out of its Service"
    );
    assert_eq!(readyz.text().await.unwrap(), "ready\n");
    let scrape = Scrape::get(addr).await;
    assert_eq!(scrape.sum("chirp_probe_up", &[("probe", "orders")]), 0.0);
    let api = reqwest::get(format!("http://{addr}/api/probes"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["probes"][0]["up"], false, "{api}");
    rt.shutdown().await;
}

#[test]
fn check_runs_next_to_run_binding_only_what_it_needs() {
    let nats = NatsServer::start();
    let port = free_port();
    let cfg = nats_conf(&nats.url())
        .listen(format!("127.0.0.1:{port}"))
        .probe("{name: nats-loop, interval: 10ms, inject: {nats: {connection: main, subject: l}}, catch: {nats: {connection: main, subject: l}}}")
        .probe("{name: self, interval: 10ms, inject: {http: {url: /hooks/self}}, catch: {http: {}}}")
        .file();
    let _run = Kill(
        Command::new(&*CHIRP)
            .args(["run", "-c"])
            .arg(&cfg.path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let give_up = Instant::now() + Duration::from_secs(10);
    while http_get(port, "/readyz").is_none() {
        assert!(
            Instant::now() < give_up,
            "chirp run did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // No probe of this check needs the listener: it binds nothing.
    let check = |probe: &str| {
        let mut c = Command::new(&*CHIRP);
        c.args(["check", "--count", "20", "--probe", probe, "-c"])
            .arg(&cfg.path);
        c
    };
    exits(&mut check("nats-loop"), 0);
    // The webhook probe needs one: an ephemeral port, not the configured one.
    exits(&mut check("self"), 0);
    // Asked for the port `run` holds, it says so and which flag avoids the clash.
    let out = exits(
        check("self").args(["--listen", &format!("127.0.0.1:{port}")]),
        2,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.contains("in use"), "{err}");
}

#[test]
fn run_on_a_taken_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = Conf::new()
        .listen(format!("127.0.0.1:{port}"))
        .probe("{name: self, inject: {http: {url: /hooks/self}}, catch: {http: {}}}")
        .file();
    let out = exits(Command::new(&*CHIRP).args(["run", "-c"]).arg(&cfg.path), 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{err}"
    );
}

#[test]
fn shutdown_ends_within_the_grace_period_and_a_small_margin() {
    // An endpoint that accepts connections and never answers: every publish
    // waits on its 30 s timeout, every canary on its 30 s deadline.
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
        .top("shutdown_grace: 1s")
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
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let sent = Scrape::blocking(port).map(|s| s.sum("chirp_canaries_in_flight", &[]));
        if sent.is_some_and(|n| n >= 5.0) {
            break;
        }
        assert!(Instant::now() < give_up, "no canaries in flight within 10s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stopping = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let took = stopping.elapsed();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    // 1 s of grace plus the 5 s margin, not the 30 s the publishes would wait.
    assert!(
        took < Duration::from_secs(10),
        "shutdown took {took:?}:\n{err}"
    );
    assert!(
        err.contains("Grace period expired with canaries still in flight"),
        "{err}"
    );
}
