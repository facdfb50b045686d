//! The listener against clients that owe it nothing: a flood of slow
//! connections is bounded (connections, file descriptors, memory) while
//! `/metrics` and the webhook receiver keep working, and each limit (header,
//! body and idle timeouts, body size, malformed requests) closes what it
//! should and is counted by reason. Figures are printed, not asserted: the
//! assertions are bounds and counts.

use crate::support::{free_port, http_get, Conf, Kill, Scrape, CHIRP};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `chirp run` on `cfg` with the open-file limit a default system
/// gives a service (soft 1,024), and waits until it serves.
fn start(cfg: &crate::support::ConfigFile, port: u16) -> Kill {
    let mut cmd = Command::new(&*CHIRP);
    cmd.args(["run", "-c"])
        .arg(&cfg.path)
        .env("CHIRP_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child.
    unsafe {
        cmd.pre_exec(|| {
            let (_, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
            rlimit::setrlimit(rlimit::Resource::NOFILE, 1024.min(hard), hard)
        });
    }
    let child = Kill(cmd.spawn().unwrap());
    let give_up = Instant::now() + Duration::from_secs(10);
    while http_get(port, "/readyz").is_none() {
        assert!(Instant::now() < give_up, "chirp did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024.0
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A scrape, and how long it took; panics if `/metrics` does not answer.
fn timed_scrape(port: u16) -> (Scrape, Duration) {
    let t = Instant::now();
    let s = Scrape::blocking(port).expect("/metrics must answer during the flood");
    (s, t.elapsed())
}

#[test]
fn a_flood_of_slow_connections_is_bounded_and_metrics_keep_answering() {
    const FLOOD: usize = 2000;
    const MAX_CONNECTIONS: f64 = 1024.0; // the default
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let port = free_port();
    let cfg = Conf::new()
        .listen(format!("127.0.0.1:{port}"))
        .probe(
            "{name: self, interval: 50ms, inject: {http: {url: /hooks/self}}, catch: {http: {}}}",
        )
        .file();
    let chirp = start(&cfg, port);
    let pid = chirp.0.id();
    std::thread::sleep(Duration::from_secs(1));
    let (before, _) = timed_scrape(port);
    let delivered_before = before.sum("chirp_canaries_delivered_total", &[]);
    let rss_before = rss_mib(pid);
    let fds_before = open_fds(pid);

    // Half hold a request head that never ends, half a webhook body that
    // stops 1,000 bytes short (just under the default limit of 16 KiB).
    let mut flood = Vec::with_capacity(FLOOD);
    let started = Instant::now();
    let mut rss_peak = rss_before;
    let mut failed = 0;
    for i in 0..FLOOD {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            // Not accepting at all (as when out of file descriptors):
            // the scrapes below tell.
            failed += 1;
            if failed == 10 {
                break;
            }
            continue;
        };
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        let _ = if i % 2 == 0 {
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        } else {
            let head = b"POST /hooks/self HTTP/1.1\r\nHost: x\r\nContent-Length: 16000\r\n\r\n";
            s.write_all(head).and_then(|_| s.write_all(&[b'x'; 15000]))
        };
        flood.push(s);
        if i % 250 == 0 {
            rss_peak = rss_peak.max(rss_mib(pid));
        }
    }
    let opened = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let mut slowest = Duration::ZERO;
    let mut during = None;
    for _ in 0..5 {
        let (s, took) = timed_scrape(port);
        slowest = slowest.max(took);
        rss_peak = rss_peak.max(rss_mib(pid));
        during = Some(s);
        std::thread::sleep(Duration::from_millis(200));
    }
    let during = during.unwrap();
    let fds_during = open_fds(pid);
    let open = during.sum("chirp_http_connections", &[]);
    let refused = during.sum(
        "chirp_http_requests_rejected_total",
        &[("reason", "connections")],
    );
    eprintln!(
        "flood: {} connections opened in {opened:?}; /metrics slowest {slowest:?}; \
         RSS {rss_before:.1} MiB before, peak {rss_peak:.1} MiB; fds {fds_before} before, {fds_during} during; \
         open {open}, refused for the limit {refused}",
        flood.len()
    );
    assert!(
        flood.len() >= FLOOD * 9 / 10,
        "only {} connected",
        flood.len()
    );
    assert!(open <= MAX_CONNECTIONS, "{open} connections open");
    assert!(
        fds_during <= fds_before + MAX_CONNECTIONS as usize + 8,
        "{fds_during} descriptors open (before: {fds_before})"
    );
    assert!(
        refused >= (flood.len() as f64 - MAX_CONNECTIONS),
        "{refused} refusals for {} connections",
        flood.len()
    );
    assert!(rss_peak < 200.0, "RSS {rss_peak:.1} MiB under the flood");
    // The webhook pipeline went on: canaries still delivered, none lost.
    assert!(during.sum("chirp_canaries_delivered_total", &[]) > delivered_before);
    assert_eq!(during.sum("chirp_canaries_lost_total", &[]), 0.0);
    assert_eq!(during.sum("chirp_canaries_publish_failed_total", &[]), 0.0);

    drop(flood);
    let give_up = Instant::now() + Duration::from_secs(15);
    loop {
        let (s, _) = timed_scrape(port);
        // What may stay: this scrape's own connection and the webhook
        // client's keep-alive pool (at most 4 idle; requests slowed by the
        // flood overlap and open more than the one a quiet loop uses).
        if s.sum("chirp_http_connections", &[]) <= 5.0 {
            break;
        }
        assert!(
            Instant::now() < give_up,
            "connections stayed open after the flood"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The listener hands memory back within seconds of a flood's end.
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut rss_after = rss_mib(pid);
    while rss_after >= rss_before + 10.0 && Instant::now() < give_up {
        std::thread::sleep(Duration::from_millis(500));
        rss_after = rss_mib(pid);
    }
    let fds_after = open_fds(pid);
    eprintln!("after the flood: RSS {rss_after:.1} MiB, fds {fds_after}");
    assert!(
        rss_after < rss_before + 10.0,
        "memory was not returned: {rss_before:.1} MiB before, {rss_peak:.1} peak, {rss_after:.1} after"
    );
    // Besides the flood's: the webhook loop's extra pooled connections
    // (up to 3 more, two descriptors each: both ends are chirp's).
    assert!(
        fds_after <= fds_before + 6 + 4,
        "{fds_after} descriptors left open"
    );
    let (after, _) = timed_scrape(port);
    assert_eq!(after.sum("chirp_canaries_lost_total", &[]), 0.0);
}

/// Reads until the peer closes (or `limit`, a bound against a hang):
/// what it sent, and whether it closed.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (String, bool) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (String::from_utf8_lossy(&got).into_owned(), true)
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[test]
fn each_limit_closes_what_it_should_and_counts_it() {
    let port = free_port();
    let cfg = Conf::new()
        .listen(format!(
            "{{address: 127.0.0.1:{port}, header_timeout: 1s, body_timeout: 1s, idle_timeout: 2s, max_body: 2048}}"
        ))
        .probe("{name: self, interval: 1h, inject: {http: {url: /hooks/self}}, catch: {http: {}}}")
        .file();
    let _chirp = start(&cfg, port);
    let connect = || TcpStream::connect(("127.0.0.1", port)).unwrap();
    let bound = Duration::from_secs(10);
    let rejected = |reason: &str| {
        Scrape::blocking(port)
            .unwrap()
            .sum("chirp_http_requests_rejected_total", &[("reason", reason)])
    };
    let probe_rejected = || {
        Scrape::blocking(port)
            .unwrap()
            .sum("chirp_messages_rejected_total", &[("probe", "self")])
    };
    let before = probe_rejected();

    // Headers that never end: closed, without an answer.
    let mut head = connect();
    head.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A connection that never sends a byte: the same clock, from its accept.
    let mut mute = connect();
    // A body that stops short: 408, and `rejected` for the probe.
    let mut body = connect();
    body.write_all(b"POST /hooks/self HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":")
        .unwrap();
    let (said, closed) = read_until_closed(&mut head, bound);
    assert!(closed && said.is_empty(), "{said:?}");
    let (said, closed) = read_until_closed(&mut mute, bound);
    assert!(closed && said.is_empty(), "{said:?}");
    let (said, closed) = read_until_closed(&mut body, bound);
    assert!(closed && said.starts_with("HTTP/1.1 408"), "{said:?}");
    assert_eq!(rejected("header_timeout"), 2.0);
    assert_eq!(rejected("body_timeout"), 1.0);

    // Too large, declared or chunked: 413 at once, and `rejected` for the probe.
    let mut big = connect();
    big.write_all(b"POST /hooks/self HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n")
        .unwrap();
    let (said, closed) = read_until_closed(&mut big, bound);
    assert!(closed && said.starts_with("HTTP/1.1 413"), "{said:?}");
    let mut chunked = connect();
    let chunk = format!("{:x}\r\n{}\r\n", 3000, "y".repeat(3000));
    chunked
        .write_all(
            format!(
                "POST /hooks/self HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{chunk}"
            )
            .as_bytes(),
        )
        .unwrap();
    let (said, closed) = read_until_closed(&mut chunked, bound);
    assert!(closed && said.starts_with("HTTP/1.1 413"), "{said:?}");
    assert_eq!(rejected("body_too_large"), 2.0);
    assert_eq!(
        probe_rejected() - before,
        3.0,
        "408 and two 413s on /hooks/self"
    );

    // Not HTTP: 400 and closed.
    let mut junk = connect();
    junk.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n")
        .unwrap();
    let (said, closed) = read_until_closed(&mut junk, bound);
    assert!(closed && said.starts_with("HTTP/1.1 400"), "{said:?}");
    assert_eq!(rejected("malformed"), 1.0);

    // A kept-alive connection is answered, then closed when idle; not a refusal.
    let mut kept = connect();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (said, closed) = read_until_closed(&mut kept, bound);
    assert!(closed && said.starts_with("HTTP/1.1 200"), "{said:?}");
    for reason in [
        "header_timeout",
        "body_timeout",
        "connections",
        "unauthorized",
        "tls",
    ] {
        let want = match reason {
            "header_timeout" => 2.0,
            "body_timeout" => 1.0,
            _ => 0.0,
        };
        assert_eq!(rejected(reason), want, "{reason}");
    }
}

#[test]
fn a_request_begun_on_a_kept_alive_connection_has_the_header_clock() {
    // Idle connections may stay a minute; an unfinished head only a second,
    // even when it starts on a connection that was idle.
    let port = free_port();
    let cfg = Conf::new()
        .listen(format!(
            "{{address: 127.0.0.1:{port}, header_timeout: 1s, idle_timeout: 60s}}"
        ))
        .probe("{name: self, interval: 1h, inject: {http: {url: /hooks/self}}, catch: {http: {}}}")
        .file();
    let _chirp = start(&cfg, port);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    // Idle for longer than the header timeout: still open.
    std::thread::sleep(Duration::from_millis(1500));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost:").unwrap();
    let (said, closed) = read_until_closed(&mut s, Duration::from_secs(10));
    assert!(
        closed && said.is_empty(),
        "an unfinished head on a kept-alive connection outlived header_timeout: {said:?}"
    );
    let scrape = Scrape::blocking(port).unwrap();
    assert_eq!(
        scrape.sum(
            "chirp_http_requests_rejected_total",
            &[("reason", "header_timeout")]
        ),
        1.0
    );
}
