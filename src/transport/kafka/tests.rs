use super::*;
use crate::config::secret::Secret;
use crate::config::tls::TlsConfig;
use config::{Brokers, Sasl, SaslMechanism};

#[test]
fn connection_settings_map_to_librdkafka_properties() {
    let conn = ConnectionConfig {
        brokers: Brokers::List("b:9092".into()),
        tls: Some(TlsConfig {
            ca_file: Some("/ca.pem".into()),
            ..TlsConfig::default()
        }),
        sasl: Some(Sasl {
            mechanism: SaslMechanism::ScramSha256,
            username: "chirp".into(),
            password: Secret::new("pw"),
        }),
        properties: [
            ("client.id".to_owned(), Secret::new("mine")),
            ("security.protocol".to_owned(), Secret::new("sasl_ssl")),
        ]
        .into(),
    };
    let c = client_config(&conn, "b:9092");
    assert_eq!(c.get("bootstrap.servers"), Some("b:9092"));
    assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
    assert_eq!(c.get("ssl.ca.location"), Some("/ca.pem"));
    assert_eq!(c.get("sasl.mechanism"), Some("SCRAM-SHA-256"));
    assert_eq!(c.get("sasl.username"), Some("chirp"));
    assert_eq!(c.get("sasl.password"), Some("pw"));
    assert_eq!(c.get("client.id"), Some("mine"));
    // TLS without a CA file: the system's certificates, wherever they are
    // (the statically linked OpenSSL does not know Debian's directory).
    let system_ca = ConnectionConfig {
        tls: Some(TlsConfig::default()),
        ..conn.clone()
    };
    assert_eq!(
        client_config(&system_ca, "b:9092").get("ssl.ca.location"),
        Some("probe")
    );
    let plain = ConnectionConfig {
        tls: None,
        sasl: None,
        properties: Default::default(),
        ..conn
    };
    assert_eq!(
        client_config(&plain, "b:9092").get("security.protocol"),
        Some("plaintext")
    );
}

#[test]
fn delivery_errors_map_to_failure_kinds() {
    let kind = |c: RDKafkaErrorCode| classify(&KafkaError::MessageProduction(c)).kind;
    assert_eq!(
        kind(RDKafkaErrorCode::MessageTimedOut),
        FailureKind::Timeout
    );
    assert_eq!(kind(RDKafkaErrorCode::PurgeQueue), FailureKind::Timeout);
    assert_eq!(kind(RDKafkaErrorCode::QueueFull), FailureKind::Throttled);
    assert_eq!(
        kind(RDKafkaErrorCode::TopicAuthorizationFailed),
        FailureKind::Auth
    );
    assert_eq!(
        kind(RDKafkaErrorCode::UnknownTopicOrPartition),
        FailureKind::Unavailable
    );
    assert_eq!(
        kind(RDKafkaErrorCode::MessageSizeTooLarge),
        FailureKind::Rejected
    );
    assert_eq!(kind(RDKafkaErrorCode::Fail), FailureKind::Other);
}
