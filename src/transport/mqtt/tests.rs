use super::config::{CatchConfig, ConnectionConfig, InjectConfig, Version};
use super::*;
use crate::config::errors::Problems;
use crate::config::secret::Secret;

fn conn(url: &str) -> ConnectionConfig {
    ConnectionConfig {
        url: Endpoint::new(url),
        version: Version::V5,
        user: None,
        password: None,
        tls: None,
        keep_alive: None,
    }
}

fn problems(f: impl FnOnce(&mut Problems)) -> Vec<String> {
    let mut p = Problems::default();
    f(&mut p);
    p.0.iter().map(|e| e.to_string()).collect()
}

#[test]
fn credentials_leave_the_url() {
    let u = parse_url("mqtt://alice:p%40ss@broker:1884").unwrap();
    assert_eq!(u.auth, Some(("alice".into(), "p@ss".into())));
    assert_eq!((u.host.as_str(), u.port, u.tls), ("broker", 1884, false));
    let shown = format!("{u:?}");
    assert!(
        !shown.contains("alice") && !shown.contains("p@ss"),
        "{shown}"
    );
    let u = parse_url("mqtts://broker").unwrap();
    assert_eq!((u.port, u.tls, u.auth), (8883, true, None));
    assert_eq!(parse_url("mqtt://[::1]").unwrap().host, "::1");
    assert_eq!(parse_url("mqtt://h").unwrap().port, 1883);
}

#[test]
fn bad_urls_are_errors_that_never_quote_credentials() {
    for bad in [
        "http://u:hunter2@x:1883",
        "tcp://u:hunter2@x:1883",
        "mqtt://u:hunter2@",
        "mqtt://u:hunter2@x/path",
        "mqtt://u:hunter2@x?q=1",
        "mqtt://u@x",
        "mqtt://:hunter2@x",
        "mqtt//u:hunter2@x:1883",
        "mqtt://u:hunt#er2@x:1883",
    ] {
        let e = parse_url(bad).unwrap_err().to_string();
        assert!(!e.contains("hunter2") && !e.contains("er2@"), "{e}");
    }
    assert!(parse_url("mqtt://u@x")
        .unwrap_err()
        .to_string()
        .contains("a user without a password"));
}

#[test]
fn connections_are_checked() {
    let mut c = conn("mqtt://u:pw@h");
    c.user = Some("v".into());
    c.password = Some(Secret::new("x"));
    let said = problems(|p| c.validate("connections.m.mqtt", p));
    assert_eq!(said.len(), 1, "{said:?}");
    assert!(said[0].contains("give them once"), "{said:?}");

    let mut c = conn("mqtt://h");
    c.user = Some("v".into());
    c.tls = Some(Default::default());
    c.keep_alive = Some(Duration::from_millis(10));
    let said = problems(|p| c.validate("connections.m.mqtt", p));
    assert_eq!(said.len(), 3, "{said:?}");
    assert!(said.iter().any(|s| s.contains("`user` needs a `password`")));
    assert!(said.iter().any(|s| s.contains("mqtts://")));
    assert!(said
        .iter()
        .any(|s| s.starts_with("connections.m.mqtt.keep_alive")));

    let said = problems(|p| conn("amqp://h").validate("c", p));
    assert!(
        said[0].contains("the scheme must be mqtt or mqtts"),
        "{said:?}"
    );
    assert!(problems(|p| conn("mqtts://h:8883").validate("c", p)).is_empty());
    // Under 5 s the MQTT 5 client would panic at start: refused here.
    for (secs, ok) in [(4, false), (5, true)] {
        let mut c = conn("mqtt://h");
        c.keep_alive = Some(Duration::from_secs(secs));
        assert_eq!(problems(|p| c.validate("c", p)).is_empty(), ok, "{secs}s");
    }
}

