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
        declare: false,
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
        stream: None,
        declare: false,
    }
    .validate("x", &mut p);
    assert_eq!(p.len(), 1, "a wildcard cannot be published to");
    let mut p = Problems::default();
    CatchConfig {
        connection: "main".into(),
        stream: "ORDERS".into(),
        subject: Some("orders.>".into()),
        consumer: None,
        declare: false,
    }
    .validate("x", &mut p);
    assert!(p.is_empty());
}

#[test]
fn declaring_a_stream_needs_its_name_and_subject() {
    let mut p = Problems::default();
    InjectConfig {
        connection: "main".into(),
        subject: "orders.in".into(),
        headers: Default::default(),
        stream: None,
        declare: true,
    }
    .validate("i", &mut p);
    CatchConfig {
        connection: "main".into(),
        stream: "ORDERS".into(),
        subject: None,
        consumer: Some("svc".into()),
        declare: true,
    }
    .validate("c", &mut p);
    let said: Vec<String> = p.0.iter().map(|e| e.to_string()).collect();
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(
        said[0].starts_with("i.stream: `stream` names the stream"),
        "{said:?}"
    );
    assert!(
        said[1].starts_with("c.declare: declaring the stream needs the `subject`"),
        "{said:?}"
    );
    assert!(
        said[2].starts_with("c.declare: chirp declares a stream, not a durable consumer"),
        "{said:?}"
    );
}
