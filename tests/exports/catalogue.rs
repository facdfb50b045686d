//! One catalogue of metrics feeds both exporters and the reference: the
//! tables in `docs/metrics.md` are the catalogue's, every Prometheus name is
//! on `/metrics`, and every OTLP name reaches a collector, from one run.

use crate::support::otlp::Receiver;
use crate::support::{self, Scrape};
use chirp::export::catalogue::{markdown, Group, Kind, CATALOGUE};
use std::time::Duration;

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
    let scrape = Scrape::get(rt.addr.unwrap()).await;
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
    for m in CATALOGUE {
        let base = m
            .prometheus
            .trim_end_matches("_total")
            .trim_end_matches("_info");
        assert!(
            scrape.text.contains(&format!("# TYPE {base} ")),
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
