//! The canary: its token `chirp1.<probe>.<run>.<lane>.<seq>.<sent_us>.<mac>`, an ASCII
//! string safe in JSON, headers and URLs, signed with a truncated
//! HMAC-SHA256. Also finds a token in a message (header, JSON pointer, or a
//! scan of the body). Parsing never panics, whatever the input.
//! The format is specified in `docs/canary.md`.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// Format version prefix; a future format gets `chirp2.`.
pub const PREFIX: &str = "chirp1.";
/// Header that carries the token where a transport has headers.
pub const HEADER: &str = "Chirp-Token";
/// Header that carries the canary's W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Bytes of the HMAC kept in the token (128 bits).
const MAC_LEN: usize = 16;
/// Longest possible token: prefix, 64-byte probe, 16 hex, two u64, 32 hex, 5 dots.
pub const MAX_LEN: usize = PREFIX.len() + 64 + 1 + 16 + 1 + 10 + 1 + 20 + 1 + 20 + 1 + MAC_LEN * 2;

/// The fields a token carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub probe: String,
    /// Random per process start: tells this run's canaries from any other's.
    pub run_id: u64,
    /// Which of the probe's sequences: the Kafka partition in per-partition
    /// mode, else 0. Each lane numbers its canaries from 0.
    pub lane: u32,
    pub seq: u64,
    /// Wall-clock send time, microseconds since the Unix epoch.
    pub sent_unix_us: u64,
}

/// Why a string is not a valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed canary token")]
    Malformed,
    #[error("canary token with a bad signature")]
    BadMac,
}

/// Signs tokens and webhooks with one key; verifies with it or, while a
/// key is being rotated, with one of the previous keys.
#[derive(Clone)]
pub struct Signer {
    mac: HmacSha256,
    previous: std::sync::Arc<[HmacSha256]>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer(***)")
    }
}

impl Signer {
    pub fn new(key: &[u8]) -> Self {
        // HMAC takes keys of any length; this cannot fail.
        Signer {
            mac: Self::mac(key),
            previous: std::sync::Arc::new([]),
        }
    }

    /// Signs with `key`; also accepts what `previous` keys signed.
    pub fn rotating(key: &[u8], previous: &[&[u8]]) -> Self {
        Signer {
            mac: Self::mac(key),
            previous: previous.iter().map(|k| Self::mac(k)).collect(),
        }
    }

    fn mac(key: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        HmacSha256::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
    }

    /// The current key, then the previous ones.
    fn keys(&self) -> impl Iterator<Item = &HmacSha256> {
        std::iter::once(&self.mac).chain(self.previous.iter())
    }

    /// Encodes and signs `token`.
    pub fn encode(&self, token: &Token) -> String {
        let body = format!(
            "{PREFIX}{}.{:016x}.{}.{}.{}",
            token.probe, token.run_id, token.lane, token.seq, token.sent_unix_us
        );
        let tag = self.tag(body.as_bytes());
        let mut out = body;
        out.push('.');
        out.push_str(&hex::encode(&tag[..MAC_LEN]));
        out
    }

    /// Parses `s` and checks its MAC.
    pub fn decode(&self, s: &str) -> Result<Token, TokenError> {
        let (token, body, mac_hex) = parse(s)?;
        let mut mac = [0u8; MAC_LEN];
        hex::decode_to_slice(mac_hex, &mut mac).map_err(|_| TokenError::Malformed)?;
        let signed = |k: &HmacSha256| {
            let mut m = k.clone();
            m.update(body.as_bytes());
            m.verify_truncated_left(&mac).is_ok()
        };
        if self.keys().any(signed) {
            Ok(token)
        } else {
            Err(TokenError::BadMac)
        }
    }

    /// HMAC-SHA256 of `data`, for webhook signatures.
    pub fn tag(&self, data: &[u8]) -> [u8; 32] {
        let mut m = self.mac.clone();
        m.update(data);
        m.finalize().into_bytes().into()
    }

