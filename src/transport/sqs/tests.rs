use super::config::{CatchConfig, ConnectionConfig, InjectConfig, Queue};
use super::inject::deduplication_id;
use super::{by_code, classify};
use crate::config::errors::Problems;
use crate::outcome::FailureKind;
use aws_sdk_sqs::config::http::HttpResponse;
use aws_sdk_sqs::error::{ErrorMetadata, SdkError};
use aws_sdk_sqs::operation::send_message::SendMessageError;
use std::time::Duration;

fn problems(f: impl FnOnce(&mut Problems)) -> Vec<String> {
    let mut p = Problems::default();
    f(&mut p);
    p.0.iter().map(|e| e.to_string()).collect()
}

#[test]
fn queues_are_names_or_urls_and_fifo_by_their_suffix() {
    assert_eq!(
        Queue::parse("orders").unwrap(),
        Queue::Name("orders".into())
    );
    let q = Queue::parse("https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo").unwrap();
    assert_eq!(q.name(), "orders.fifo");
    assert!(q.fifo());
    assert!(!Queue::parse("orders-fifo").unwrap().fifo());
    for bad in [
        "",
        "a b",
        ".fifo",
        "orders.txt",
        &"x".repeat(81),
        "ftp://h/1/q",
        "https://h/1/q?x=1",
        "https://u:pw@h/1/q",
        "https://h/",
    ] {
        let e = Queue::parse(bad).unwrap_err();
        assert!(!e.contains("pw@"), "{e}");
    }
    let e = serde_yaml::from_str::<InjectConfig>("{connection: q, queue: 'a b'}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not an SQS queue name"), "{e}");
    let c: InjectConfig = serde_yaml::from_str("{connection: q, queue: orders}").unwrap();
    assert_eq!(c.queue.name(), "orders");
}

#[test]
fn configuration_mistakes_are_named_and_secrets_never_printed() {
    let c: ConnectionConfig = serde_yaml::from_str(
        "{region: 'EU west', endpoint: 'ftp://u:hunter2@x', access_key_id: AKID, session_token: tok-hunter2}",
    )
    .unwrap();
    let said = problems(|p| c.validate("c", p));
    assert_eq!(
        said,
        [
            "c.region: `EU west` is not an AWS region (write e.g. eu-west-1)",
            "c.endpoint: `ftp://***@x` is not an endpoint URL (write e.g. http://127.0.0.1:5000 or https://sqs.eu-west-1.amazonaws.com)",
            "c: `access_key_id` needs `secret_access_key` (or leave both out for the standard AWS credential chain)",
        ]
    );
    let c: ConnectionConfig = serde_yaml::from_str(
        "{region: eu-west-1, access_key_id: AKID, secret_access_key: sk-hunter2, session_token: tok-hunter2}",
    )
    .unwrap();
    assert!(problems(|p| c.validate("c", p)).is_empty());
    let shown = format!("{c:?} {c:#?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("AKID"),
        "{shown}"
    );
    let c: ConnectionConfig =
        serde_yaml::from_str("{access_key_id: '', secret_access_key: x}").unwrap();
    assert_eq!(
        problems(|p| c.validate("c", p)),
        ["c.access_key_id: is empty: leave the key out to use the standard AWS credential chain"]
    );
    let c: ConnectionConfig = serde_yaml::from_str("{session_token: t}").unwrap();
    assert_eq!(
        problems(|p| c.validate("c", p)),
        ["c.session_token: a session token goes with `access_key_id` and `secret_access_key`"]
    );
    assert!(serde_yaml::from_str::<ConnectionConfig>("{regoin: x}").is_err());

    let k: CatchConfig = serde_yaml::from_str("{connection: q, queue: o}").unwrap();
    assert_eq!(
        (k.wait, k.visibility_timeout),
        (Duration::from_secs(1), None)
    );
    assert!(problems(|p| k.validate("k", p)).is_empty());
    let k: CatchConfig =
        serde_yaml::from_str("{connection: q, queue: o, wait: 21s, visibility_timeout: 1500ms}")
            .unwrap();
    assert_eq!(
        problems(|p| k.validate("k", p)),
        [
            "k.wait: 21s must be whole seconds from 1s to 20s (SQS's long poll)",
            "k.visibility_timeout: 1s 500ms must be whole seconds from 1s to 12h (at 0 a message chirp cannot delete comes straight back, again and again)"
        ]
    );
    let k: CatchConfig = serde_yaml::from_str("{connection: q, queue: o, wait: 500ms}").unwrap();
    assert_eq!(problems(|p| k.validate("k", p)).len(), 1);
}

#[test]
fn deduplication_ids_fit_sqs_and_stay_unique() {
    assert_eq!(deduplication_id("chirp1.short.token"), "chirp1.short.token");
    let long = format!(
        "chirp1.{}.{:016x}.0.123456.1700000000000000.{}",
        "p".repeat(64),
        255,
        "a".repeat(32)
    );
    let id = deduplication_id(&long);
    assert_eq!(id.len(), 128);
    assert!(long.ends_with(id));
}

fn service_error(code: &str, status: u16) -> SdkError<SendMessageError, HttpResponse> {
    let err = SendMessageError::generic(ErrorMetadata::builder().code(code).build());
    let raw = HttpResponse::new(
        status.try_into().unwrap(),
        aws_smithy_types::body::SdkBody::empty(),
    );
    SdkError::service_error(err, raw)
}

#[test]
fn errors_are_classified_by_what_sqs_said() {
    for (code, status, kind) in [
        ("InvalidClientTokenId", 403, FailureKind::Auth),
        ("SignatureDoesNotMatch", 403, FailureKind::Auth),
        ("AccessDenied", 403, FailureKind::Auth),
        ("AccessDeniedException", 400, FailureKind::Auth),
        ("KMS.AccessDeniedException", 400, FailureKind::Auth),
        ("ExpiredToken", 400, FailureKind::Auth),
        ("RequestThrottled", 400, FailureKind::Throttled),
        ("ThrottlingException", 400, FailureKind::Throttled),
        ("OverLimit", 403, FailureKind::Throttled),
        (
            "AWS.SimpleQueueService.NonExistentQueue",
            400,
            FailureKind::Rejected,
        ),
        ("QueueDoesNotExist", 400, FailureKind::Rejected),
        ("InvalidMessageContents", 400, FailureKind::Rejected),
        ("ServiceUnavailable", 503, FailureKind::Unavailable),
        ("", 500, FailureKind::Unavailable),
        ("", 403, FailureKind::Auth),
    ] {
        assert_eq!(by_code(code, status), kind, "{code} {status}");
        let (k, c) = classify(&service_error(code, status));
        assert_eq!(
            (k, c.as_deref()),
            (kind, (!code.is_empty()).then_some(code))
        );
    }
    let timed_out: SdkError<SendMessageError, HttpResponse> =
        SdkError::timeout_error("operation timeout");
    assert_eq!(classify(&timed_out).0, FailureKind::Timeout);
    let refused: SdkError<SendMessageError, HttpResponse> =
        SdkError::dispatch_failure(aws_sdk_sqs::error::ConnectorError::io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into(),
        ));
    assert_eq!(classify(&refused).0, FailureKind::Unavailable);
    let no_credentials: SdkError<SendMessageError, HttpResponse> =
        SdkError::dispatch_failure(aws_sdk_sqs::error::ConnectorError::other(
            aws_credential_types::provider::error::CredentialsError::not_loaded("no keys anywhere")
                .into(),
            None,
        ));
    assert_eq!(classify(&no_credentials).0, FailureKind::Auth);
}
