use super::catch::tests_entries;
use super::config::{parse_url, CatchConfig, ConnectionConfig, InjectConfig};
use crate::config::errors::Problems;
use crate::config::secret::Endpoint;
use ::redis::Value;

fn problems(f: impl FnOnce(&mut Problems)) -> Vec<String> {
    let mut p = Problems::default();
    f(&mut p);
    p.0.iter().map(|e| e.to_string()).collect()
}

#[test]
fn urls_give_host_port_db_and_credentials_apart() {
    let t = parse_url(&Endpoint::new("rediss://u%40x:p%2Fw@cache:6380/3")).unwrap();
    assert_eq!(
        (t.tls, t.host.as_str(), t.port, t.db),
        (true, "cache", 6380, 3)
    );
    assert_eq!(
        (t.user.as_deref(), t.password.as_deref()),
        (Some("u@x"), Some("p/w"))
    );
    // The default user with a password: `redis://:secret@host`.
    let t = parse_url(&Endpoint::new("redis://:s3cret@h")).unwrap();
    assert_eq!(
        (t.user.as_deref(), t.password.as_deref(), t.port, t.db),
        (None, Some("s3cret"), 6379, 0)
    );
    assert!(!format!("{t:?}").contains("s3cret"));
    for bad in [
        "http://u:hunter2@r",
        "redis://u:hunter2@r/x",
        "redis://u:hunter2@r/-1",
    ] {
        let e = parse_url(&Endpoint::new(bad)).unwrap_err();
        assert!(!e.contains("hunter2") && e.contains("redis"), "{e}");
    }
}

#[test]
fn configuration_mistakes_are_named() {
    let c: ConnectionConfig =
        serde_yaml::from_str("{url: 'redis://:p@h', password: y, tls: {ca_file: /x}}").unwrap();
    let said = problems(|p| c.validate("c", p));
    assert_eq!(
        said,
        [
            "c.url: the URL carries credentials and so do `user`/`password`; give them once",
            "c.tls: `tls` needs a rediss:// URL"
        ]
    );
    let c: ConnectionConfig = serde_yaml::from_str("{url: 'redis://h', user: app}").unwrap();
    assert_eq!(
        problems(|p| c.validate("c", p)),
        ["c: `user` needs a `password`"]
    );

    let i: InjectConfig = serde_yaml::from_str("{connection: r, stream: '', maxlen: '0'}").unwrap();
    assert_eq!(
        problems(|p| i.validate("i", p)),
        [
            "i.stream: name the stream",
            "i.maxlen: at least 1 (a stream trimmed to nothing loses every canary)"
        ]
    );
    assert_eq!(i.field, "payload");

    let c: CatchConfig = serde_yaml::from_str("{connection: r, stream: s, consumer: me}").unwrap();
    assert_eq!(
        problems(|p| c.validate("k", p)),
        ["k.consumer: `consumer` names chirp in a consumer group: give `group` too"]
    );
    let c: CatchConfig = serde_yaml::from_str("{connection: r, stream: s, group: g}").unwrap();
    assert!(problems(|p| c.validate("k", p)).is_empty());
    assert_eq!(c.consumer("orders"), "chirp-orders");
    assert!(serde_yaml::from_str::<CatchConfig>("{connection: r, stream: s, grup: g}").is_err());
}

fn bulk(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn entry(id: &str, fields: &[&str]) -> Value {
    Value::Array(vec![
        bulk(id),
        Value::Array(fields.iter().map(|f| bulk(f)).collect()),
    ])
}

#[test]
fn read_replies_give_their_entries_and_skip_the_rest() {
    // XREAD: [[stream, [entry…]]]
    let read = Value::Array(vec![Value::Array(vec![
        bulk("orders"),
        Value::Array(vec![
            entry("1-0", &["Chirp-Token", "t1", "payload", "{}"]),
            // A pending entry deleted since: an ID without fields.
            Value::Array(vec![bulk("2-0"), Value::Nil]),
            // No fields: not an entry.
            entry("3-0", &[]),
            // Garbage where an entry should be.
            Value::Int(7),
        ]),
    ])]);
    assert_eq!(
        tests_entries(&read),
        [("1-0".into(), Some(4)), ("2-0".into(), None)]
    );
    // XREVRANGE: [entry…]
    let range = Value::Array(vec![entry("5-1", &["a", "b"])]);
    assert_eq!(tests_entries(&range), [("5-1".into(), Some(2))]);
    // RESP3 maps: {stream: [entry…]}
    let map = Value::Map(vec![(
        bulk("orders"),
        Value::Array(vec![entry("9-0", &["a", "b"])]),
    )]);
    assert_eq!(tests_entries(&map), [("9-0".into(), Some(2))]);
    // A timed-out read, an error, nonsense.
    // Nothing pending: [[stream, []]].
    let none = Value::Array(vec![Value::Array(vec![
        bulk("orders"),
        Value::Array(vec![]),
    ])]);
    for v in [
        none,
        Value::Nil,
        Value::Okay,
        Value::Array(vec![Value::Nil]),
        Value::Int(1),
    ] {
        assert!(tests_entries(&v).is_empty(), "{v:?}");
    }
}