    /// Checks a `sha256=<hex>` webhook signature over `data` in constant time.
    pub fn verify_signature(&self, data: &[u8], header: &str) -> bool {
        let Some(hex_sig) = header.trim().strip_prefix("sha256=") else {
            return false;
        };
        let mut sig = [0u8; 32];
        if hex::decode_to_slice(hex_sig, &mut sig).is_err() {
            return false;
        }
        self.keys().any(|k| {
            let mut m = k.clone();
            m.update(data);
            m.verify_slice(&sig).is_ok()
        })
    }

    /// The `sha256=<hex>` signature header value for `data`.
    pub fn signature(&self, data: &[u8]) -> String {
        format!("sha256={}", hex::encode(self.tag(data)))
    }
}

/// Splits a token into its fields, the signed part, and the MAC hex.
fn parse(s: &str) -> Result<(Token, &str, &str), TokenError> {
    if s.len() > MAX_LEN || !s.starts_with(PREFIX) {
        return Err(TokenError::Malformed);
    }
    let (body, mac_hex) = s.rsplit_once('.').ok_or(TokenError::Malformed)?;
    if mac_hex.len() != MAC_LEN * 2 {
        return Err(TokenError::Malformed);
    }
    // `chirp1.<mac>` alone splits into `chirp1` and the MAC: no fields.
    let fields = body.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let mut parts = fields.split('.');
    let (Some(probe), Some(run), Some(lane), Some(seq), Some(sent), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let probe_ok = !probe.is_empty()
        && probe.len() <= 64
        && probe
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let lane_ok = all_digits(lane) && lane.len() <= 10;
    if !probe_ok || run.len() != 16 || !lane_ok || !all_digits(seq) || !all_digits(sent) {
        return Err(TokenError::Malformed);
    }
    let run_id = u64::from_str_radix(run, 16).map_err(|_| TokenError::Malformed)?;
    let lane = lane.parse().map_err(|_| TokenError::Malformed)?;
    let seq = seq.parse().map_err(|_| TokenError::Malformed)?;
    let sent_unix_us = sent.parse().map_err(|_| TokenError::Malformed)?;
    Ok((
        Token {
            probe: probe.to_owned(),
            run_id,
            lane,
            seq,
            sent_unix_us,
        },
        body,
        mac_hex,
    ))
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_'
}

/// Finds the first token-shaped string in `body` (by its `chirp1.` prefix).
/// Returns the candidate even if it turns out malformed, so the caller can
/// count it as rejected rather than unrelated.
///
/// Binary encodings (Avro, Protobuf) put a length before a string and the
/// next field after it, and either may be a byte that could belong to a
/// token: a candidate ends after its MAC once it has a token's shape, and a
/// prefix glued to the byte before it counts only when a whole well-formed
/// token follows (so `xchirp1.word` in text is still no token).
pub fn scan(body: &[u8]) -> Option<&str> {
    let prefix = PREFIX.as_bytes();
    let mut from = 0;
    while from + prefix.len() <= body.len() {
        let rel = body[from..]
            .windows(prefix.len())
            .position(|w| w == prefix)?;
        let start = from + rel;
        let (len, whole) = candidate(&body[start..]);
        if start > 0 && is_token_byte(body[start - 1]) && !whole {
            from = start + 1;
            continue;
        }
        // Token bytes are ASCII, so this slice is valid UTF-8.
        return std::str::from_utf8(&body[start..start + len]).ok();
    }
    None
}

/// The length of the token candidate at the start of `b`, and whether it
/// has a whole token's shape (six dots, then a MAC of hex digits).
fn candidate(b: &[u8]) -> (usize, bool) {
    let greedy = b
        .iter()
        .take(MAX_LEN + 1)
        .take_while(|c| is_token_byte(**c))
        .count();
    let mut dots = 0;
    for (i, c) in b[..greedy].iter().enumerate() {
        if *c == b'.' {
            dots += 1;
            if dots == 6 {
                let end = i + 1 + MAC_LEN * 2;
                if end <= greedy && b[i + 1..end].iter().all(u8::is_ascii_hexdigit) {
                    return (end, true);
                }
                break;
            }
        }
    }
    (greedy, false)
}

/// Where a token was looked for in a message, in order: header, JSON pointer, body scan.
pub fn find<'a>(
    header: Option<&'a str>,
    body: &'a [u8],
    pointer: Option<&str>,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(h) = header {
        return Some(std::borrow::Cow::Borrowed(h.trim()));
    }
    if let Some(ptr) = pointer {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
            if let Some(s) = v.pointer(ptr).and_then(|t| t.as_str()) {
                return Some(std::borrow::Cow::Owned(s.to_owned()));
            }
        }
    }
    scan(body).map(std::borrow::Cow::Borrowed)
}

