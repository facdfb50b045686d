//! The accept loop, with what keeps a client that owes nothing from taking
//! memory or file descriptors away from `/metrics`:
//!
//! - at most `max_connections` open; past it the oldest connection that is
//!   still sending a request (headers or body) is closed to make room, then
//!   the oldest idle one, so a flood of slow connections cannot lock out a
//!   scraper that connects after it; only when every connection is being
//!   answered is the newcomer refused;
//! - a request's headers must arrive within `header_timeout` of its first
//!   byte (of the accept, for a new connection; a TLS handshake included),
//!   its body within `body_timeout` (408), and be at most `max_body` (413),
//!   read before routing so no handler buffers more;
//! - a connection with no bytes moving for `idle_timeout` is closed;
//! - hyper's buffer is kept small (it bounds the request head).
//!
//! Every refusal is counted by reason and logged: at once the first time,
//! then at most once a minute with the count.

use super::auth::Auth;
use super::tls::Tls;
use crate::config::listen::{Limits, ListenConfig};
use crate::export::listener::{ListenerStats, Rejection};
use crate::transport::http::Hooks;
use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// hyper's read buffer, which bounds a request's head (431 beyond).
const MAX_HEAD: usize = 16 << 10;
/// How long open connections get to finish their request at shutdown.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// At most one log line per reason in this long (after the first).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What a connection is doing; what it may be closed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    /// Waiting for (or reading) a request's headers: `header_timeout`.
    Head = 0,
    /// Its body is being read: `body_timeout` (the request is answered 408).
    Body = 1,
    /// Being answered: no limit (chirp's handlers do not wait on anyone).
    Busy = 2,
    /// Kept alive between requests: `idle_timeout` with no bytes moving.
    Idle = 3,
}

/// One open connection, as its watchdog and the accept loop see it.
struct Conn {
    born: Instant,
    phase: AtomicU8,
    /// When the phase began, and when a byte last moved: ms after `born`.
    phase_since: AtomicU64,
    last_io: AtomicU64,
    /// Closed to make room for a newer connection.
    evict: CancellationToken,
    /// The phase changed: the watchdog's deadline may have moved.
    changed: tokio::sync::Notify,
}

impl Conn {
    fn new(now: Instant) -> Conn {
        Conn {
            born: now,
            phase: AtomicU8::new(Phase::Head as u8),
            phase_since: AtomicU64::new(0),
            last_io: AtomicU64::new(0),
            evict: CancellationToken::new(),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn ms(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.born).as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.born + Duration::from_millis(ms)
    }

    fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Acquire) {
            0 => Phase::Head,
            1 => Phase::Body,
            2 => Phase::Busy,
            _ => Phase::Idle,
        }
    }

    fn enter(&self, phase: Phase) {
        self.phase_since
            .store(self.ms(Instant::now()), Ordering::Release);
        self.phase.store(phase as u8, Ordering::Release);
        // A permit is kept if the watchdog is not waiting yet.
        self.changed.notify_one();
    }

    fn moved(&self) {
        let now = self.ms(Instant::now());
        self.last_io.store(now, Ordering::Relaxed);
    }

    /// A byte of a request arrived: a kept-alive connection starts a head.
    fn read_some(&self) {
        self.moved();
        if self.phase() == Phase::Idle {
            self.enter(Phase::Head);
        }
    }

    /// When the watchdog must look again, or why the connection must close
    /// now (`Err(None)`: idle, closed without counting).
    fn check(&self, now: Instant, limits: &Limits) -> Result<Instant, Option<Rejection>> {
        let since = self.at(self.phase_since.load(Ordering::Acquire));
        let (deadline, why) = match self.phase() {
            Phase::Head => (
                since + limits.header_timeout,
                Some(Rejection::HeaderTimeout),
            ),
            // The handler bounds the body and answers 408; this is a backstop.
            Phase::Body => (
                since + limits.body_timeout * 2,
                Some(Rejection::BodyTimeout),
            ),
            Phase::Busy => return Ok(now + limits.idle_timeout),
            Phase::Idle => {
                let last = self.at(self.last_io.load(Ordering::Relaxed)).max(since);
                (last + limits.idle_timeout, None)
            }
        };
        if now >= deadline {
            Err(why)
        } else {
            Ok(deadline)
        }
    }
}

