use super::config::{CatchConfig, InjectConfig};
use super::inject::classify_status;
use crate::config::errors::Problems;
use crate::outcome::FailureKind;

#[test]
fn statuses_map_to_failure_kinds() {
    use reqwest::StatusCode as S;
    assert!(classify_status(S::OK).is_ok());
    assert!(classify_status(S::ACCEPTED).is_ok());
    let kind = |s| classify_status(s).unwrap_err().kind;
    assert_eq!(kind(S::UNAUTHORIZED), FailureKind::Auth);
    assert_eq!(kind(S::FORBIDDEN), FailureKind::Auth);
    assert_eq!(kind(S::TOO_MANY_REQUESTS), FailureKind::Throttled);
    assert_eq!(kind(S::GATEWAY_TIMEOUT), FailureKind::Timeout);
    assert_eq!(kind(S::SERVICE_UNAVAILABLE), FailureKind::Unavailable);
    assert_eq!(kind(S::BAD_REQUEST), FailureKind::Rejected);
    assert_eq!(kind(S::MOVED_PERMANENTLY), FailureKind::Rejected);
}

#[test]
fn bad_urls_and_headers_are_reported_without_their_secret_values() {
    let cfg: InjectConfig = serde_yaml::from_str(
        "{url: 'ftp://x?token=hunter2', headers: {'bad name': x, ok: \"a\\nhunter2\"}, signature_header: 'no good'}",
    )
    .unwrap();
    let mut p = Problems::default();
    cfg.validate("probes[0].inject.http", &mut p);
    let all: Vec<String> = p.0.iter().map(ToString::to_string).collect();
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(all.iter().all(|e| !e.contains("hunter2")), "{all:#?}");
    let c: CatchConfig = serde_yaml::from_str("{}").unwrap();
    assert_eq!(c.signature_header, "X-Chirp-Signature");
}
