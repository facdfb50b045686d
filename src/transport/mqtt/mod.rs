//! MQTT 5 and 3.1.1 through rumqttc: named connections with a client per
//! role (injects, catches), each driven by its own event loop task that
//! reconnects forever in `run`. Credentials written in the URL are taken
//! out of it and given to the client as the CONNECT's user and password.
//!
//! rumqttc's `publish` returns once the request is queued, before the
//! broker has it; the event loop task binds each queued publish to the
//! packet id it is sent with (`Outgoing::Publish`, emitted in request
//! order) and answers its waiter on the PUBACK (QoS 1) or PUBCOMP (QoS 2).
//! On a disconnect every waiter is answered `Unconfirmed` and rumqttc's
//! unsent and unacknowledged requests are forgotten, so the order of
//! requests and waiters stays the same.

pub mod catch;
mod client;
pub mod config;
pub mod inject;
#[cfg(test)]
mod tests;

use super::{Ack, CatchSink, Caught, Context, LinkStatus, PublishError, Roles, SetupError};
use crate::config::secret::Endpoint;
use crate::config::tls::TlsConfig;
use crate::outcome::FailureKind;
use client::{Client, Ev, EventLoop};
use percent_encoding::percent_decode_str;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long the broker keeps a catch client's session (its subscriptions
/// and the messages queued for it) after a disconnect (MQTT 5).
const SESSION_EXPIRY_SECS: u32 = 300;

/// The largest packet MQTT can carry (its remaining length's limit).
const MAX_PACKET: usize = 268_435_455;

/// The largest packet an MQTT 5 client takes (past a 1 MiB canary).
const MAX_INCOMING_V5: u32 = 16 << 20;

/// Requests a client queues before `send` reports it throttled.
const REQUEST_QUEUE: usize = 1000;

/// A server URL with its credentials taken out.
#[derive(Clone, PartialEq, Eq)]
pub struct ParsedUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub auth: Option<(String, String)>,
}

impl std::fmt::Debug for ParsedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        let user = if self.auth.is_some() { "***@" } else { "" };
        write!(f, "{scheme}://{user}{}:{}", self.host, self.port)
    }
}

/// A server URL that cannot be used; the text never quotes credentials.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// Parses `mqtt[s]://[user:password@]host[:port]`.
pub fn parse_url(text: &str) -> Result<ParsedUrl, UrlError> {
    let shown = Endpoint::new(text).redacted();
    let bad = |why: &str| {
        UrlError(format!(
            "`{shown}` is not an MQTT broker URL{why} (write e.g. mqtt://host:1883 or mqtts://host:8883)"
        ))
    };
    let url = url::Url::parse(text.trim()).map_err(|_| bad(""))?;
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        _ => return Err(bad(": the scheme must be mqtt or mqtts")),
    };
    let Some(host) = url.host_str().filter(|h| !h.is_empty()) else {
        return Err(bad(": no host"));
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(bad(": a broker URL has no path, query or fragment"));
    }
    let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
    let user = decode(url.username());
    let auth = match (user.is_empty(), url.password()) {
        (true, None) => None,
        (false, Some(pw)) => Some((user, decode(pw))),
        (true, Some(_)) => return Err(bad(": a password without a user")),
        (false, None) => return Err(bad(": a user without a password")),
    };
    // `[::1]` for the URL, `::1` for the socket.
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    Ok(ParsedUrl {
        port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
        host,
        tls,
        auth,
    })
}

