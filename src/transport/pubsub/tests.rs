use super::config::{CatchConfig, ConnectionConfig, InjectConfig, Target};
use super::{classify, credentials, seen, unreachable, Seen};
use crate::config::errors::Problems;
use crate::outcome::FailureKind;
use crate::transport::Outgoing;
use google_cloud_gax::error::rpc::{Code, Status};
use google_cloud_gax::error::{CredentialsError, Error};

fn problems(f: impl FnOnce(&mut Problems)) -> Vec<String> {
    let mut p = Problems::default();
    f(&mut p);
    p.0.iter().map(|e| e.to_string()).collect()
}

fn conn(yaml: &str) -> ConnectionConfig {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn configuration_mistakes_are_named() {
    let c = conn("{project: 'my project', endpoint: 'https://u:hunter2@pubsub.example'}");
    let said = problems(|p| c.validate("c", p));
    assert_eq!(
        said,
        [
            "c.project: `my project` is not a project ID (letters, digits, `-`; e.g. my-project)",
            "c.endpoint: `https://***@pubsub.example`: an endpoint carries no credentials (use `credentials_file`)",
        ]
    );
    assert!(!format!("{c:?}").contains("hunter2"));
    for bad in [
        "pubsub.googleapis.com",
        "grpc://h:1",
        "http://h:8085/v1",
        "http://h:8085?x=1",
    ] {
        let c = conn(&format!("{{project: p-1, endpoint: '{bad}'}}"));
        let said = problems(|p| c.validate("c", p));
        assert_eq!(said.len(), 1, "{bad}: {said:?}");
        assert!(said[0].contains("is not a Pub/Sub endpoint"), "{said:?}");
    }
    let c = conn("{project: '', credentials_file: ''}");
    assert_eq!(
        problems(|p| c.validate("c", p)),
        [
            "c.project: name the Google Cloud project",
            "c.credentials_file: name the credentials file, or leave the key out for the standard chain",
        ]
    );
    for good in [
        "{project: my-project}",
        "{project: 'example.com:legacy-1', endpoint: 'https://europe-west1-pubsub.googleapis.com/'}",
        "{project: p-1, endpoint: 'http://127.0.0.1:8085', credentials_file: /etc/key.json}",
    ] {
        assert!(problems(|p| conn(good).validate("c", p)).is_empty(), "{good}");
    }
    assert!(serde_yaml::from_str::<ConnectionConfig>("{project: p, endpiont: x}").is_err());
    assert!(serde_yaml::from_str::<InjectConfig>("{connection: g, topic: t, key: k}").is_err());
    assert!(serde_yaml::from_str::<CatchConfig>("{connection: g, topic: t}").is_err());
}

#[test]
fn topic_and_subscription_names_follow_pub_sub_rules() {
    let inject = |topic: &str| {
        let i: InjectConfig =
            serde_yaml::from_str(&format!("{{connection: g, topic: '{topic}'}}")).unwrap();
        problems(|p| i.validate("i", p))
    };
    for good in [
        "orders",
        "orders.in-v2_x~y+z%2F",
        "projects/other-project/topics/orders",
    ] {
        assert!(inject(good).is_empty(), "{good}: {:?}", inject(good));
    }
    assert_eq!(inject(""), ["i.topic: name the topic"]);
    for bad in ["ab", "1orders", "goog-orders", "or ders", "orders/x"] {
        let said = inject(bad);
        assert_eq!(said.len(), 1, "{bad}: {said:?}");
        assert!(said[0].contains("is not a topic ID"), "{said:?}");
    }
    for bad in [
        "projects/p/subscriptions/orders",
        "projects//topics/orders",
        "projects/p/topics",
    ] {
        let said = inject(bad);
        assert!(said[0].contains("is not a full topic name"), "{said:?}");
    }
    let c: CatchConfig =
        serde_yaml::from_str("{connection: g, subscription: projects/p/topics/orders}").unwrap();
    assert_eq!(
        problems(|p| c.validate("k", p)),
        ["k.subscription: `projects/p/topics/orders` is not a full subscription name (write projects/<project>/subscriptions/<id>, or the ID alone)"]
    );

    let g = conn("{project: mine}");
    assert_eq!(g.topic("orders"), "projects/mine/topics/orders");
    assert_eq!(
        g.topic("projects/theirs/topics/orders"),
        "projects/theirs/topics/orders"
    );
    assert_eq!(g.subscription("out"), "projects/mine/subscriptions/out");
}

#[test]
fn the_endpoint_and_credentials_follow_the_settings_then_the_emulator_variable() {
    let target = |yaml: &str, env: Option<&str>| conn(yaml).target(env);
    let google = Target {
        endpoint: None,
        anonymous: false,
        from_environment: false,
    };
    assert_eq!(target("{project: p}", None), google);
    assert_eq!(target("{project: p}", Some("  ")), google);
    // The emulator variable: plain HTTP, no credentials.
    assert_eq!(
        target("{project: p}", Some("localhost:8085")),
        Target {
            endpoint: Some("http://localhost:8085".into()),
            anonymous: true,
            from_environment: true,
        }
    );
    // `endpoint` wins over the variable.
    assert_eq!(
        target(
            "{project: p, endpoint: 'https://eu-pubsub.example/'}",
            Some("localhost:8085")
        ),
        Target {
            endpoint: Some("https://eu-pubsub.example".into()),
            anonymous: false,
            from_environment: false,
        }
    );
    assert!(target("{project: p, endpoint: 'http://h:1'}", None).anonymous);
    // Credentials given explicitly are used, even in plain HTTP.
    assert!(
        !target(
            "{project: p, endpoint: 'http://h:1', credentials_file: k.json}",
            None
        )
        .anonymous
    );
}

fn status(code: Code) -> Error {
    Error::service(Status::default().set_code(code).set_message("said"))
}

#[test]
fn errors_are_classified_by_what_pub_sub_said_or_why_it_could_not() {
    for (code, kind) in [
        (Code::PermissionDenied, FailureKind::Auth),
        (Code::Unauthenticated, FailureKind::Auth),
        (Code::ResourceExhausted, FailureKind::Throttled),
        (Code::NotFound, FailureKind::Rejected),
        (Code::InvalidArgument, FailureKind::Rejected),
        (Code::Unavailable, FailureKind::Unavailable),
        (Code::DeadlineExceeded, FailureKind::Timeout),
        (Code::Internal, FailureKind::Other),
    ] {
        assert_eq!(classify(&status(code)), kind, "{code:?}");
    }
    let refused = Error::io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(classify(&refused), FailureKind::Unavailable);
    assert!(unreachable(&refused));
    // Retries that ran out of time: what they last saw.
    let gave_up = |e: Error| Error::exhausted(e);
    assert_eq!(
        classify(&gave_up(Error::io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )))),
        FailureKind::Unavailable
    );
    assert_eq!(
        classify(&gave_up(status(Code::PermissionDenied))),
        FailureKind::Auth
    );
    assert_eq!(
        classify(&Error::exhausted("no cause")),
        FailureKind::Timeout
    );
    assert_eq!(classify(&Error::timeout("slow")), FailureKind::Timeout);
    assert!(unreachable(&Error::timeout("slow")));
    let no_token = Error::authentication(CredentialsError::from_msg(false, "no token"));
    assert_eq!(classify(&no_token), FailureKind::Auth);
    assert!(!unreachable(&no_token));
    let http = |code| Error::http(code, Default::default(), Default::default());
    assert_eq!(classify(&http(403)), FailureKind::Auth);
    assert_eq!(classify(&http(429)), FailureKind::Throttled);
    assert_eq!(classify(&http(404)), FailureKind::Rejected);
    assert_eq!(classify(&http(503)), FailureKind::Unavailable);
    assert!(!unreachable(&status(Code::NotFound)));
}