/// The connection's stream, recording when bytes move.
struct Metered<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.read_some();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Logs a reason's first rejection at once, then at most once a minute.
#[derive(Default)]
struct Quiet {
    /// Per reason: when last logged, and how many since.
    by_reason: Mutex<BTreeMap<&'static str, (Instant, u64)>>,
}

impl Quiet {
    fn note(&self, why: Rejection, total: u64, limits: &Limits) {
        let now = Instant::now();
        let mut m = self.by_reason.lock().unwrap_or_else(|p| p.into_inner());
        let first = !m.contains_key(why.as_str());
        let (last, since) = m.entry(why.as_str()).or_insert((now, 0));
        *since += 1;
        if !first && now.duration_since(*last) < LOG_EVERY {
            return;
        }
        let (n, what) = (*since, explain(why, limits));
        *last = now;
        *since = 0;
        drop(m);
        tracing::warn!(
            reason = why.as_str(),
            count = n,
            total,
            "The listener refused {n} request(s) or connection(s): {what}. Counted in chirp_http_requests_rejected_total; logged at most once a minute."
        );
    }
}

fn explain(why: Rejection, l: &Limits) -> String {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    match why {
        Rejection::Connections => format!(
            "{} connections were open (listen.max_connections)",
            l.max_connections
        ),
        Rejection::Tls => "TLS handshakes failed or took too long".into(),
        Rejection::HeaderTimeout => format!(
            "headers did not arrive within {} (listen.header_timeout)",
            d(l.header_timeout)
        ),
        Rejection::BodyTimeout => format!(
            "bodies did not arrive within {} (listen.body_timeout)",
            d(l.body_timeout)
        ),
        Rejection::BodyTooLarge => format!(
            "bodies were larger than {} bytes (listen.max_body)",
            l.max_body
        ),
        Rejection::Malformed => "requests were not valid HTTP/1 or their heads too large".into(),
        Rejection::Unauthorized => "requests lacked valid credentials (listen.auth)".into(),
    }
}

/// Whether a new connection may be served.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    Free,
    /// An older connection was closed for it.
    Evicted,
    /// Every connection is being answered: the newcomer is refused.
    Full,
}

/// What every connection shares.
struct Shared {
    limits: Limits,
    auth: Option<Auth>,
    tls: Option<Arc<Tls>>,
    router: Router,
    hooks: Arc<Hooks>,
    stats: Arc<ListenerStats>,
    quiet: Quiet,
    /// Open connections in the order they were accepted.
    open: Mutex<BTreeMap<u64, Arc<Conn>>>,
}

impl Shared {
    fn reject(&self, why: Rejection) {
        let total = self.stats.reject(why);
        self.quiet.note(why, total, &self.limits);
    }

    /// Makes room for one more connection if the limit is reached: closes
    /// the connection whose request has been on its way longest (headers or
    /// body), else the one idle longest.
    fn make_room(&self) -> Room {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.len() < self.limits.max_connections {
            return Room::Free;
        }
        let sending = open
            .iter()
            .filter(|(_, c)| matches!(c.phase(), Phase::Head | Phase::Body))
            .min_by_key(|(_, c)| c.phase_since.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        let idle = || {
            open.iter()
                .filter(|(_, c)| c.phase() == Phase::Idle)
                .min_by_key(|(_, c)| c.last_io.load(Ordering::Relaxed))
                .map(|(id, _)| *id)
        };
        let Some(id) = sending.or_else(idle) else {
            return Room::Full;
        };
        if let Some(c) = open.remove(&id) {
            c.evict.cancel();
        }
        self.stats.set_open(open.len());
        Room::Evicted
    }

    fn admit(&self, id: u64, conn: Arc<Conn>) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.insert(id, conn);
        self.stats.set_open(open.len());
    }

    fn leave(&self, id: u64) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.remove(&id);
        self.stats.set_open(open.len());
    }
}