/// The rustls client configuration for `tls` (ring; the system's roots
/// unless `ca_file` names others).
pub fn tls_config(tls: &TlsConfig) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_file {
        Some(path) => {
            let certs: Vec<CertificateDer> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read CA file `{path}`: {e}"))?;
            if certs.is_empty() {
                return Err(format!("CA file `{path}` holds no certificate"));
            }
            for c in certs {
                roots.add(c).map_err(|e| format!("CA file `{path}`: {e}"))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("cannot read certificate file `{cert}`: {e}"))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("cannot read key file `{key}`: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// A connected (or connecting) named connection: a client for the
/// probes' injects and another for their catches.
pub struct Connected {
    inject: Option<Arc<Link>>,
    catch: Option<Arc<Link>>,
}

impl Connected {
    pub fn links(&self) -> Vec<Arc<LinkStatus>> {
        [&self.inject, &self.catch]
            .into_iter()
            .flatten()
            .map(|l| Arc::clone(&l.status))
            .collect()
    }

    pub(crate) fn inject(&self) -> Option<&Arc<Link>> {
        self.inject.as_ref()
    }

    pub(crate) fn catch(&self) -> Option<&Arc<Link>> {
        self.catch.as_ref()
    }
}

impl Drop for Connected {
    /// Ends the event loop tasks (they disconnect cleanly).
    fn drop(&mut self) {
        for l in [&self.inject, &self.catch].into_iter().flatten() {
            l.stop.cancel();
        }
    }
}

/// A publish handed to the client, waiting for its end.
struct Waiter {
    tx: oneshot::Sender<Result<Ack, PublishError>>,
    qos: u8,
}

impl Waiter {
    fn answer(self, r: Result<Ack, PublishError>) {
        let _ = self.tx.send(r);
    }
}

/// A probe's subscription on the catch client.
struct Sub {
    id: u64,
    filter: String,
    /// The subscription identifier, one per filter (MQTT 5).
    sid: usize,
    qos: u8,
    sink: Arc<dyn CatchSink>,
    /// True once a SUBACK granted it (in this session).
    acked: bool,
    ready: watch::Sender<bool>,
}

#[derive(Default)]
struct LinkState {
    /// Publishes queued in the client, not yet written, in order.
    unsent: VecDeque<Waiter>,
    /// The publish waiting for its packet id to be free.
    collided: Option<Waiter>,
    /// Written publishes awaiting their PUBACK or PUBCOMP, by packet id.
    sent: HashMap<u16, Waiter>,
    subs: Vec<Sub>,
    /// Subscriptions whose SUBSCRIBE is queued, in order.
    subscribing: VecDeque<u64>,
    /// Written SUBSCRIBEs awaiting their SUBACK.
    awaiting: HashMap<u16, u64>,
}

/// One client of a named connection and what its event loop task shares.
pub struct Link {
    client: Client,
    name: String,
    shown_url: String,
    up: AtomicBool,
    status: Arc<LinkStatus>,
    state: Mutex<LinkState>,
    next_sub: AtomicU64,
    /// Ends the event loop task (chirp stops, or a reload closes the connection).
    stop: CancellationToken,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a publish and returns the receiver of its end.
    fn publish(
        &self,
        topic: &str,
        qos: u8,
        msg: super::Outgoing,
    ) -> Result<oneshot::Receiver<Result<Ack, PublishError>>, PublishError> {
        if !self.is_up() {
            return Err(PublishError::new(
                FailureKind::Unavailable,
                "not connected to the MQTT broker",
            ));
        }
        let (tx, rx) = oneshot::channel();
        // Under the lock: the request and its waiter enter their queues together.
        let mut s = self.lock();
        if !self
            .client
            .publish(topic, qos, msg.body, &msg.token, msg.traceparent.as_deref())
        {
            return Err(PublishError::new(
                FailureKind::Throttled,
                "the MQTT client's request queue is full",
            ));
        }
        s.unsent.push_back(Waiter { tx, qos });
        Ok(rx)
    }

    /// Adds a subscription (sent now if connected, else on connecting).
    fn subscribe(
        &self,
        filter: &str,
        qos: u8,
        sink: Arc<dyn CatchSink>,
    ) -> (u64, watch::Receiver<bool>) {
        let id = self.next_sub.fetch_add(1, Ordering::Relaxed);
        let (ready, rx) = watch::channel(false);
        let mut s = self.lock();
        // Probes reading the same filter share its subscription (a second
        // SUBSCRIBE to a filter replaces the first, identifier included).
        let sid = match s.subs.iter().find(|x| x.filter == filter) {
            Some(x) => x.sid,
            // Never reused: a filter left while disconnected may still be
            // subscribed in the broker's session.
            None => id as usize + 1,
        };
        s.subs.push(Sub {
            id,
            sid,
            filter: filter.to_owned(),
            qos,
            sink,
            acked: false,
            ready,
        });
        if self.is_up() && self.client.subscribe(filter, qos, sid) {
            s.subscribing.push_back(id);
        }
        (id, rx)
    }

    /// Removes a subscription (its probe stopped); unsubscribes its filter
    /// unless another probe still reads it.
    fn unsubscribe(&self, id: u64) {
        let mut s = self.lock();
        let Some(at) = s.subs.iter().position(|x| x.id == id) else {
            return;
        };
        let gone = s.subs.remove(at);
        if !s.subs.iter().any(|x| x.filter == gone.filter) && self.is_up() {
            self.client.unsubscribe(&gone.filter);
        }
    }

    /// The connection is gone: every waiter is answered, nothing queued
    /// before is sent after the reconnect (`forget`, under the same lock
    /// that `publish` takes).
    fn disconnected(&self, events: &mut EventLoop) {
        let mut guard = self.lock();
        let s = &mut *guard;
        self.up.store(false, Ordering::Release);
        events.forget(!s.subs.is_empty());
        // Never written (forgotten above): the broker never had them, so
        // they failed to publish; blaming the pipeline (lost) would be wrong.
        let unsent: Vec<Waiter> = s.unsent.drain(..).chain(s.collided.take()).collect();
        let written: Vec<Waiter> = s.sent.drain().map(|(_, w)| w).collect();
        s.subscribing.clear();
        s.awaiting.clear();
        drop(guard);
        for w in unsent {
            w.answer(Err(PublishError::new(
                FailureKind::Unavailable,
                "the connection to the MQTT broker was lost before the publish was written",
            )));
        }
        // Written: the broker may have it, the catch side decides.
        for w in written {
            w.answer(Ok(Ack::Unconfirmed));
        }
    }

    fn on_event(&self, ev: Ev) {
        match ev {
            Ev::ConnAck { session_present } => {
                let mut s = self.lock();
                self.up.store(true, Ordering::Release);
                let role = self.status.role;
                tracing::info!(connection = %self.name, role, session_present, "MQTT connected.");
                let s = &mut *s;
                for sub in s.subs.iter_mut() {
                    if !session_present {
                        sub.acked = false;
                    }
                    if !sub.acked && self.client.subscribe(&sub.filter, sub.qos, sub.sid) {
                        s.subscribing.push_back(sub.id);
                    }
                }
            }
            Ev::Sent(pkid) => {
                let mut s = self.lock();
                let w = match s.collided.take() {
                    Some(w) => Some(w),
                    None => s.unsent.pop_front(),
                };
                if let Some(w) = w {
                    if pkid == 0 || w.qos == 0 {
                        // QoS 0: written is all there is.
                        w.answer(Ok(Ack::Confirmed));
                    } else if let Some(old) = s.sent.insert(pkid, w) {
                        // rumqttc frees a QoS 2 packet id at PUBREC and may
                        // reuse it before the PUBCOMP: the older publish can
                        // no longer be told apart, so it stays in flight.
                        tracing::debug!(connection = %self.name, pkid, "MQTT packet id reused before its PUBCOMP.");
                        old.answer(Ok(Ack::Unconfirmed));
                    }
                }
            }
            Ev::Collided => {
                let mut s = self.lock();
                s.collided = s.unsent.pop_front();
            }
            Ev::Done { pkid, failure } => {
                let w = self.lock().sent.remove(&pkid);
                if let Some(w) = w {
                    w.answer(match failure {
                        None => Ok(Ack::Confirmed),
                        Some((kind, text)) => Err(PublishError::new(kind, text)),
                    });
                }
            }
            Ev::Subscribing(pkid) => {
                let mut s = self.lock();
                if let Some(id) = s.subscribing.pop_front() {
                    s.awaiting.insert(pkid, id);
                }
            }
            Ev::SubAck { pkid, granted } => {
                let mut s = self.lock();
                let Some(id) = s.awaiting.remove(&pkid) else {
                    return;
                };
                if let Some(sub) = s.subs.iter_mut().find(|x| x.id == id) {
                    if granted {
                        sub.acked = true;
                        sub.ready.send_replace(true);
                    } else {
                        tracing::error!(
                            connection = %self.name, probe = %sub.sink.name(), topic = %sub.filter,
                            "The MQTT broker refused the subscription; this probe's canaries will count as lost."
                        );
                    }
                }
            }
            Ev::Message {
                topic,
                payload,
                token,
                traceparent,
                subscriptions,
            } => {
                let at = Instant::now();
                let sinks: Vec<Arc<dyn CatchSink>> = {
                    let s = self.lock();
                    let mut v: Vec<Arc<dyn CatchSink>> = Vec::new();
                    // By the subscriptions it came through where the broker
                    // says (a copy per matching subscription), else by topic.
                    let through = |x: &&Sub| {
                        if subscriptions.is_empty() {
                            topic_matches(&x.filter, &topic)
                        } else {
                            subscriptions.contains(&x.sid)
                        }
                    };
                    for sub in s.subs.iter().filter(through) {
                        // Two filters of one probe matching the topic: one catch.
                        if !v.iter().any(|k| Arc::ptr_eq(k, &sub.sink)) {
                            v.push(Arc::clone(&sub.sink));
                        }
                    }
                    v
                };
                for sink in sinks {
                    sink.on_message(Caught {
                        token: token.as_deref(),
                        traceparent: traceparent.as_deref(),
                        body: &payload,
                        at,
                    });
                }
            }
            Ev::Other => {}
        }
    }
}

/// Whether `topic` matches the subscription `filter` (`+` one level, `#`
/// the rest; wildcards at the first level never match a `$` topic).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(level)) if f == level => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// `chirp-<connection>-<role>-<run id>`, and `-<n>` after it for the
/// connection's n-th remaking by a reload: the new clients connect while
/// the old ones still run, and a broker disconnects a client whose id a new
/// connection takes (the two would take the id from each other in turn).
fn client_id(name: &str, role: &str, run_id: u64) -> String {
    static MADE: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let mut made = MADE.lock().unwrap_or_else(|e| e.into_inner());
    let n = made
        .get_or_insert_with(HashMap::new)
        .entry(format!("{name}/{role}/{run_id}"))
        .and_modify(|n| *n += 1)
        .or_insert(0);
    match *n {
        0 => format!("chirp-{name}-{role}-{run_id:016x}"),
        n => format!("chirp-{name}-{role}-{run_id:016x}-{n}"),
    }
}

/// Connects the connection `name`, a client per role that uses it. In
/// `run` this returns at once and keeps connecting in the background (a
/// prober must start while its broker is down); with `ctx.fail_fast`
/// (`check`) the first attempt must succeed.
pub async fn connect(
    name: &str,
    conn: &config::ConnectionConfig,
    roles: Roles,
    ctx: &Context,
) -> Result<Connected, SetupError> {
    let mut out = Connected {
        inject: None,
        catch: None,
    };
    if roles.inject {
        out.inject = Some(connect_one(name, conn, "inject", ctx).await?);
    }
    if roles.catch {
        out.catch = Some(connect_one(name, conn, "catch", ctx).await?);
    }
    Ok(out)
}

async fn connect_one(
    name: &str,
    conn: &config::ConnectionConfig,
    role: &'static str,
    ctx: &Context,
) -> Result<Arc<Link>, SetupError> {
    let what = || format!("connection `{name}`");
    let url = parse_url(conn.url.expose()).map_err(|e| SetupError::new(what(), false, e))?;
    let shown_url = conn.url.redacted();
    let auth = url.auth.clone().or_else(|| {
        conn.user
            .clone()
            .zip(conn.password.as_ref().map(|p| p.expose().to_owned()))
    });
    let transport = match (url.tls, &conn.tls) {
        (false, _) => None,
        (true, tls) => {
            let cfg = tls_config(&tls.clone().unwrap_or_default())
                .map_err(|e| SetupError::new(format!("{}: TLS", what()), false, e))?;
            Some(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(cfg)),
            ))
        }
    };
    let client_id = client_id(name, role, ctx.run_id);
    // The catch client keeps its session across reconnects, so what the
    // broker queued for it meanwhile arrives after the reconnect.
    let persistent = role == "catch";
    let (client, mut events) = match conn.version {
        config::Version::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(client_id, url.host.clone(), url.port);
            o.set_keep_alive(conn.keep_alive())
                .set_clean_start(!persistent)
                .set_connection_timeout(5)
                .set_request_channel_capacity(REQUEST_QUEUE);
            // rumqttc reads at most 10 KiB unless told: a larger message on
            // a catch topic would drop the connection, and its redelivery
            // again after each reconnect. Announced in CONNECT, the broker
            // sends nothing larger (it drops it for this client instead).
            o.set_max_packet_size(Some(MAX_INCOMING_V5));
            // No Nagle delay of chirp's own in the measured latency.
            let mut net = o.network_options();
            net.set_tcp_nodelay(true);
            o.set_network_options(net);
            if persistent {
                o.set_session_expiry_interval(Some(SESSION_EXPIRY_SECS));
            }
            if let Some((u, p)) = auth {
                o.set_credentials(u, p);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, l) = rumqttc::v5::AsyncClient::new(o, REQUEST_QUEUE);
            (Client::V5(c), EventLoop::V5(Box::new(l)))
        }
        config::Version::V311 => {
            let mut o = rumqttc::MqttOptions::new(client_id, url.host.clone(), url.port);
            // rumqttc's 3.1.1 default is 10 KiB each way: a larger canary
            // (payload.size), or a larger message on a catch topic, would
            // drop the connection, and a redelivered one again after each
            // reconnect. MQTT's own limit instead (3.1.1 cannot tell the
            // broker a smaller one, as MQTT 5 does).
            o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
            o.set_keep_alive(conn.keep_alive())
                .set_clean_session(!persistent)
                .set_request_channel_capacity(REQUEST_QUEUE);
            if let Some((u, p)) = auth {
                o.set_credentials(u, p);
            }
            if let Some(t) = transport {
                o.set_transport(t);
            }
            let (c, mut l) = rumqttc::AsyncClient::new(o, REQUEST_QUEUE);
            let mut net = l.network_options();
            net.set_connection_timeout(5);
            net.set_tcp_nodelay(true);
            l.set_network_options(net);
            (Client::V311(c), EventLoop::V311(Box::new(l)))
        }
    };
    let link = Arc::new(Link {
        client,
        name: name.to_owned(),
        shown_url,
        up: AtomicBool::new(false),
        status: LinkStatus::new(name, role),
        state: Mutex::new(LinkState::default()),
        next_sub: AtomicU64::new(0),
        stop: ctx.stop.child_token(),
    });
    if ctx.fail_fast {
        // `check`: the first attempt decides (poll's own connection timeout bounds it).
        match events.poll().await {
            Ok(ev @ Ev::ConnAck { .. }) => link.on_event(ev),
            Ok(other) => {
                return Err(SetupError::new(
                    format!("{}: cannot connect to MQTT at {}", what(), link.shown_url),
                    true,
                    format!("expected CONNACK, got {other:?}"),
                ))
            }
            Err(e) => {
                return Err(SetupError::new(
                    format!("{}: cannot connect to MQTT at {}", what(), link.shown_url),
                    true,
                    e,
                ))
            }
        }
    }
    ctx.tasks.spawn(drive(Arc::clone(&link), events));
    Ok(link)
}

