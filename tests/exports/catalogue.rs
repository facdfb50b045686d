//! One catalogue of metrics feeds both exporters and the reference: the
//! tables in `docs/metrics.md` are the catalogue's, every Prometheus name is
//! on `/metrics`, and every OTLP name reaches a collector, from one run.

use crate::support::otlp::Receiver;
use crate::support::{self, Scrape};
use chirp::export::catalogue::{markdown, Group, Kind, CATALOGUE};
use std::collections::BTreeMap;
use std::time::Duration;

/// What Prometheus 2.x sends: OpenMetrics preferred, the text format after.
pub const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// (Content-Type, body) of `/metrics` asked for with `accept`.
pub async fn scrape_as(addr: std::net::SocketAddr, accept: Option<&str>) -> (String, String) {
    let mut req = reqwest::Client::new().get(format!("http://{addr}/metrics"));
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let resp = req.send().await.expect("scrape /metrics");
    assert!(resp.status().is_success(), "{}", resp.status());
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_owned();
    (ctype, resp.text().await.unwrap())
}

/// Passes `text` through `promtool check metrics`, which parses the text
/// format and lints names, units and labels; any complaint fails.
pub fn promtool_check_metrics(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(support::find_bin("promtool", "prometheus"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}"
    );
}

/// Every sample as `name{labels sorted}` → value, in either format (`le`
/// read as a number: one format writes `1`, the other `1.0`).
fn series(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = key.split_once('{').unwrap_or((key, "}"));
            let mut labels: Vec<String> = labels
                .trim_end_matches('}')
                .split("\",")
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let kv = kv.trim_end_matches('"');
                    match kv.strip_prefix("le=\"") {
                        Some(le) if le != "+Inf" => format!("le={}", le.parse::<f64>().unwrap()),
                        _ => kv.to_owned(),
                    }
                })
                .collect();
            labels.sort();
            (
                format!("{name}{{{}}}", labels.join(",")),
                value.parse().unwrap(),
            )
        })
        .collect()
}

