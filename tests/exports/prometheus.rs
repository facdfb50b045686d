//! A real Prometheus (Debian package `prometheus`) scrapes `chirp run` and
//! evaluates `chirp rules`: the compliance it records equals chirp's own
//! gauge from the same scrape. A test relay drops every fourth canary, so the
//! compared value is not a trivial 1.

use crate::support::{self, free_port, Kill, KEY};
use axum::body::Bytes;
use axum::http::HeaderMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn prometheus_bin() -> String {
    ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or_else(|| {
            panic!("prometheus is not installed: `apt-get install -y prometheus` and rerun")
        })
        .to_owned()
}

async fn query(
    http: &reqwest::Client,
    base: &str,
    q: &str,
    time: Option<f64>,
) -> serde_json::Value {
    let mut params = vec![("query", q.to_owned())];
    if let Some(t) = time {
        params.push(("time", format!("{t:.3}")));
    }
    let body = http
        .get(format!("{base}/api/v1/query"))
        .query(&params)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["status"], "success", "{v}");
    v["data"]["result"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_records_the_same_compliance_as_chirp() {
    let dir = std::env::temp_dir().join(format!("chirp-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chirp_port = free_port();

    // Relay: chirp POSTs canaries here; every fourth is dropped, the rest go to chirp's webhook.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("http://{}/in", listener.local_addr().unwrap());
    let seen = Arc::new(AtomicU64::new(0));
    let hook = format!("http://127.0.0.1:{chirp_port}/hooks/lossy");
    // Closed until Prometheus has scraped chirp once: no canary resolves
    // before that (the deadline is longer), so chirp's counters and
    // Prometheus' increase() cover the same canaries.
    let (gate, gate_rx) = tokio::sync::watch::channel(false);
    let app = axum::Router::new().route(
        "/in",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let (seen, hook, mut gate_rx) = (Arc::clone(&seen), hook.clone(), gate_rx.clone());
            async move {
                if seen.fetch_add(1, Ordering::Relaxed) % 4 != 3 {
                    tokio::spawn(async move {
                        let _ = gate_rx.wait_for(|open| *open).await;
                        let sig = headers.get("X-Chirp-Signature").cloned();
                        let mut req = reqwest::Client::new().post(&hook).body(body);
                        if let Some(s) = sig {
                            req = req.header("X-Chirp-Signature", s);
                        }
                        let _ = req.send().await;
                    });
                }
                "ok"
            }
        }),
    );
    let relay = tokio::spawn(async move { axum::serve(listener, app).await });

    let cfg = dir.join("probes.yaml");
    std::fs::write(
        &cfg,
        format!(
            "environment: e2e\nlisten: 127.0.0.1:{chirp_port}\nsigning_key: {KEY}\nprobes:\n  - name: lossy\n    interval: 50ms\n    deadline: 8s\n    inject: {{http: {{url: \"{relay_url}\"}}}}\n    catch: {{http: {{}}}}\n    slo:\n      delivery: {{objective: 99%}}\n      period: 1h\n"
        ),
    )
    .unwrap();
    let rules = Command::new(&*support::CHIRP)
        .args(["rules", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(rules.status.success());
    std::fs::write(dir.join("rules.yml"), &rules.stdout).unwrap();
    let prom_port = free_port();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [rules.yml]\nscrape_configs:\n  - job_name: chirp\n    static_configs: [{{targets: ['127.0.0.1:{chirp_port}']}}]\n"
        ),
    )
    .unwrap();

    let _chirp = Kill(
        Command::new(&*support::CHIRP)
            .args(["run", "-c"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _prom = Kill(
        Command::new(prometheus_bin())
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{prom_port}");
    let http = reqwest::Client::new();
    support::wait_for_async("Prometheus to be ready", Duration::from_secs(30), || {
        let (http, url) = (http.clone(), format!("{base}/-/ready"));
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;

    support::wait_for_async("a first scrape of chirp", Duration::from_secs(30), || {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = query(
                &http,
                &base,
                "chirp_sli_events_total{probe=\"lossy\",sli=\"delivery\"}",
                None,
            )
            .await;
            r[0]["value"][1].as_str() == Some("0")
        }
    })
    .await;
    gate.send_replace(true);

    // Wait until Prometheus has recorded compliance from a few seconds of canaries.
    let recorded = "chirp:sli_compliance:ratio1h{probe=\"lossy\",sli=\"delivery\"}";
    let give_up = tokio::time::Instant::now() + Duration::from_secs(90);
    let samples = loop {
        assert!(
            tokio::time::Instant::now() < give_up,
            "Prometheus recorded no losses within 90s"
        );
        let r = query(&http, &base, &format!("{recorded}[5s]"), None).await;
        if let Some(values) = r[0]["values"].as_array() {
            let value = |r: serde_json::Value| -> f64 {
                r[0]["value"][1]
                    .as_str()
                    .unwrap_or("0")
                    .parse()
                    .unwrap_or(0.0)
            };
            let events = value(
                query(
                    &http,
                    &base,
                    "chirp_sli_events_total{probe=\"lossy\",sli=\"delivery\"}",
                    None,
                )
                .await,
            );
            let good = value(
                query(
                    &http,
                    &base,
                    "chirp_sli_good_total{probe=\"lossy\",sli=\"delivery\"}",
                    None,
                )
                .await,
            );
            // Enough canaries, and the dropped ones have reached their deadline.
            if values.len() >= 2 && events >= 100.0 && events - good >= 20.0 {
                break values.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    // The rule's sample at evaluation time E used the latest scrape ingested
    // before E. Under load a scrape that started before E may be ingested
    // just after the evaluation, so the rule saw that scrape or the one
    // before it: it must equal chirp's gauge in one of the last two scrapes.
    let last = samples.last().unwrap();
    let at = last[0].as_f64().unwrap();
    let recorded_value: f64 = last[1].as_str().unwrap().parse().unwrap();
    let gauge = query(
        &http,
        &base,
        "chirp_slo_compliance_ratio{probe=\"lossy\",sli=\"delivery\"}[10s]",
        Some(at),
    )
    .await;
    let scraped: Vec<f64> = gauge[0]["values"]
        .as_array()
        .expect("gauge samples")
        .iter()
        .map(|v| v[1].as_str().unwrap().parse().unwrap())
        .collect();
    let recent = &scraped[scraped.len().saturating_sub(2)..];
    assert!(
        recent.iter().any(|g| (recorded_value - g).abs() < 1e-9),
        "Prometheus recorded {recorded_value}; chirp's last scrapes say {recent:?}"
    );
    // Not a trivial value: losses (resolved at their deadline) are in it.
    assert!(
        recorded_value > 0.5 && recorded_value < 0.99,
        "{recorded_value}"
    );
    relay.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// One scrape as a proxy saw it: what Prometheus asked for, what chirp answered.
#[derive(Debug, Clone, Default)]
struct Seen {
    asked: String,
    answered: String,
}

/// A proxy in front of chirp's `/metrics` that records each exchange and
/// sends chirp `accept` instead of Prometheus' own header, if given.
async fn recording_proxy(
    chirp_port: u16,
    accept: Option<&'static str>,
) -> (u16, Arc<std::sync::Mutex<Vec<Seen>>>) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                let asked = headers
                    .get("accept")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let resp = reqwest::Client::new()
                    .get(format!("http://127.0.0.1:{chirp_port}/metrics"))
                    .header("accept", accept.unwrap_or(&asked))
                    .send()
                    .await
                    .unwrap();
                let answered = resp.headers()["content-type"].to_str().unwrap().to_owned();
                let body = resp.text().await.unwrap();
                log.lock().unwrap().push(Seen {
                    asked,
                    answered: answered.clone(),
                });
                ([("content-type", answered)], body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, seen)
}

/// A real Prometheus ingests both formats: OpenMetrics when it asks for it
/// (its default), and the text format 0.0.4 when the scrape asks for that
/// (as older Prometheus servers and other agents do). Each job's series are
/// usable in queries: counters, the build info, process metrics, and
/// histogram quantiles over the buckets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_ingests_the_format_it_asks_for() {
    let dir = support::TempDir::new("chirp-prom-formats");
    let chirp_port = free_port();
    let cfg = dir.write(
        "probes.yaml",
        format!(
            "environment: e2e\nlisten: 127.0.0.1:{chirp_port}\nsigning_key: {KEY}\nprobes:\n  - name: loop\n    interval: 20ms\n    inject: {{http: {{url: /hooks/loop}}}}\n    catch: {{http: {{}}}}\n"
        ),
    );
    let _chirp = Kill(
        Command::new(&*support::CHIRP)
            .args(["run", "-c"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (om_port, om_seen) = recording_proxy(chirp_port, None).await;
    let (text_port, text_seen) =
        recording_proxy(chirp_port, Some("text/plain;version=0.0.4")).await;
    let prom_port = free_port();
    dir.write(
        "prometheus.yml",
        format!(
            "global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: openmetrics\n    static_configs: [{{targets: ['127.0.0.1:{om_port}']}}]\n  - job_name: text\n    static_configs: [{{targets: ['127.0.0.1:{text_port}']}}]\n"
        ),
    );
    let _prom = Kill(
        Command::new(prometheus_bin())
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{prom_port}");
    let http = reqwest::Client::new();
    support::wait_for_async("Prometheus to be ready", Duration::from_secs(30), || {
        let (http, url) = (http.clone(), format!("{base}/-/ready"));
        async move {
            http.get(url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    let value = |r: &serde_json::Value| -> Option<f64> { r[0]["value"][1].as_str()?.parse().ok() };
    for job in ["openmetrics", "text"] {
        for (what, q) in [
            ("delivered canaries", format!("chirp_canaries_delivered_total{{job=\"{job}\",probe=\"loop\"}}")),
            ("a p50 from the buckets", format!("histogram_quantile(0.5, rate(chirp_latency_seconds_bucket{{job=\"{job}\"}}[10s]))")),
            ("the build info", format!("chirp_build_info{{job=\"{job}\",environment=\"e2e\"}}")),
            ("the process's CPU time", format!("process_cpu_seconds_total{{job=\"{job}\"}}")),
        ] {
            support::wait_for_async(&format!("{what} in job {job}"), Duration::from_secs(60), || {
                let (http, base, q) = (http.clone(), base.clone(), q.clone());
                async move {
                    let r = query(&http, &base, &q, None).await;
                    value(&r).is_some_and(|v| v.is_finite() && v > 0.0)
                }
            })
            .await;
        }
    }
    let om = om_seen.lock().unwrap().clone();
    let text = text_seen.lock().unwrap().clone();
    assert!(!om.is_empty() && !text.is_empty());
    for s in &om {
        assert!(s.asked.starts_with("application/openmetrics-text"), "{s:?}");
        assert_eq!(
            s.answered,
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
    }
    for s in &text {
        assert_eq!(
            s.answered, "text/plain; version=0.0.4; charset=utf-8",
            "{s:?}"
        );
    }
}
