//! RabbitMQ (AMQP 0-9-1) through `lapin`: a named connection with a client
//! per role (injects, catches) that chirp reconnects itself; an injector
//! that publishes with `mandatory` set on a channel in confirm mode (the
//! publish latency is the broker's confirm; a returned or nacked message is
//! `publish_failed{kind="rejected"}`); and a catch that consumes a queue
//! with manual acks, acking after recording. Credentials never appear in a
//! URL chirp logs; lapin's trace-level frame dumps are capped (`main.rs`).

pub mod catch;
pub mod config;
pub mod inject;
#[cfg(test)]
mod tests;

use super::{Context, LinkStatus, Roles, SetupError};
use config::Target;
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use lapin::{Connection, ConnectionProperties};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How long opening a connection (TCP, TLS, AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One role's client: the connection now (none while reconnecting).
pub struct Link {
    pub status: Arc<LinkStatus>,
    conn: watch::Sender<Option<Arc<Connection>>>,
}

impl Link {
    /// The connection, if it is up.
    pub fn current(&self) -> Option<Arc<Connection>> {
        self.conn
            .borrow()
            .as_ref()
            .filter(|c| c.status().connected())
            .cloned()
    }

    pub fn is_up(&self) -> bool {
        self.current().is_some()
    }

    /// Waits for a connection that is up; `None` once `stop` fires.
    pub async fn wait(&self, stop: &CancellationToken) -> Option<Arc<Connection>> {
        let mut rx = self.conn.subscribe();
        loop {
            if let Some(c) = self.current() {
                return Some(c);
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                r = rx.changed() => if r.is_err() { return None },
                // A connection that dropped without a new one yet.
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }
}

/// A named connection's clients, and what ends them (a reload, or stop).
pub struct Connected {
    inject: Option<Arc<Link>>,
    catch: Option<Arc<Link>>,
    stop: CancellationToken,
}

impl Connected {
    pub fn inject(&self) -> Option<&Arc<Link>> {
        self.inject.as_ref()
    }

    pub fn catch(&self) -> Option<&Arc<Link>> {
        self.catch.as_ref()
    }

    pub fn links(&self) -> Vec<Arc<LinkStatus>> {
        [&self.inject, &self.catch]
            .into_iter()
            .flatten()
            .map(|l| Arc::clone(&l.status))
            .collect()
    }

    /// Ends reconnecting and closes the connections.
    pub async fn close(mut self) {
        self.stop.cancel();
        for link in [self.inject.take(), self.catch.take()]
            .into_iter()
            .flatten()
        {
            if let Some(c) = link.conn.send_replace(None) {
                let _ = tokio::time::timeout(
                    Duration::from_secs(2),
                    c.close(200, "chirp is done".into()),
                )
                .await;
            }
        }
    }
}

impl Drop for Connected {
    /// Dropped without `close` (a reload that failed half-way): the
    /// supervisors stop, and with them the connections.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects `name` for each role that uses it. In `run` the clients connect
/// (and reconnect) in the background; with `ctx.fail_fast` (`check`) the
/// first attempt must succeed.
pub async fn connect(
    name: &str,
    cfg: &config::ConnectionConfig,
    roles: Roles,
    ctx: &Context,
) -> Result<Connected, SetupError> {
    let what = || format!("connection `{name}`");
    let target = cfg
        .target()
        .map_err(|e| SetupError::new(what(), false, e))?;
    let tls = match &cfg.tls {
        Some(t) => Some(tls_config(t).map_err(|e| SetupError::new(what(), false, e))?),
        None if target.tls => Some(lapin::tcp::OwnedTLSConfig::default()),
        None => None,
    };
    let stop = ctx.stop.child_token();
    let mut out = Connected {
        inject: None,
        catch: None,
        stop: stop.clone(),
    };
    for (role, wanted) in [("inject", roles.inject), ("catch", roles.catch)] {
        if !wanted {
            continue;
        }
        let opener = Opener {
            target: target.clone(),
            tls: tls.clone(),
            label: format!("chirp/{name}/{role}"),
        };
        let (tx, _) = watch::channel(None);
        let link = Arc::new(Link {
            status: LinkStatus::new(name, role),
            conn: tx,
        });
        if ctx.fail_fast {
            let c = opener.open().await.map_err(|e| {
                SetupError::new(
                    format!(
                        "{}: cannot connect to RabbitMQ at {}",
                        what(),
                        cfg.url.redacted()
                    ),
                    true,
                    e,
                )
            })?;
            link.conn.send_replace(Some(Arc::new(c)));
        }
        ctx.tasks.spawn(supervise(
            Arc::clone(&link),
            opener,
            name.to_owned(),
            stop.clone(),
        ));
        match role {
            "inject" => out.inject = Some(link),
            _ => out.catch = Some(link),
        }
    }
    Ok(out)
}

/// Opens connections to one target.
struct Opener {
    target: Target,
    tls: Option<lapin::tcp::OwnedTLSConfig>,
    label: String,
}

impl Opener {
    async fn open(&self) -> Result<Connection, super::BoxError> {
        let t = &self.target;
        let mut userinfo = AMQPUserInfo::default();
        if let Some(u) = &t.user {
            userinfo.username = u.clone();
        }
        if let Some(p) = &t.password {
            userinfo.password = p.clone();
        }
        let uri = AMQPUri {
            scheme: if t.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo,
                host: t.host.clone(),
                port: t.port,
            },
            vhost: t.vhost.clone(),
            query: AMQPQueryString {
                // Notices a dead broker that never closed the socket.
                heartbeat: Some(10),
                connection_timeout: Some(CONNECT_TIMEOUT.as_millis() as u64),
                ..Default::default()
            },
        };
        let props = ConnectionProperties::default().with_connection_name(self.label.clone().into());
        let runtime = lapin::runtime::default_runtime()?;
        let tls = self.tls.clone().unwrap_or_default();
        let conn = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_uri_with_config(uri, props, tls, runtime),
        )
        .await
        .map_err(|_| "timed out connecting to RabbitMQ")??;
        Ok(conn)
    }
}

/// Keeps `link` connected until `stop`: notices a lost connection, counts
/// it, and opens a new one with a short backoff.
async fn supervise(link: Arc<Link>, opener: Opener, name: String, stop: CancellationToken) {
    let role = link.status.role;
    let mut attempts: u64 = 0;
    let mut said = false;
    loop {
        if link.current().is_some() {
            attempts = 0;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            if link.current().is_none() {
                link.status.lost();
                link.conn.send_replace(None);
                tracing::warn!(connection = %name, role, "RabbitMQ connection lost; reconnecting.");
            }
            continue;
        }
        match opener.open().await {
            Ok(c) => {
                link.conn.send_replace(Some(Arc::new(c)));
                tracing::info!(connection = %name, role, "RabbitMQ connected.");
                said = false;
            }
            Err(e) => {
                if !said {
                    tracing::warn!(connection = %name, role, error = %e, "Cannot connect to RabbitMQ; retrying.");
                    said = true;
                }
                attempts += 1;
                let backoff = Duration::from_millis((100 * attempts).min(2000));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}

/// The TLS files as lapin takes them: the CA chain, a client certificate.
fn tls_config(t: &crate::config::tls::TlsConfig) -> Result<lapin::tcp::OwnedTLSConfig, String> {
    let read = |p: &str| std::fs::read(p).map_err(|e| format!("cannot read `{p}`: {e}"));
    let cert_chain = match &t.ca_file {
        Some(p) => Some(String::from_utf8(read(p)?).map_err(|_| format!("`{p}` is not PEM text"))?),
        None => None,
    };
    let identity = match (&t.cert_file, &t.key_file) {
        (Some(c), Some(k)) => Some(lapin::tcp::OwnedIdentity::PKCS8 {
            pem: read(c)?,
            key: read(k)?,
        }),
        _ => None,
    };
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// The `Chirp-Token` (or another) header of a message, as text.
pub(crate) fn header<'a>(props: &'a lapin::BasicProperties, name: &str) -> Option<&'a str> {
    match props.headers().as_ref()?.inner().get(name)? {
        lapin::types::AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        lapin::types::AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}