/// Polls the event loop until the link stops, reconnecting with a short
/// backoff; a lost connection is counted and said once.
async fn drive(link: Arc<Link>, mut events: EventLoop) {
    let role = link.status.role;
    let mut attempts: u64 = 0;
    let mut said = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = link.stop.cancelled() => break,
            e = events.poll() => e,
        };
        match next {
            Ok(ev) => {
                if matches!(ev, Ev::ConnAck { .. }) {
                    attempts = 0;
                    said = false;
                }
                link.on_event(ev);
            }
            Err(e) => {
                let was_up = link.is_up();
                link.disconnected(&mut events);
                if was_up {
                    link.status.lost();
                }
                if !said {
                    let what = if was_up {
                        "MQTT disconnected; reconnecting."
                    } else {
                        "Cannot connect to MQTT; retrying."
                    };
                    tracing::warn!(connection = %link.name, role, url = %link.shown_url, error = %e, "{what}");
                    said = true;
                }
                attempts += 1;
                // Reconnect quickly: every second of backoff is a second of canaries failing.
                let backoff = Duration::from_millis((100 * attempts).min(2000));
                tokio::select! {
                    _ = link.stop.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
    // A clean DISCONNECT, given a moment to be written; the catch client
    // ends its persistent session first.
    if link.is_up() {
        if link.status.role == "catch" {
            events.end_session(&link.client).await;
        } else {
            link.client.disconnect();
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                while events.poll().await.is_ok() {}
            })
            .await;
        }
    }
    link.disconnected(&mut events);
}
