//! Errors as transports report them: the whole chain for a log line, and
//! the failure kind an operating-system error says.

use crate::outcome::FailureKind;

/// The error and its sources, joined by `: ` (for log lines).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The failure kind an operating-system error in the chain says, if any.
pub fn classify_io(e: &(dyn std::error::Error + 'static)) -> Option<FailureKind> {
    use std::io::ErrorKind as K;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                K::TimedOut | K::WouldBlock => FailureKind::Timeout,
                K::PermissionDenied => FailureKind::Auth,
                K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::AddrNotAvailable
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::NetworkDown
                | K::UnexpectedEof => FailureKind::Unavailable,
                _ => FailureKind::Other,
            });
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::BoxError;

    #[test]
    fn operating_system_errors_anywhere_in_the_chain_are_classified() {
        #[derive(Debug, thiserror::Error)]
        #[error("request failed")]
        struct Outer(#[source] std::io::Error);
        let refused = Outer(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify_io(&refused), Some(FailureKind::Unavailable));
        let timed_out = Outer(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert_eq!(classify_io(&timed_out), Some(FailureKind::Timeout));
        let plain: BoxError = "no io error here".into();
        assert_eq!(classify_io(plain.as_ref()), None);
        assert_eq!(chain(&refused), "request failed: connection refused");
    }
}
