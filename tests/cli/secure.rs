//! TLS and authentication on chirp's own listener: health endpoints stay
//! open, everything else asks for credentials (bearer or basic), webhooks
//! keep their HMAC, the self-test loop trusts exactly chirp's own
//! certificate, and a certificate replaced on disk is served without a
//! restart (a broken one is refused, logged once, and the old one kept).

use crate::support::{free_port, Conf, Kill, TempDir, CHIRP};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "listener-bearer-token-7c1e";
const PASSWORD: &str = "listener-basic-pw-93ad";

fn certificate() -> (String, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["chirp.test".into()]).unwrap();
    (ck.cert.pem(), ck.key_pair.serialize_pem())
}

/// A client that reaches 127.0.0.1:`port` as `chirp.test` and trusts only `cert`.
fn client(port: u16, cert: &str) -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cert.as_bytes()).unwrap())
        .resolve("chirp.test", ([127, 0, 0, 1], port).into())
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn tls_and_credentials_guard_all_but_health_and_a_new_certificate_is_served_without_restart() {
    let dir = TempDir::new("tls");
    let (cert1, key1) = certificate();
    let cert_path = dir.write("tls.crt", &cert1);
    let key_path = dir.write("tls.key", &key1);
    let port = free_port();
    let cfg = Conf::new()
        .listen(format!(
            "{{address: 127.0.0.1:{port}, tls: {{cert_file: {}, key_file: {}}}, auth: {{bearer_token: {TOKEN}, basic: {{username: prom, password: {PASSWORD}}}}}}}",
            cert_path.display(),
            key_path.display()
        ))
        .probe("{name: self, interval: 50ms, inject: {http: {url: /hooks/self}}, catch: {http: {}}}")
        .file();
    let log = dir.path().join("chirp.log");
    let child = Kill(
        Command::new(&*CHIRP)
            .args(["run", "-c"])
            .arg(&cfg.path)
            .env("CHIRP_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let https = |path: &str| format!("https://chirp.test:{port}{path}");
    let c1 = client(port, &cert1);
    let give_up = Instant::now() + Duration::from_secs(10);
    while !c1
        .get(https("/healthz"))
        .send()
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < give_up, "no TLS listener on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Health is open; everything else wants credentials.
    assert_eq!(c1.get(https("/readyz")).send().unwrap().status(), 200);
    let mut refused = 0.0;
    for path in ["/metrics", "/api/probes", "/", "/-/reload", "/nothing"] {
        let r = c1.get(https(path)).send().unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        refused += 1.0;
    }
    let wrong = c1
        .get(https("/metrics"))
        .bearer_auth("not-the-token")
        .send()
        .unwrap();
    assert_eq!(wrong.status(), 401);
    refused += 1.0;
    let basic = c1
        .get(https("/api/probes"))
        .basic_auth("prom", Some(PASSWORD))
        .send()
        .unwrap();
    assert_eq!(basic.status(), 200);
    let scrape = |c: &reqwest::blocking::Client| {
        let r = c.get(https("/metrics")).bearer_auth(TOKEN).send().unwrap();
        assert_eq!(r.status(), 200);
        r.text().unwrap()
    };
    // The self-test loop reaches the listener over TLS (its certificate
    // names chirp.test, not 127.0.0.1: the loop trusts the certificate itself).
    let give_up = Instant::now() + Duration::from_secs(10);
    while metric(
        &scrape(&c1),
        "chirp_canaries_delivered_total",
        "probe=\"self\"",
    ) < 5.0
    {
        assert!(
            Instant::now() < give_up,
            "the self-test loop delivers nothing over TLS"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Plain HTTP on the TLS port: the handshake fails and is counted.
    let _ = crate::support::http_get(port, "/healthz");
    let text = scrape(&c1);
    assert_eq!(
        metric(
            &text,
            "chirp_http_requests_rejected_total",
            "reason=\"unauthorized\""
        ),
        refused
    );
    assert_eq!(
        metric(
            &text,
            "chirp_http_requests_rejected_total",
            "reason=\"tls\""
        ),
        1.0
    );

    // A new certificate on disk is served within the reload period, and
    // the loop follows it.
    let (cert2, key2) = certificate();
    std::fs::write(&key_path, &key2).unwrap();
    std::fs::write(&cert_path, &cert2).unwrap();
    let c2 = client(port, &cert2);
    let give_up = Instant::now() + Duration::from_secs(20);
    while c2.get(https("/healthz")).send().is_err() {
        assert!(
            Instant::now() < give_up,
            "the new certificate was not loaded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A new connection (a pooled one keeps its session) gets the new certificate.
    let fresh = client(port, &cert1);
    assert!(
        fresh.get(https("/healthz")).send().is_err(),
        "the old certificate is still served"
    );
    let delivered = metric(
        &scrape(&c2),
        "chirp_canaries_delivered_total",
        "probe=\"self\"",
    );
    let give_up = Instant::now() + Duration::from_secs(10);
    while metric(
        &scrape(&c2),
        "chirp_canaries_delivered_total",
        "probe=\"self\"",
    ) < delivered + 5.0
    {
        assert!(
            Instant::now() < give_up,
            "the self-test loop stopped after the reload"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A broken certificate is refused: the one in use stays.
    std::fs::write(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let give_up = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("does not load")
    {
        assert!(
            Instant::now() < give_up,
            "the broken certificate was not noticed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Two more reads of the same broken pair: said once, still served.
    std::thread::sleep(Duration::from_secs(11));
    let fresh = client(port, &cert2);
    assert_eq!(fresh.get(https("/healthz")).send().unwrap().status(), 200);
    let text = scrape(&c2);
    assert_eq!(
        metric(&text, "chirp_canaries_lost_total", "probe=\"self\""),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "chirp_canaries_publish_failed_total",
            "probe=\"self\""
        ),
        0.0
    );

    drop(child);
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        err.matches("Loaded the listener's new TLS certificate")
            .count(),
        1,
        "{err}"
    );
    assert_eq!(
        err.matches("does not load; keeping the one in use").count(),
        1,
        "{err}"
    );
    for secret in [TOKEN, PASSWORD] {
        assert!(
            !err.contains(secret),
            "a credential reached the log:\n{err}"
        );
    }
}

#[test]
fn a_missing_or_broken_certificate_stops_run_with_its_file_named() {
    let dir = TempDir::new("tls-bad");
    let (cert, _) = certificate();
    let cert_path = dir.write("tls.crt", &cert);
    let key_path = dir.write("tls.key", "not a key");
    for (c, k, says) in [
        (
            cert_path.display().to_string(),
            "/nonexistent/tls.key".to_owned(),
            "cannot read `/nonexistent/tls.key`",
        ),
        (
            cert_path.display().to_string(),
            key_path.display().to_string(),
            "holds no PEM private key",
        ),
    ] {
        let cfg = Conf::new()
            .listen(format!(
                "{{address: 127.0.0.1:0, tls: {{cert_file: {c}, key_file: {k}}}}}"
            ))
            .probe("{name: self, inject: {http: {url: /hooks/self}}, catch: {http: {}}}")
            .file();
        let out =
            crate::support::exits(Command::new(&*CHIRP).args(["run", "-c"]).arg(&cfg.path), 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}
