//! `chirp check`'s reports: JSON checked against the schema kept in the
//! repository (`docs/check-report.schema.json`) by two independent
//! validators, and the JUnit and text verdicts on the configured SLOs.

use crate::support::{config_file, exits, NatsServer, TempDir, CHIRP, KEY, SHIPPED};
use quick_xml::events::Event;
use std::process::Command;

/// Validates `report` with Python's `jsonschema` (installed by `./scripts/test`).
fn python_validates(report: &serde_json::Value) -> Result<(), String> {
    let dir = TempDir::new("schema");
    let path = dir.write("report.json", report.to_string());
    let schema = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/check-report.schema.json");
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        jsonschema.Draft202012Validator.check_schema(schema)\n\
        errors = [f'{list(e.path)}: {e.message}' for e in jsonschema.Draft202012Validator(schema).iter_errors(json.load(open(sys.argv[2])))]\n\
        print('\\n'.join(errors)); sys.exit(1 if errors else 0)\n";
    let out = Command::new("python3")
        .args(["-c", script, schema])
        .arg(&path)
        .output()
        .expect("python3 runs (./scripts/test installs what it needs)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !text.contains("No module named"),
        "Python's jsonschema is missing: `python3 -m pip install jsonschema` (./scripts/test does it): {text}"
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(text)
    }
}

fn validator() -> (boon::Schemas, boon::SchemaIndex) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/check-report.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut schemas = boon::Schemas::new();
    let mut compiler = boon::Compiler::new();
    compiler
        .add_resource("check-report.schema.json", schema)
        .unwrap();
    let index = compiler
        .compile("check-report.schema.json", &mut schemas)
        .expect("the schema compiles");
    (schemas, index)
}

#[test]
fn check_json_matches_the_schema() {
    let out = exits(
        Command::new(&*CHIRP)
            .args([
                "check",
                "-c",
                SHIPPED,
                "--listen",
                "127.0.0.1:0",
                "--count",
                "4",
            ])
            .args(["--max-loss", "1%", "--max-p99", "5s", "--format", "json"]),
        0,
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let (schemas, index) = validator();
    if let Err(e) = schemas.validate(&report, index) {
        panic!("report does not match the schema: {e:#}\n{report:#}");
    }
    // A second, independent validator: Python's jsonschema.
    if let Err(e) = python_validates(&report) {
        panic!("report does not match the schema under Python's jsonschema: {e}\n{report:#}");
    }
    // The report exercises every optional part of the schema.
    assert!(report["probes"][1]["partitions"]
        .as_array()
        .is_some_and(|p| p.len() == 3));
    assert!(report["probes"][0]["slo"]["slis"]
        .as_array()
        .is_some_and(|s| s.len() == 2));

    // The schema is not vacuous: a report that breaks the contract is refused.
    let mut broken = report.clone();
    broken["probes"][0]["counts"]
        .as_object_mut()
        .unwrap()
        .remove("lost");
    assert!(schemas.validate(&broken, index).is_err());
    assert!(python_validates(&broken).is_err());
    let mut broken = report.clone();
    broken["probes"][0]["objectives"][0]["name"] = "made_up".into();
    assert!(schemas.validate(&broken, index).is_err());
    assert!(python_validates(&broken).is_err());
    let mut broken = report.clone();
    broken["probes"][0]["publish_failed_by_kind"]["made_up"] = 0.into();
    assert!(schemas.validate(&broken, index).is_err());
    assert!(python_validates(&broken).is_err());
}

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

#[test]
fn met_objectives_pass_and_a_missed_one_fails_with_measured_vs_target() {
    let nats = NatsServer::start();
    let cfg = config_file(&format!(
        "listen: 127.0.0.1:0\nsigning_key: {KEY}\nconnections:\n  main:\n    nats: {{url: \"{}\"}}\ndefaults:\n  slo:\n    latency: {{threshold: 2s, objective: 99%}}\n    delivery: {{objective: 99.9%}}\nprobes:\n  - name: healthy\n    interval: 5ms\n    deadline: 3s\n    inject: {{nats: {{connection: main, subject: h}}}}\n    catch: {{nats: {{connection: main, subject: h}}}}\n  - name: dropping\n    interval: 5ms\n    deadline: 300ms\n    slo:\n      latency: {{threshold: 100ms, objective: 90%}}\n    inject: {{nats: {{connection: main, subject: d.in}}}}\n    catch: {{nats: {{connection: main, subject: d.out}}}}\n",
        nats.url()
    ));
    // The healthy probe alone meets its objectives.
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "100", "--probe", "healthy", "-c"])
            .arg(&cfg.path),
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
    let dir = TempDir::new("junit");
    let junit = dir.path().join("report.xml");
    exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "20", "--format", "junit", "--output"])
            .arg(&junit)
            .arg("-c")
            .arg(&cfg.path),
        1,
    );
    let xml = std::fs::read_to_string(&junit).unwrap();
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
    let cfg = config_file(&format!(
        "listen: 127.0.0.1:0\nsigning_key: {KEY}\nprobes:\n  - name: loop\n    interval: 50ms\n    deadline: 1s\n    inject: {{http: {{url: /hooks/loop}}}}\n    catch: {{http: {{}}}}\n    slo:\n      delivery: {{objective: 99%}}\n      slice: 1s\n      period: 1h\n"
    ));
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--duration", "3500ms", "--format", "json", "-c"])
            .arg(&cfg.path),
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

    let out = Command::new(&*CHIRP)
        .args(["check", "--duration", "2500ms", "-c"])
        .arg(&cfg.path)
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
}

