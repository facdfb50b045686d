use super::config::{CatchConfig, InjectConfig};
use crate::config::errors::Problems;

#[test]
fn names_and_subjects_are_checked() {
    let mut p = Problems::default();
    CatchConfig {
        connection: "main".into(),
        stream: "bad.name".into(),
        subject: Some("orders..out".into()),
        consumer: Some("has space".into()),
    }
    .validate("probes[0].catch.jetstream", &mut p);
    let said: Vec<String> = p.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(p.len(), 3, "{said:?}");
    assert!(said[0].starts_with(
        "probes[0].catch.jetstream.stream: `bad.name` is not a valid JetStream stream name"
    ));
    let mut p = Problems::default();
    InjectConfig {
        connection: "main".into(),
        subject: "orders.*".into(),
        headers: Default::default(),
    }
    .validate("x", &mut p);
    assert_eq!(p.len(), 1, "a wildcard cannot be published to");
    let mut p = Problems::default();
    CatchConfig {
        connection: "main".into(),
        stream: "ORDERS".into(),
        subject: Some("orders.>".into()),
        consumer: None,
    }
    .validate("x", &mut p);
    assert!(p.is_empty());
}
