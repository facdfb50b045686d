//! The status page in a real browser (headless Chromium, Debian's
//! `chromium`): a NATS probe is healthy, then its broker is killed and the
//! page, as the browser renders it, shows the probe down within seconds. A
//! screenshot of the page during the outage is kept for CI's output at
//! `target/ci-artifacts/status-during-outage.png`.

use crate::support::{free_port, http_get, nats_conf, Kill, NatsServer, TempDir, CHIRP};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The longest one browser run may take (a cold start on a busy machine).
const BROWSER_LIMIT: Duration = Duration::from_secs(60);
/// How soon after the broker dies the page must say so (as chirp renders it).
const DOWN_WITHIN: Duration = Duration::from_secs(10);
/// How long the test polls with the browser (whose own start can be slow on
/// a busy machine) before it gives up.
const POLL_LIMIT: Duration = Duration::from_secs(60);
const WINDOW: (u32, u32) = (1440, 900);

fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("chromium"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "chromium is not installed: `apt-get install -y chromium` (Debian's package; .ci/run installs it) and rerun"
            )
        })
}

/// Where the screenshot stays after the test: `target/ci-artifacts/`.
fn artifact(name: &str) -> PathBuf {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .to_path_buf();
    let dir = target.join("ci-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/ci-artifacts");
    dir.join(name)
}

