//! Core NATS: named connections with automatic reconnect, an injector that
//! publishes the canary with its token in a header and the body, and a catch
//! loop over a subscription. Credentials written in a URL are taken out of it
//! and given to the client as auth options, so no URL the client library
//! sees (or logs, at debug level) carries a secret.

pub mod catch;
pub mod config;
pub mod inject;
#[cfg(test)]
mod tests;

use super::{Context, LinkStatus, Roles, SetupError};
use crate::config::secret::Endpoint;
use async_nats::{Client, ConnectOptions, ServerAddr};
use percent_encoding::percent_decode_str;
use std::sync::Arc;
use std::time::Duration;

/// A connected (or connecting) named connection: one client for the
/// probes' injects and another for their catches, so that what arrives on
/// a catch subject (a message the client cannot parse drops its connection)
/// never disturbs publishing.
pub struct Connected {
    inject: Option<(Client, Arc<LinkStatus>)>,
    catch: Option<(Client, Arc<LinkStatus>)>,
    /// The injects' shared flushes, made with the first core NATS injector.
    flusher: std::sync::OnceLock<Arc<inject::Flusher>>,
}

impl Connected {
    /// The injects' client.
    pub fn inject(&self) -> Option<&Client> {
        self.inject.as_ref().map(|(c, _)| c)
    }

    /// The injects' flusher (started on first use, on the current runtime).
    pub(crate) fn flusher(&self) -> Option<Arc<inject::Flusher>> {
        let client = self.inject()?;
        Some(Arc::clone(
            self.flusher
                .get_or_init(|| inject::Flusher::start(client.clone())),
        ))
    }

    /// The catches' client.
    pub fn catch(&self) -> Option<&Client> {
        self.catch.as_ref().map(|(c, _)| c)
    }

    pub fn links(&self) -> Vec<Arc<LinkStatus>> {
        [&self.inject, &self.catch]
            .into_iter()
            .flatten()
            .map(|(_, l)| Arc::clone(l))
            .collect()
    }
}

/// Credentials found in a server URL.
#[derive(Clone, PartialEq, Eq)]
pub enum UrlAuth {
    UserPassword {
        user: String,
        password: String,
    },
    /// `nats://token@host`.
    Token(String),
}

impl std::fmt::Debug for UrlAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlAuth::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            UrlAuth::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// A server URL that cannot be used; the text never quotes credentials.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

/// Parses `nats://[user:password@]host[:port]` (comma separated), returning
/// the addresses without credentials, and the credentials.
pub fn parse_urls(list: &str) -> Result<(Vec<ServerAddr>, Option<UrlAuth>), UrlError> {
    let mut addrs = Vec::new();
    let mut auth: Option<UrlAuth> = None;
    for part in list.split(',').map(str::trim) {
        let shown = Endpoint::new(part).redacted();
        let bad = || {
            UrlError(format!(
                "`{shown}` is not a NATS server URL (write e.g. nats://host:4222)"
            ))
        };
        let text = if part.contains("://") {
            part.to_owned()
        } else {
            format!("nats://{part}")
        };
        let mut url = url::Url::parse(&text).map_err(|_| bad())?;
        // A server URL has no query or fragment, and a path only over
        // websockets (`nats//u:pw@h`, a typo, would be host `nats` with the
        // password in its path).
        let websocket = matches!(url.scheme(), "ws" | "wss");
        let path_ok = matches!(url.path(), "" | "/") || (websocket && !url.path().contains('@'));
        if !matches!(url.scheme(), "nats" | "tls" | "ws" | "wss")
            || url.host_str().is_none()
            || url.query().is_some()
            || url.fragment().is_some()
            || !path_ok
        {
            return Err(bad());
        }
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        let user = decode(url.username());
        let here = match (user.is_empty(), url.password()) {
            (true, _) => None,
            (false, Some(pw)) => Some(UrlAuth::UserPassword {
                user,
                password: decode(pw),
            }),
            (false, None) => Some(UrlAuth::Token(user)),
        };
        if let Some(h) = here {
            if auth.as_ref().is_some_and(|a| *a != h) {
                return Err(UrlError(
                    "the URLs carry different credentials; one connection uses one set for every server".into(),
                ));
            }
            auth = Some(h);
        }
        url.set_username("").map_err(|_| bad())?;
        url.set_password(None).map_err(|_| bad())?;
        addrs.push(ServerAddr::from_url(url).map_err(|_| bad())?);
    }
    Ok((addrs, auth))
}

