//! `chirp check --format json` validated against the JSON schema kept in the
//! repository (`docs/check-report.schema.json`), on the shipped config (a
//! webhook probe and a per-partition Kafka probe, both with SLOs).

mod common;

use std::process::Command;

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
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/probes.yaml");
    let out = common::exits(
        Command::new(common::CHIRP)
            .args([
                "check",
                "-c",
                shipped,
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
    let mut broken = report.clone();
    broken["probes"][0]["objectives"][0]["name"] = "made_up".into();
    assert!(schemas.validate(&broken, index).is_err());
}
