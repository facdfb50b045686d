use super::config::{parse_url, CatchConfig, ConnectionConfig, InjectConfig};
use crate::config::errors::Problems;
use crate::config::secret::Endpoint;

#[test]
fn urls_give_host_port_vhost_and_credentials_apart() {
    let t = parse_url(&Endpoint::new("amqp://u%40x:p%2Fw@rabbit:5673/prod")).unwrap();
    assert_eq!(
        (t.tls, t.host.as_str(), t.port, t.vhost.as_str()),
        (false, "rabbit", 5673, "prod")
    );
    assert_eq!(
        (t.user.as_deref(), t.password.as_deref()),
        (Some("u@x"), Some("p/w"))
    );
    // No path is the default vhost; `%2f` is `/` too.
    assert_eq!(parse_url(&Endpoint::new("amqps://r")).unwrap().vhost, "/");
    assert_eq!(parse_url(&Endpoint::new("amqps://r")).unwrap().port, 5671);
    assert_eq!(
        parse_url(&Endpoint::new("amqp://r/%2f")).unwrap().vhost,
        "/"
    );
    // The error names the URL without its password.
    let e = parse_url(&Endpoint::new("http://u:hunter2@r")).unwrap_err();
    assert!(
        !e.contains("hunter2") && e.contains("not an AMQP URL"),
        "{e}"
    );
    assert!(!format!("{t:?}").contains("p/w"));
}

#[test]
fn configuration_mistakes_are_named() {
    let mut p = Problems::default();
    let c: ConnectionConfig =
        serde_yaml::from_str("{url: 'amqp://u:p@h', user: x, password: y, tls: {ca_file: /x}}")
            .unwrap();
    c.validate("c", &mut p);
    let said: Vec<String> = p.0.iter().map(|e| e.to_string()).collect();
    assert!(
        said.iter()
            .any(|s| s.starts_with("c.url: the URL carries credentials")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|s| s.starts_with("c.tls: `tls` needs an amqps:// URL")),
        "{said:?}"
    );

    let mut p = Problems::default();
    let i: InjectConfig =
        serde_yaml::from_str("{connection: r, exchange: '', declare: 'true', exchange_type: fan}")
            .unwrap();
    i.validate("i", &mut p);
    assert_eq!(p.len(), 3, "{:?}", p.0);

    let mut p = Problems::default();
    let c: CatchConfig =
        serde_yaml::from_str("{connection: r, queue: q, bind: {exchange: e}}").unwrap();
    c.validate("k", &mut p);
    assert_eq!(
        p.0[0].to_string(),
        "k.bind: `bind` needs `declare: true` (chirp changes no topology otherwise)"
    );
}