/// Runs headless Chromium on `url` with `args`, with a profile of its own
/// and nothing that reaches out to the network; returns its stdout.
fn browse(url: &str, args: &[String]) -> String {
    let profile = TempDir::new("chromium");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--mute-audio",
        "--force-device-scale-factor=1",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .arg(url)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    // Its own process group, so a run that hangs is ended with its helpers.
    .process_group(0);
    let mut child = cmd.spawn().expect("cannot start chromium");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let give_up = Instant::now() + BROWSER_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > give_up {
            let _ = Command::new("kill")
                .args(["-KILL", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            panic!(
                "chromium did not finish within {BROWSER_LIMIT:?}:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    assert!(status.success(), "chromium failed ({status}):\n{stderr}");
    stdout
}

fn dump_dom(url: &str) -> String {
    browse(url, &["--dump-dom".to_owned()])
}

/// The `<tr>` of probe `name` in a page, up to its end.
fn row<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let start = html.find(&format!(r#"<tr id="probe-{name}""#))?;
    let end = html[start..].find("</tr>")? + start;
    Some(&html[start..end])
}

/// The `data-state` of probe `name`'s row.
fn state<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let r = row(html, name)?;
    let tag = &r[..r.find('>')?];
    let v = tag.split(r#"data-state=""#).nth(1)?;
    v.split('"').next()
}

/// Fetches the page (and its `data-state` for `name`) until `want`, for at most `limit`.
fn wait_for_state(port: u16, name: &str, want: &[&str], limit: Duration) -> String {
    let give_up = Instant::now() + limit;
    loop {
        let page = http_get(port, "/").unwrap_or_default();
        if state(&page, name).is_some_and(|s| want.contains(&s)) {
            return page;
        }
        assert!(
            Instant::now() < give_up,
            "{name} was not {want:?} within {limit:?}; last page:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// When chirp rendered the page (`updated <time datetime=…>`, to the second).
fn generated(html: &str) -> SystemTime {
    let at = html
        .split(r#"updated <time datetime=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no update time in the page:\n{html}"));
    humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"))
}

/// The PNG's width and height, from its IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "not a PNG"
    );
    let n = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (n(16), n(20))
}

#[test]
fn a_real_broker_outage_shows_as_down_in_the_browser() {
    chromium();
    let mut nats = NatsServer::start();
    let port = free_port();
    let config = nats_conf(&nats.url())
        .listen(format!("127.0.0.1:{port}"))
        .probe(
            "{name: orders, interval: 100ms, deadline: 5s, \
             inject: {nats: {connection: main, subject: ci.orders}}, \
             catch: {nats: {connection: main, subject: ci.orders}}, \
             slo: {latency: {threshold: 500ms, objective: 99%}, delivery: {objective: 99.9%}}}",
        )
        .probe(
            "{name: self-test, interval: 200ms, deadline: 5s, \
             inject: {http: {url: /hooks/self-test}}, catch: {http: {}}}",
        )
        .file();
    let dir = TempDir::new("status");
    let log = dir.path().join("chirp.log");
    let _chirp = Kill(
        Command::new(&*CHIRP)
            .args(["run", "-c"])
            .arg(&config.path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start chirp"),
    );
    let url = format!("http://127.0.0.1:{port}/");
    let chirp_log = || std::fs::read_to_string(&log).unwrap_or_default();

    // Delivering first, as served and as the browser renders it: healthy,
    // or degraded when a loaded machine (CI) made a canary miss its
    // deadline in the last minute; never down.
    let up = ["healthy", "degraded"];
    wait_for_state(port, "orders", &up, Duration::from_secs(30));
    let dom = dump_dom(&url);
    assert!(
        state(&dom, "orders").is_some_and(|s| up.contains(&s)),
        "{dom}"
    );

    // A real outage: the broker is killed.
    nats.kill();
    let killed = Instant::now();
    let killed_wall = SystemTime::now();
    let mut dom;
    loop {
        dom = dump_dom(&url);
        if state(&dom, "orders") == Some("down") {
            break;
        }
        assert!(
            killed.elapsed() < POLL_LIMIT,
            "the page did not show `orders` down within {POLL_LIMIT:?} of the broker's death; last DOM:\n{dom}\nchirp's log:\n{}",
            chirp_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Timed by when chirp rendered the page, not by how long the browser took to start.
    let took = generated(&dom)
        .duration_since(killed_wall)
        .unwrap_or_default();
    assert!(
        took <= DOWN_WITHIN,
        "`orders` showed down only {took:?} after the broker was killed"
    );
    let orders = row(&dom, "orders").unwrap();
    // In words, not only in colour.
    assert!(orders.contains("</span> down</span>"), "{orders}");
    assert!(orders.contains("disconnected from the broker"), "{orders}");
    // The webhook probe does not share the broker: it is not down.
    assert_ne!(state(&dom, "self-test"), Some("down"), "{dom}");
    assert!(dom.contains("Needs attention"), "{dom}");
    eprintln!(
        "`orders` showed down on a page rendered {took:?} after the broker was killed (the page says the time to the second), seen by the browser after {:?}",
        killed.elapsed()
    );

    // The failed publishes show, with the same words as the log.
    let give_up = Instant::now() + POLL_LIMIT;
    while !row(&dom, "orders")
        .unwrap_or_default()
        .contains("not connected to NATS")
    {
        assert!(
            Instant::now() < give_up,
            "no publish error in the row: {}",
            row(&dom, "orders").unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
        dom = dump_dom(&url);
    }
    assert!(
        row(&dom, "orders").unwrap().contains("unavailable"),
        "{dom}"
    );

    // The script refreshes the table in place: with time running faster in
    // the browser, the page it shows is one it fetched itself, still down.
    let refreshed = browse(
        &url,
        &[
            "--virtual-time-budget=12000".to_owned(),
            "--dump-dom".to_owned(),
        ],
    );
    assert!(
        refreshed.contains(r#"data-refreshed=""#),
        "the page did not refresh itself:\n{refreshed}"
    );
    assert_eq!(state(&refreshed, "orders"), Some("down"), "{refreshed}");

    // Let a red minute-bar and a lost-canary count appear, then keep a picture.
    std::thread::sleep(Duration::from_secs(3));
    let shot = artifact("status-during-outage.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &url,
        &[
            format!("--screenshot={}", shot.display()),
            format!("--window-size={},{}", WINDOW.0, WINDOW.1),
            "--run-all-compositor-stages-before-draw".to_owned(),
        ],
    );
    let png =
        std::fs::read(&shot).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", shot.display()));
    assert_eq!(png_size(&png), WINDOW, "{}", shot.display());
    assert!(
        png.len() > 20_000,
        "a blank screenshot? {} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
}