/// 50 canaries cannot resolve a p99 or a p99.9 (each is their maximum):
/// every format says so, and a gate on the p99 says so in its verdict; 100
/// or more resolve the p99 but not the p99.9.
#[test]
fn a_small_sample_marks_the_percentiles_it_cannot_resolve() {
    let cfg = config_file(&format!(
        "listen: 127.0.0.1:0\nsigning_key: {KEY}\nprobes:\n  - name: few\n    interval: 5ms\n    deadline: 2s\n    inject: {{http: {{url: /hooks/few}}}}\n    catch: {{http: {{}}}}\n"
    ));
    let check = |count: &str, format: &str| {
        let out = exits(
            Command::new(&*CHIRP)
                .args([
                    "check",
                    "--count",
                    count,
                    "--max-p99",
                    "5s",
                    "--format",
                    format,
                    "-c",
                ])
                .arg(&cfg.path),
            0,
        );
        String::from_utf8(out.stdout).unwrap()
    };

    let report: serde_json::Value = serde_json::from_str(&check("50", "json")).unwrap();
    let (schemas, index) = validator();
    if let Err(e) = schemas.validate(&report, index) {
        panic!("report does not match the schema: {e:#}\n{report:#}");
    }
    let probe = &report["probes"][0];
    assert_eq!(probe["latency"]["cumulative"]["count"], 50);
    assert_eq!(
        probe["latency"]["cumulative"]["unresolvable"],
        serde_json::json!(["p99", "p999"])
    );
    let gate = &probe["objectives"][0];
    assert_eq!(
        (&gate["name"], &gate["resolvable"]),
        (&"max_p99".into(), &false.into())
    );

    let text = check("50", "text");
    let row = text
        .lines()
        .find(|l| l.starts_with("few "))
        .expect("the probe's row");
    assert_eq!(row.matches('*').count(), 2, "p99 and p99.9 marked: {row}");
    assert!(
        text.contains("* not resolvable from so few delivered canaries"),
        "{text}"
    );
    assert!(
        text.contains("PASS few: max_p99 measured")
            && text.contains(
                "not resolvable: 50 delivered canaries cannot resolve a p99 (it needs 100)"
            ),
        "{text}"
    );

    let xml = check("50", "junit");
    assert_eq!(junit_cases(&xml).len(), 1, "{xml}");
    assert!(
        xml.contains("p99.9 ") && xml.contains("(not resolvable: needs 1,000 delivered canaries)"),
        "{xml}"
    );
    assert!(xml.contains("cannot resolve a p99 (it needs 100)"), "{xml}");

    // 110 sent: one lost on a loaded machine must not leave fewer than 100.
    let report: serde_json::Value = serde_json::from_str(&check("110", "json")).unwrap();
    let probe = &report["probes"][0];
    assert!(
        probe["latency"]["cumulative"]["count"].as_u64().unwrap() >= 100,
        "{probe:#}"
    );
    assert_eq!(
        probe["latency"]["cumulative"]["unresolvable"],
        serde_json::json!(["p999"])
    );
    assert_eq!(probe["objectives"][0]["resolvable"], true);
}