/// With `CHIRP_BLESS=1`, rewrites the tables from the catalogue instead.
#[test]
fn docs_metrics_md_shows_the_catalogue() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
    let mut doc = std::fs::read_to_string(path).unwrap();
    if std::env::var_os("CHIRP_BLESS").is_some() {
        for group in Group::ALL {
            let open = format!("<!-- catalogue:{} -->\n", group.as_str());
            let start = doc.find(&open).expect("a marker per group") + open.len();
            let end = start
                + doc[start..]
                    .find("<!-- /catalogue -->")
                    .expect("a closing marker");
            doc.replace_range(start..end, &markdown(group));
        }
        std::fs::write(path, &doc).unwrap();
    }
    for group in Group::ALL {
        let open = format!("<!-- catalogue:{} -->\n", group.as_str());
        let want = markdown(group);
        let Some(start) = doc.find(&open) else {
            panic!(
                "docs/metrics.md has no `{}` marker; add it with this table:\n{want}",
                open.trim()
            )
        };
        let body = &doc[start + open.len()..];
        let end = body
            .find("<!-- /catalogue -->")
            .expect("a closing `<!-- /catalogue -->` marker");
        assert_eq!(
            &body[..end],
            want,
            "docs/metrics.md and the catalogue differ for `{}`; the catalogue says:\n{want}",
            group.as_str()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_catalogue_is_exported_both_ways() {
    let rx = Receiver::start().await;
    let config = support::Conf::new()
        .top(&format!("export: {{otlp: {{endpoint: 'http://{}', interval: 1s}}}}", rx.grpc))
        .connection("k", "kafka: {brokers: embedded}")
        .probe("{name: loop, interval: 20ms, inject: {http: {url: /hooks/loop}}, catch: {http: {}}, slo: {latency: {threshold: 1s, objective: 99%}, delivery: {objective: 99%}}}")
        .probe("{name: k, interval: 20ms, inject: {kafka: {connection: k, topic: t}}, catch: {kafka: {connection: k, topic: t}}}")
        .build();
    let mut rt = support::start_counted(&config, 50).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    let addr = rt.addr.unwrap();
    let scrape = Scrape::get(addr).await;
    let (text_type, text) = scrape_as(addr, None).await;
    let (om_type, om) = scrape_as(addr, Some(PROMETHEUS_ACCEPT)).await;
    let r = &rx;
    support::wait_for("an export after the run", Duration::from_secs(10), || {
        r.received().metrics_named("chirp.canaries.delivered").len() >= 2
    })
    .await;
    rt.shutdown().await;
    let got = rx.received();
    // Every series says which environment it is from, chirp's own too: an
    // alert on `absent(chirp_build_info{environment="…"})` depends on it.
    let environment = format!("environment=\"{}\"", config.environment);
    for line in scrape
        .text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(line.contains(&environment), "no {environment}: {line}");
    }
    assert!(
        scrape
            .text
            .contains(&format!("revision=\"{}\"", chirp::REVISION)),
        "chirp_build_info has no revision"
    );
    // The default is the text format 0.0.4, which promtool reads and lints;
    // OpenMetrics when asked, with the same series and, the run being over,
    // the same values where they cannot move between two scrapes.
    assert_eq!(text_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        om_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(om.ends_with("# EOF\n") && !text.contains("# EOF"));
    promtool_check_metrics(&text);
    let (text_series, om_series) = (series(&text), series(&om));
    assert_eq!(
        text_series.keys().collect::<Vec<_>>(),
        om_series.keys().collect::<Vec<_>>(),
        "the two formats carry different series"
    );
    // Values that cannot move once the run is drained: outcomes,
    // observations, latency histograms, SLI totals (not exports, the
    // process, sliding windows or time slices, which go on between scrapes).
    let settled = [
        "chirp_canaries_",
        "chirp_messages_",
        "chirp_latency_seconds",
        "chirp_publish_latency_seconds",
        "chirp_schedule_lag_seconds",
        "chirp_sli_",
        "chirp_build_info",
    ];
    let mut compared = 0;
    for (key, v) in &text_series {
        if settled.iter().any(|p| key.starts_with(p)) {
            let other = om_series[key];
            assert!(
                *v == other || (v.is_nan() && other.is_nan()),
                "{key}: {v} vs {other}"
            );
            compared += 1;
        }
    }
    assert!(compared > 100, "only {compared} values compared");
    for m in CATALOGUE {
        assert!(
            scrape.text.contains(&format!("# TYPE {} ", m.prometheus)),
            "{} is not on /metrics",
            m.prometheus
        );
        if let Some(otel) = m.otel {
            let arrived = got.metrics_named(otel);
            assert!(!arrived.is_empty(), "{otel} did not arrive over OTLP");
            if m.kind != Kind::Histogram && m.kind != Kind::Info {
                assert_eq!(arrived[0].unit, m.unit, "{otel}");
            }
        }
    }
}

/// The `process_*` metrics are chirp's own process as the kernel sees it,
/// and move with it: CPU time under a fast probe's load, open descriptors
/// with connections held open to the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_metrics_are_chirps_own_and_move_under_load() {
    let port = support::free_port();
    let cfg = support::Conf::new()
        .listen(format!("127.0.0.1:{port}"))
        .probe("{name: busy, interval: 2ms, inject: {http: {url: /hooks/busy}}, catch: {http: {}}}")
        .file();
    let spawned = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let chirp = support::Kill(
        std::process::Command::new(&*support::CHIRP)
            .args(["run", "-c"])
            .arg(&cfg.path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = chirp.0.id();
    let scrape = || async move { Scrape::blocking(port) };
    support::wait_for_async("chirp's first scrape", Duration::from_secs(30), || async {
        scrape().await.is_some()
    })
    .await;
    let first = scrape().await.expect("chirp answers");
    let one = |s: &Scrape, name: &str| s.sum(name, &[("environment", "test")]);

    // Each is this process's, not the scraper's.
    let start = one(&first, "process_start_time_seconds");
    assert!(
        (spawned - 2.0..spawned + 30.0).contains(&start),
        "start {start}, spawned {spawned}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let soft: f64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("a soft limit in /proc/<pid>/limits");
    assert_eq!(one(&first, "process_max_fds"), soft);
    let rss = one(&first, "process_resident_memory_bytes");
    assert!(
        rss > 1e6 && rss <= one(&first, "process_virtual_memory_bytes"),
        "{rss}"
    );

    // CPU time accrues under the probe's 500 canaries a second.
    let cpu = one(&first, "process_cpu_seconds_total");
    support::wait_for_async(
        "process_cpu_seconds_total to grow",
        Duration::from_secs(30),
        || async {
            scrape()
                .await
                .is_some_and(|s| one(&s, "process_cpu_seconds_total") > cpu)
        },
    )
    .await;

    // 50 idle connections held open are about 50 more descriptors (the
    // probe's own connections come and go: 40 is the margin).
    let fds = one(&first, "process_open_fds");
    let held: Vec<std::net::TcpStream> = (0..50)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    support::wait_for_async(
        "process_open_fds to count held connections",
        Duration::from_secs(10),
        || async {
            scrape()
                .await
                .is_some_and(|s| one(&s, "process_open_fds") >= fds + 40.0)
        },
    )
    .await;
    drop(held);
    // Within a few seconds: before the listener's header timeout (10 s)
    // would close them anyway.
    support::wait_for_async(
        "process_open_fds to fall back",
        Duration::from_secs(3),
        || async {
            scrape()
                .await
                .is_some_and(|s| one(&s, "process_open_fds") < fds + 40.0)
        },
    )
    .await;
}