/// The default canary body: a small JSON document padded to `size` bytes.
pub fn body(token: &str, t: &Token, size: usize) -> Vec<u8> {
    let sent = UNIX_EPOCH + std::time::Duration::from_micros(t.sent_unix_us);
    let mut s = format!(
        r#"{{"chirp":"{token}","probe":"{}","lane":{},"seq":{},"sent_at":"{}""#,
        t.probe,
        t.lane,
        t.seq,
        humantime::format_rfc3339_micros(sent)
    );
    const PAD_OVERHEAD: usize = r#","pad":""}"#.len();
    if s.len() + PAD_OVERHEAD < size {
        s.push_str(r#","pad":""#);
        let n = size - s.len() - 2;
        s.extend(std::iter::repeat_n('x', n));
        s.push('"');
    }
    s.push('}');
    s.into_bytes()
}

/// The wall-clock time of a monotonic instant (span times, report times).
pub fn wall(at: tokio::time::Instant) -> SystemTime {
    let now = tokio::time::Instant::now();
    let sys = SystemTime::now();
    if at <= now {
        sys - (now - at)
    } else {
        sys + (at - now)
    }
}

/// Microseconds since the Unix epoch, now.
pub fn unix_now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn token() -> Token {
        Token {
            probe: "orders-eu_1".into(),
            run_id: 0xdead_beef_0123_4567,
            lane: 3,
            seq: 42,
            sent_unix_us: 1_790_000_000_123_456,
        }
    }

    #[test]
    fn round_trips_and_matches_documented_form() {
        let s = Signer::new(b"0123456789abcdef");
        let enc = s.encode(&token());
        assert!(enc.starts_with("chirp1.orders-eu_1.deadbeef01234567.3.42.1790000000123456."));
        assert_eq!(
            enc.len(),
            "chirp1.orders-eu_1.deadbeef01234567.3.42.1790000000123456.".len() + 32
        );
        assert_eq!(s.decode(&enc), Ok(token()));
    }

    #[test]
    fn another_key_or_a_changed_field_is_a_bad_mac() {
        let s = Signer::new(b"0123456789abcdef");
        let enc = s.encode(&token());
        assert_eq!(
            Signer::new(b"another key 12345").decode(&enc),
            Err(TokenError::BadMac)
        );
        let forged = enc.replace(".42.", ".43.");
        assert_eq!(s.decode(&forged), Err(TokenError::BadMac));
    }

    #[test]
    fn a_rotating_signer_signs_with_the_new_key_and_accepts_the_old() {
        let (old, new) = (
            b"the-old-key-0123".as_slice(),
            b"the-new-key-4567".as_slice(),
        );
        let rotating = Signer::rotating(new, &[old]);
        let by_old = Signer::new(old).encode(&token());
        assert_eq!(rotating.decode(&by_old), Ok(token()));
        let by_rotating = rotating.encode(&token());
        assert_eq!(Signer::new(new).decode(&by_rotating), Ok(token()));
        assert_eq!(
            Signer::new(old).decode(&by_rotating),
            Err(TokenError::BadMac)
        );
        let body = b"{\"a\":1}";
        assert!(rotating.verify_signature(body, &Signer::new(old).signature(body)));
        assert_eq!(rotating.signature(body), Signer::new(new).signature(body));
        let stranger = Signer::new(b"never-had-this-key").encode(&token());
        assert_eq!(rotating.decode(&stranger), Err(TokenError::BadMac));
        assert!(
            !rotating.verify_signature(body, &Signer::new(b"never-had-this-key").signature(body))
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let s = Signer::new(b"0123456789abcdef");
        for bad in [
            // Found by the fuzzer: the prefix, then only a MAC-sized field.
            "chirp1.ccc3456789abcdef0129475368abcdef",
            "",
            "chirp1.",
            "chirp1.a.b.c.d.e.f",
            "chirp1.p.deadbeef01234567.1.2.00000000000000000000000000000000",
            "chirp1.p.deadbeef01234567.99999999999.1.2.00000000000000000000000000000000",
            "chirp1.p.deadbeef01234567.0.1.2.zz",
            "chirp1.p.deadbeef0123456.0.1.2.00000000000000000000000000000000",
            "chirp1.p.deadbeef01234567.0.-1.2.00000000000000000000000000000000",
            "chirp1.p.deadbeef01234567.0.99999999999999999999.2.00000000000000000000000000000000",
            "chirp1.p q.deadbeef01234567.0.1.2.00000000000000000000000000000000",
            "chirp2.p.deadbeef01234567.0.1.2.00000000000000000000000000000000",
        ] {
            assert_eq!(s.decode(bad), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn decoding_random_bytes_never_panics() {
        let s = Signer::new(b"0123456789abcdef");
        let good = s.encode(&token());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let mut bytes = good.clone().into_bytes();
            // Mutate a few bytes of a real token, or start from random bytes.
            if rng.gen_bool(0.5) {
                for _ in 0..rng.gen_range(1..4) {
                    let i = rng.gen_range(0..bytes.len());
                    bytes[i] = rng.gen();
                }
                bytes.truncate(rng.gen_range(0..=bytes.len()));
            } else {
                bytes = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = s.decode(&text);
            let _ = scan(&bytes);
        }
    }

    #[test]
    fn scan_finds_a_token_inside_a_rewrapped_event() {
        let s = Signer::new(b"0123456789abcdef");
        let enc = s.encode(&token());
        let wrapped = format!(r#"{{"envelope":{{"data":"{{\"chirp\":\"{enc}\"}}"}},"x":1}}"#);
        assert_eq!(scan(wrapped.as_bytes()), Some(enc.as_str()));
        assert_eq!(scan(b"no token here"), None);
        assert_eq!(scan(b"xchirp1.not-a-start"), None);
        // In a binary encoding: a length byte before, the next field after.
        let mut framed = vec![0x0a, b'U'];
        framed.extend_from_slice(enc.as_bytes());
        framed.extend_from_slice(b"T\x02");
        assert_eq!(scan(&framed), Some(enc.as_str()));
        // A malformed candidate keeps its old reading: everything token-like.
        assert_eq!(
            scan(b" chirp1.a.b.c.d.e.f.zz"),
            Some("chirp1.a.b.c.d.e.f.zz")
        );
    }

    #[test]
    fn body_is_json_padded_to_size() {
        let s = Signer::new(b"0123456789abcdef");
        let t = token();
        let enc = s.encode(&t);
        for size in [0, 10, 200, 1000] {
            let b = body(&enc, &t, size);
            assert!(b.len() >= size, "{} < {size}", b.len());
            if size > 200 {
                assert_eq!(b.len(), size);
            }
            let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["chirp"], enc);
            assert_eq!(v["seq"], 42);
        }
        assert_eq!(
            find(None, &body(&enc, &t, 0), Some("/chirp")).as_deref(),
            Some(enc.as_str())
        );
    }

    #[test]
    fn signatures_verify_only_for_the_same_body() {
        let s = Signer::new(b"0123456789abcdef");
        let sig = s.signature(b"payload");
        assert!(s.verify_signature(b"payload", &sig));
        assert!(!s.verify_signature(b"payload2", &sig));
        assert!(!s.verify_signature(b"payload", "sha256=zz"));
        assert!(!s.verify_signature(b"payload", ""));
    }
}