#[test]
fn a_check_tells_missing_from_unknown_from_unreachable() {
    let answer = |r: Result<(), Error>| seen(Ok(r));
    assert_eq!(answer(Ok(())).unwrap(), Seen::Exists);
    assert_eq!(answer(Err(status(Code::NotFound))).unwrap(), Seen::Missing);
    // A role that may publish or pull but not look: Pub/Sub answered.
    assert_eq!(
        answer(Err(status(Code::PermissionDenied))).unwrap(),
        Seen::Unknown
    );
    assert!(answer(Err(status(Code::Unavailable))).is_err());
    assert!(answer(Err(status(Code::Unauthenticated))).is_err());
}

#[test]
fn a_canary_is_its_data_and_attributes() {
    let m = super::inject::message(Outgoing {
        token: "chirp1.tok".into(),
        body: bytes::Bytes::from_static(b"{\"chirp\":\"chirp1.tok\"}"),
        partition: None,
        key: "orders".into(),
        traceparent: Some("00-abc-def-01".into()),
        content_type: "application/json",
    });
    assert_eq!(&m.data[..], b"{\"chirp\":\"chirp1.tok\"}");
    assert_eq!(m.attributes.len(), 2);
    assert_eq!(m.attributes["Chirp-Token"], "chirp1.tok");
    assert_eq!(m.attributes["traceparent"], "00-abc-def-01");
    // No ordering key: none is needed, and it would need an ordered subscription.
    assert!(m.ordering_key.is_empty());
}

#[test]
fn credentials_errors_name_the_file_never_its_contents() {
    const SECRET: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7-not-a-key";
    let dir = std::env::temp_dir().join(format!("chirp-pubsub-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let cases = [
        // Not JSON at all: the key pasted alone.
        (
            file(
                "pasted.json",
                format!("-----BEGIN PRIVATE KEY-----\n{SECRET}\n"),
            ),
            "is not a JSON credentials file",
        ),
        // Not a type chirp takes.
        (
            file("odd.json", format!(r#"{{"type":"{SECRET}"}}"#)),
            "its `type` is none that chirp takes",
        ),
        // A service account key without its email.
        (
            file(
                "partial.json",
                format!(
                    r#"{{"type":"service_account","private_key":"{SECRET}","private_key_id":"k1","project_id":"p"}}"#
                ),
            ),
            "holds no usable service_account credentials",
        ),
        (
            dir.join("missing.json").display().to_string(),
            "cannot read",
        ),
    ];
    for (path, want) in cases {
        let c = conn(&format!("{{project: p, credentials_file: '{path}'}}"));
        let e = match credentials(&c, &c.target(None)) {
            Err(e) => e,
            Ok(_) => panic!("{path} made credentials"),
        };
        assert!(e.contains(&path) && e.contains(want), "{e}");
        assert!(!e.contains(SECRET) && !e.contains("BEGIN"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