/// Takes a connection out of the table when its task ends.
struct Leave(Arc<Shared>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// Serves `router` on `listener` until `stop`, then gives open connections
/// [`CLOSE_WAIT`] to finish the request they are on.
pub async fn serve(
    listener: TcpListener,
    cfg: &ListenConfig,
    tls: Option<Arc<Tls>>,
    router: Router,
    hooks: Arc<Hooks>,
    stats: Arc<ListenerStats>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let shared = Arc::new(Shared {
        limits: cfg.limits,
        auth: cfg.auth.as_ref().map(Auth::new),
        tls,
        router,
        hooks,
        stats,
        quiet: Quiet::default(),
        open: Mutex::new(BTreeMap::new()),
    });
    let tasks = TaskTracker::new();
    tasks.spawn(give_back_memory(Arc::clone(&shared), stop.clone()));
    let mut next_id = 0u64;
    let mut fd_warned = false;
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let sock = match accepted {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of file descriptors (or a connection reset before it
                // was taken): the backlog keeps waiting clients; try again soon.
                if !fd_warned && matches!(e.raw_os_error(), Some(24) | Some(23)) {
                    tracing::error!(error = %e, "The listener cannot accept connections: out of file descriptors. Lower listen.max_connections or raise the limit (ulimit -n).");
                    fd_warned = true;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        match shared.make_room() {
            Room::Free => {}
            Room::Evicted => shared.reject(Rejection::Connections),
            Room::Full => {
                shared.reject(Rejection::Connections);
                drop(sock);
                continue;
            }
        }
        next_id += 1;
        let conn = Arc::new(Conn::new(Instant::now()));
        shared.admit(next_id, Arc::clone(&conn));
        let (shared, stop, id) = (Arc::clone(&shared), stop.clone(), next_id);
        tasks.spawn(async move {
            // Leaves the table however the task ends, a panic included.
            let _leave = Leave(Arc::clone(&shared), id);
            connection(sock, &shared, conn, stop).await;
        });
    }
    drop(listener);
    tasks.close();
    let _ = tokio::time::timeout(CLOSE_WAIT + Duration::from_millis(100), tasks.wait()).await;
    Ok(())
}

/// How often the listener looks whether a flood has ended.
const TRIM_EVERY: Duration = Duration::from_secs(5);
/// Connections that must have closed since the last look for memory to be
/// handed back to the system.
const TRIM_AFTER: u64 = 64;

/// What hands freed memory back to the system; set by the binary (the
/// library has no unsafe code, and the call is the allocator's own).
static RELEASE_MEMORY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what [`give_back_memory`] calls once a flood has ended: with glibc,
/// `malloc_trim(0)`. glibc keeps freed pages in its arenas otherwise, and
/// chirp would hold a flood's peak for good.
pub fn on_flood_end(release: fn()) {
    let _ = RELEASE_MEMORY.set(release);
}

/// Hands freed memory back to the system now (the function set by
/// [`on_flood_end`]), off the async workers: after a large scrape, whose
/// transient allocations glibc would otherwise keep in its arenas (with
/// 1,000 probes a scrape's peak, ~60 MB, would stay resident for good).
pub fn give_back_now() {
    if let Some(release) = RELEASE_MEMORY.get().copied() {
        drop(tokio::task::spawn_blocking(release));
    }
}

/// Once many connections have closed since the last look, calls the
/// function set by [`on_flood_end`].
async fn give_back_memory(shared: Arc<Shared>, stop: CancellationToken) {
    let Some(release) = RELEASE_MEMORY.get().copied() else {
        return;
    };
    let mut peak = 0u64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(TRIM_EVERY) => {}
        }
        let open = shared.stats.open();
        peak = peak.max(shared.stats.peak_and_reset().max(open));
        if peak >= open + TRIM_AFTER {
            // It walks the whole heap: not on a runtime worker.
            let _ = tokio::task::spawn_blocking(release).await;
            peak = open;
        }
    }
}

/// Serves one already-connected stream as the listener serves a
/// connection (limits, routing; no TLS or credentials), until the client
/// is done. For the fuzz target, which feeds it raw bytes.
pub async fn serve_stream<S>(
    stream: S,
    router: Router,
    hooks: Arc<Hooks>,
    limits: Limits,
    stats: Arc<ListenerStats>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::new(Shared {
        limits,
        auth: None,
        tls: None,
        router,
        hooks,
        stats,
        quiet: Quiet::default(),
        open: Mutex::new(BTreeMap::new()),
    });
    let conn = Arc::new(Conn::new(Instant::now()));
    http(stream, &shared, conn, CancellationToken::new()).await;
}

async fn connection(
    sock: TcpStream,
    shared: &Arc<Shared>,
    conn: Arc<Conn>,
    stop: CancellationToken,
) {
    let _ = sock.set_nodelay(true);
    match &shared.tls {
        None => http(sock, shared, conn, stop).await,
        Some(tls) => {
            let deadline = conn.born + shared.limits.header_timeout;
            let handshake = tokio::select! {
                r = tokio::time::timeout_at(deadline, tls.acceptor().accept(sock)) => r,
                _ = conn.evict.cancelled() => return,
                _ = stop.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => http(stream, shared, conn, stop).await,
                // Closed before a handshake (a TCP health check, a port
                // scan): nothing was asked, nothing refused.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
                _ => shared.reject(Rejection::Tls),
            }
        }
    }
}

async fn http<S>(stream: S, shared: &Arc<Shared>, conn: Arc<Conn>, stop: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Metered {
        inner: stream,
        conn: Arc::clone(&conn),
    });
    let svc = {
        let (shared, conn) = (Arc::clone(shared), Arc::clone(&conn));
        hyper::service::service_fn(move |req| {
            let (shared, conn) = (Arc::clone(&shared), Arc::clone(&conn));
            async move { Ok::<_, Infallible>(answer(req, &shared, &conn).await) }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.max_buf_size(MAX_HEAD).max_headers(64);
    let served = builder.serve_connection(io, svc);
    tokio::pin!(served);
    let limits = shared.limits;
    let mut stopping: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let wake = match conn.check(now, &limits) {
            Ok(at) => at,
            Err(why) => {
                if let Some(why) = why {
                    shared.reject(why);
                }
                return;
            }
        };
        let wake = stopping.map_or(wake, |s| wake.min(s + CLOSE_WAIT));
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    if e.is_parse() || e.is_parse_too_large() {
                        shared.reject(Rejection::Malformed);
                    }
                }
                return;
            }
            _ = conn.evict.cancelled() => return,
            _ = conn.changed.notified() => {}
            _ = stop.cancelled(), if stopping.is_none() => {
                served.as_mut().graceful_shutdown();
                stopping = Some(Instant::now());
            }
            _ = tokio::time::sleep_until(wake) => {
                if stopping.is_some_and(|s| Instant::now() >= s + CLOSE_WAIT) {
                    return;
                }
            }
        }
    }
}

