use super::*;
use crate::config::errors::Problems;

#[test]
fn credentials_leave_the_url_and_become_auth_options() {
    let (addrs, auth) = parse_urls("nats://alice:p%40ss@n1:4222, nats://n2").unwrap();
    assert_eq!(
        auth,
        Some(UrlAuth::UserPassword {
            user: "alice".into(),
            password: "p@ss".into()
        })
    );
    let shown: Vec<String> = addrs.iter().map(|a| format!("{a:?}")).collect();
    assert!(
        shown
            .iter()
            .all(|s| !s.contains("p%40ss") && !s.contains("alice")),
        "{shown:?}"
    );
    assert_eq!(addrs[1].port(), 4222);
    let (_, auth) = parse_urls("nats://s3cr3t-token@n1:4222").unwrap();
    assert_eq!(auth, Some(UrlAuth::Token("s3cr3t-token".into())));
    let (addrs, auth) = parse_urls("127.0.0.1:4333").unwrap();
    assert_eq!((addrs[0].port(), auth), (4333, None));
}

#[test]
fn bad_urls_are_errors_that_never_quote_credentials() {
    for bad in [
        "http://u:hunter2@x:4222",
        "nats://u:hunter2@",
        "nats://u:hunter2@a,nats://v:other@b",
        "nats://u:hunt#er2@x:4222",
        "nats://u:hunt/er2@x:4222",
        "nats//u:hunter2@x:4222",
    ] {
        let e = parse_urls(bad).unwrap_err().to_string();
        assert!(!e.contains("hunter2") && !e.contains("er2@"), "{e}");
    }
    let cfg = config::ConnectionConfig {
        url: Endpoint::new("nats://u:hunter2@n1:4222"),
        token: Some(crate::config::secret::Secret::new("t")),
        user: None,
        password: None,
        credentials_file: None,
        tls: None,
    };
    let mut p = Problems::default();
    cfg.validate("connections.main.nats", &mut p);
    assert_eq!(p.len(), 1, "{:?}", p.0);
    assert!(p.0[0].message.contains("give them once"), "{:?}", p.0);
}

/// The first connection attempt is not a retry: `chirp check` must not
/// wait 100 ms before its first connect.
#[test]
fn the_first_connect_does_not_wait() {
    let ms = std::time::Duration::from_millis;
    assert_eq!(super::reconnect_delay(0), ms(0));
    assert_eq!(super::reconnect_delay(1), ms(0));
    assert_eq!(super::reconnect_delay(2), ms(100));
    assert_eq!(super::reconnect_delay(5), ms(400));
    assert_eq!(super::reconnect_delay(1000), ms(2000));
}