#[test]
fn topics_and_qos_are_checked() {
    let inject = |topic: &str, qos: u8| {
        problems(|p| {
            InjectConfig {
                connection: "m".into(),
                topic: topic.into(),
                qos,
            }
            .validate("probes[0].inject.mqtt", p)
        })
    };
    let catch = |topic: &str, qos: u8| {
        problems(|p| {
            CatchConfig {
                connection: "m".into(),
                topic: topic.into(),
                qos,
            }
            .validate("probes[0].catch.mqtt", p)
        })
    };
    assert!(inject("orders/in", 1).is_empty());
    assert!(inject("orders/in", 0).is_empty());
    assert!(inject("orders/in", 2).is_empty());
    let said = inject("orders/in", 3);
    assert_eq!(
        said,
        ["probes[0].inject.mqtt.qos: QoS 3 does not exist: write 0, 1 or 2"]
    );
    assert!(inject("", 1)[0].contains("the topic is empty"));
    assert!(inject("orders/+", 1)[0].contains("wildcard"));
    assert!(inject("orders/#", 1)[0].contains("wildcard"));
    assert!(catch("orders/+/out", 1).is_empty());
    assert!(catch("orders/#", 1).is_empty());
    assert!(catch("#", 1).is_empty());
    assert!(catch("", 1)[0].contains("the topic is empty"));
    assert!(catch("orders/#/x", 1)[0].contains("not a valid MQTT topic filter"));
    assert!(catch("orders/a+", 1)[0].contains("not a valid MQTT topic filter"));
    assert_eq!(catch("o", 7).len(), 1);
}

#[test]
fn filters_match_topics() {
    assert!(topic_matches("a/b", "a/b"));
    assert!(!topic_matches("a/b", "a/b/c"));
    assert!(topic_matches("a/+", "a/b"));
    assert!(!topic_matches("a/+", "a/b/c"));
    assert!(topic_matches("a/#", "a"));
    assert!(topic_matches("a/#", "a/b/c"));
    assert!(topic_matches("+/+", "/b"));
    assert!(!topic_matches("#", "$SYS/x"));
    assert!(topic_matches("$SYS/#", "$SYS/x"));
}

#[test]
fn versions_read_as_written() {
    let read = |y: &str| serde_yaml::from_str::<ConnectionConfig>(y);
    assert_eq!(read("{url: mqtt://h}").unwrap().version, Version::V5);
    assert_eq!(
        read("{url: mqtt://h, version: 5}").unwrap().version,
        Version::V5
    );
    assert_eq!(
        read("{url: mqtt://h, version: 3.1.1}").unwrap().version,
        Version::V311
    );
    assert_eq!(
        read("{url: mqtt://h, version: \"3.1.1\"}").unwrap().version,
        Version::V311
    );
    let e = read("{url: mqtt://h, version: 4}").unwrap_err().to_string();
    assert!(e.contains("MQTT version `4` is not supported"), "{e}");
    // As `probes.yaml` hands them over: every scalar a string.
    let inject = |y: &str| serde_yaml::from_str::<InjectConfig>(y);
    assert_eq!(inject("{connection: m, topic: t}").unwrap().qos, 1);
    assert_eq!(
        inject("{connection: m, topic: t, qos: \"2\"}").unwrap().qos,
        2
    );
    assert_eq!(inject("{connection: m, topic: t, qos: 0}").unwrap().qos, 0);
    let e = inject("{connection: m, topic: t, qos: high}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("QoS `high` does not exist"), "{e}");
    let c = read("{url: \"mqtt://u:hunter2@h\"}").unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn a_remade_connection_has_client_ids_of_its_own() {
    assert_eq!(
        client_id("m", "catch", 0xab),
        "chirp-m-catch-00000000000000ab"
    );
    assert_eq!(
        client_id("m", "catch", 0xab),
        "chirp-m-catch-00000000000000ab-1"
    );
    assert_eq!(
        client_id("m", "inject", 0xab),
        "chirp-m-inject-00000000000000ab"
    );
    assert_eq!(
        client_id("m", "catch", 0xab),
        "chirp-m-catch-00000000000000ab-2"
    );
}
