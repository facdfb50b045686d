//! `chirp check` as a CI gate on the configured SLOs: exit 0 when the
//! objectives hold, 1 when one misses, and a JUnit report (parsed back here)
//! that names the failing objective with measured value and target.

mod common;

use common::{NatsServer, KEY};
use quick_xml::events::Event;
use std::io::Write;
use std::process::Command;

use common::CHIRP;

/// (classname, name, failure message) of every test case.
fn junit_cases(xml: &str) -> Vec<(String, String, Option<String>)> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut cases = Vec::new();
    loop {
        match reader.read_event().expect("well-formed JUnit XML") {
            Event::Start(e) if e.name().as_ref() == b"testcase" => {
                let attr = |k: &[u8]| {
                    e.attributes()
                        .filter_map(Result::ok)
                        .find(|a| a.key.as_ref() == k)
                        .map(|a| a.unescape_value().unwrap().into_owned())
                        .unwrap_or_default()
                };
                cases.push((attr(b"classname"), attr(b"name"), None));
            }
            Event::Start(e) | Event::Empty(e) if e.name().as_ref() == b"failure" => {
                let msg = e
                    .attributes()
                    .filter_map(Result::ok)
                    .find(|a| a.key.as_ref() == b"message")
                    .map(|a| a.unescape_value().unwrap().into_owned());
                cases.last_mut().expect("failure inside a testcase").2 = msg;
            }
            Event::Eof => break,
            _ => {}
        }
    }
    cases
}

fn write(text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!(
        "chirp-slo-{}-{}.yaml",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::File::create(&p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    p
}

#[test]
fn met_objectives_pass_and_a_missed_one_fails_with_measured_vs_target() {
    let nats = NatsServer::start();
    let cfg = write(&format!(
        "listen: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  main:\n    nats: {{url: \"{}\"}}\ndefaults:\n  slo:\n    latency: {{threshold: 2s, objective: 99%}}\n    delivery: {{objective: 99.9%}}\nprobes:\n  - name: healthy\n    interval: 5ms\n    deadline: 3s\n    inject: {{nats: {{connection: main, subject: h}}}}\n    catch: {{nats: {{connection: main, subject: h}}}}\n  - name: dropping\n    interval: 5ms\n    deadline: 300ms\n    slo:\n      latency: {{threshold: 100ms, objective: 90%}}\n    inject: {{nats: {{connection: main, subject: d.in}}}}\n    catch: {{nats: {{connection: main, subject: d.out}}}}\n",
        nats.url()
    ));
    // The healthy probe alone meets its objectives.
    let out = common::exits(
        Command::new(CHIRP)
            .args(["check", "--count", "100", "--probe", "healthy", "-c"])
            .arg(&cfg),
        0,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PASS healthy: latency_slo measured 100.000% (objective at least 99.000%)"),
        "{text}"
    );
    assert!(
        text.contains("PASS healthy: delivery_slo measured 100.000% (objective at least 99.900%)"),
        "{text}"
    );

    // Nothing relays d.in to d.out: every canary of `dropping` is lost.
    let junit = std::env::temp_dir().join(format!("chirp-junit-{}.xml", std::process::id()));
    common::exits(
        Command::new(CHIRP)
            .args(["check", "--count", "20", "--format", "junit", "--output"])
            .arg(&junit)
            .arg("-c")
            .arg(&cfg),
        1,
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
    let _ = std::fs::remove_file(&junit);
    let _ = std::fs::remove_file(&cfg);
    let cases = junit_cases(&xml);
    let find = |class: &str, name: &str| {
        cases
            .iter()
            .find(|(c, n, _)| c == class && n == name)
            .unwrap_or_else(|| panic!("no case {class}/{name} in {xml}"))
            .2
            .clone()
    };
    assert_eq!(cases.len(), 4, "{xml}");
    assert_eq!(find("chirp.healthy", "latency_slo"), None);
    assert_eq!(find("chirp.healthy", "delivery_slo"), None);
    assert_eq!(
        find("chirp.dropping", "latency_slo").as_deref(),
        Some("latency_slo: measured 0.000%, objective at least 90.000%")
    );
    assert_eq!(
        find("chirp.dropping", "delivery_slo").as_deref(),
        Some("delivery_slo: measured 0.000%, objective at least 99.900%")
    );
}

#[test]
fn a_run_over_several_slices_reports_each_slice() {
    let cfg = write(&format!(
        "listen: 127.0.0.1:0\nsigning_key: {KEY}\nprobes:\n  - name: loop\n    interval: 50ms\n    deadline: 1s\n    inject: {{http: {{url: /hooks/loop}}}}\n    catch: {{http: {{}}}}\n    slo:\n      delivery: {{objective: 99%}}\n      slice: 1s\n      period: 1h\n"
    ));
    let out = common::exits(
        Command::new(CHIRP)
            .args(["check", "--duration", "3500ms", "--format", "json", "-c"])
            .arg(&cfg),
        0,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let slo = &v["probes"][0]["slo"];
    let slices = slo["recent_slices"].as_array().expect("per-slice results");
    // 3.5 s of canaries in 1 s slices: at least 3 closed slices with data.
    assert!(slices.len() >= 3, "{slo}");
    assert!(
        slices
            .iter()
            .all(|s| s["good"] == true && s["events"].as_u64().unwrap() > 0),
        "{slo}"
    );
    assert_eq!(
        slo["totals"]["slices_good"].as_u64().unwrap(),
        slices.len() as u64,
        "{slo}"
    );
    let sum: u64 = slices.iter().map(|s| s["events"].as_u64().unwrap()).sum();
    assert!(sum <= slo["totals"]["events"].as_u64().unwrap());

    let out = Command::new(CHIRP)
        .args(["check", "--duration", "2500ms", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("time slices of 1s good"), "{text}");
    assert!(
        text.lines()
            .filter(|l| l.contains(" good: ") && l.contains("canaries"))
            .count()
            >= 2,
        "{text}"
    );
    let _ = std::fs::remove_file(&cfg);
}