/// Checks credentials, reads the body within its limits, then routes.
async fn answer(req: Request<Incoming>, shared: &Shared, conn: &Conn) -> Response<Body> {
    conn.enter(Phase::Body);
    let resp = guarded(req, shared, conn).await;
    conn.enter(Phase::Idle);
    resp
}

async fn guarded(req: Request<Incoming>, shared: &Shared, conn: &Conn) -> Response<Body> {
    let limits = &shared.limits;
    let path = req.uri().path().to_owned();
    if let Some(auth) = &shared.auth {
        if Auth::guards(&path) && !auth.allows(req.headers()) {
            shared.reject(Rejection::Unauthorized);
            let mut r = refusal(StatusCode::UNAUTHORIZED, "missing or wrong credentials");
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(auth.challenge()),
            );
            return r;
        }
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_body as u64) {
        return too_large(shared, &path);
    }
    let (parts, body) = req.into_parts();
    let deadline = Instant::now() + limits.body_timeout;
    let bytes = match tokio::time::timeout_at(
        deadline,
        Limited::new(body, limits.max_body).collect(),
    )
    .await
    {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return too_large(shared, &path)
        }
        Ok(Err(_)) => {
            shared.reject(Rejection::Malformed);
            return closing(refusal(StatusCode::BAD_REQUEST, "the body was cut short"));
        }
        Err(_) => {
            shared.reject(Rejection::BodyTimeout);
            shared.hooks.refused(&path);
            let text = format!(
                "the body did not arrive within {}",
                humantime::format_duration(limits.body_timeout)
            );
            return closing(refusal(StatusCode::REQUEST_TIMEOUT, &text));
        }
    };
    conn.enter(Phase::Busy);
    let req = Request::from_parts(parts, Body::from(bytes));
    match shared.router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

fn too_large(shared: &Shared, path: &str) -> Response<Body> {
    shared.reject(Rejection::BodyTooLarge);
    shared.hooks.refused(path);
    let text = format!(
        "the body is larger than {} bytes (listen.max_body)",
        shared.limits.max_body
    );
    closing(refusal(StatusCode::PAYLOAD_TOO_LARGE, &text))
}

fn refusal(status: StatusCode, text: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": text }).to_string();
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The connection closes after this answer: the rest of the body is not read.
fn closing(mut r: Response<Body>) -> Response<Body> {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests;