/// Connects the connection `name`, a client per role that uses it. In
/// `run` this returns at once and keeps reconnecting in the background (a
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
        flusher: std::sync::OnceLock::new(),
    };
    if roles.inject {
        let link = LinkStatus::new(name, "inject");
        out.inject = Some((connect_one(name, conn, &link, ctx).await?, link));
    }
    if roles.catch {
        let link = LinkStatus::new(name, "catch");
        out.catch = Some((connect_one(name, conn, &link, ctx).await?, link));
    }
    Ok(out)
}

async fn connect_one(
    name: &str,
    conn: &config::ConnectionConfig,
    link: &Arc<LinkStatus>,
    ctx: &Context,
) -> Result<Client, SetupError> {
    let what = || format!("connection `{name}`");
    let mut opts = match &conn.credentials_file {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|e| {
                SetupError::new(
                    format!("{}: cannot read credentials file `{path}`", what()),
                    false,
                    e,
                )
            })?,
        None => ConnectOptions::new(),
    };
    let (addrs, url_auth) =
        parse_urls(conn.url.expose()).map_err(|e| SetupError::new(what(), false, e))?;
    match url_auth {
        Some(UrlAuth::UserPassword { user, password }) => {
            opts = opts.user_and_password(user, password)
        }
        Some(UrlAuth::Token(token)) => opts = opts.token(token),
        None => {}
    }
    if let Some(token) = &conn.token {
        opts = opts.token(token.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (&conn.user, &conn.password) {
        opts = opts.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(tls) = &conn.tls {
        opts = opts.require_tls(true);
        if let Some(ca) = &tls.ca_file {
            opts = opts.add_root_certificates(ca.into());
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            opts = opts.add_client_certificate(cert.into(), key.into());
        }
    }
    let role = link.role;
    let (conn_name, link) = (name.to_owned(), Arc::clone(link));
    opts = opts
        .name(format!("chirp/{name}/{role}"))
        .connection_timeout(Duration::from_secs(5))
        // Reconnect quickly: every second of backoff is a second of canaries
        // stuck in the buffer. The first attempt (1) is no retry: no wait.
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let (name, link) = (conn_name.clone(), Arc::clone(&link));
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(connection = %name, role, "NATS connected.")
                    }
                    async_nats::Event::Disconnected => {
                        link.lost();
                        tracing::warn!(connection = %name, role, "NATS disconnected; reconnecting.")
                    }
                    async_nats::Event::SlowConsumer(sid) => tracing::warn!(
                        connection = %name, role, sid,
                        "NATS slow consumer: messages dropped by the client; canaries among them will count as lost."
                    ),
                    other => tracing::info!(connection = %name, role, event = %other, "NATS event."),
                }
            }
        });
    if !ctx.fail_fast {
        opts = opts.retry_on_initial_connect();
    }
    opts.connect(addrs).await.map_err(|e| {
        SetupError::new(
            format!(
                "{}: cannot connect to NATS at {}",
                what(),
                conn.url.redacted()
            ),
            true,
            e,
        )
    })
}

/// The wait before connection attempt `attempts` (counted from 1 since the
/// last success): none for the first, then 100 ms more each time, at most 2 s.
fn reconnect_delay(attempts: usize) -> Duration {
    Duration::from_millis((100 * attempts.saturating_sub(1) as u64).min(2000))
}

pub fn is_connected(client: &Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}
