//! Redis Streams through the `redis` crate: a named connection with one
//! multiplexed client for injects (every probe's `XADD`s pipelined on it)
//! that chirp keeps connected itself, and a client of its own per catch
//! (a blocking read holds its connection). The injector appends with
//! `XADD` (the reply is the publish latency); the catch reads with
//! `XREADGROUP` and acknowledges after recording, or with `XREAD` from the
//! stream's end. Credentials never reach a log line or error: the URL is
//! parsed here and the client gets them as separate settings.

pub mod catch;
pub mod config;
pub mod inject;
#[cfg(test)]
mod tests;

use super::{BoxError, Context, LinkStatus, Roles, SetupError};
use crate::outcome::FailureKind;
use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo,
};
use config::Target;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

/// How long opening a connection (TCP, TLS, AUTH, SELECT) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an idle inject client is checked with a PING.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Makes clients for one named connection.
pub struct Opener {
    client: Client,
    label: String,
}

impl Opener {
    fn new(
        name: &str,
        target: &Target,
        tls: Option<&crate::config::tls::TlsConfig>,
    ) -> Result<Opener, BoxError> {
        let addr = if target.tls {
            ConnectionAddr::TcpTls {
                host: target.host.clone(),
                port: target.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            ConnectionAddr::Tcp(target.host.clone(), target.port)
        };
        let mut redis = RedisConnectionInfo::default().set_db(target.db);
        if let Some(u) = &target.user {
            redis = redis.set_username(u);
        }
        if let Some(p) = &target.password {
            redis = redis.set_password(p);
        }
        let info = addr.into_connection_info()?.set_redis_settings(redis);
        let client = match tls {
            Some(t) if t.ca_file.is_some() || t.cert_file.is_some() => {
                let read =
                    |p: &str| std::fs::read(p).map_err(|e| format!("cannot read `{p}`: {e}"));
                let client_tls = match (&t.cert_file, &t.key_file) {
                    (Some(c), Some(k)) => Some(::redis::ClientTlsConfig {
                        client_cert: read(c)?,
                        client_key: read(k)?,
                    }),
                    _ => None,
                };
                let root_cert = t.ca_file.as_deref().map(read).transpose()?;
                Client::build_with_tls(
                    info,
                    ::redis::TlsCertificates {
                        client_tls,
                        root_cert,
                    },
                )?
            }
            _ => Client::open(info)?,
        };
        Ok(Opener {
            client,
            label: format!("chirp/{name}"),
        })
    }

    /// A new connection. `response_timeout` bounds each command (none for a
    /// client that blocks in reads: the caller bounds those).
    pub async fn open(
        &self,
        response_timeout: Option<Duration>,
    ) -> Result<MultiplexedConnection, ::redis::RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(response_timeout);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // Names the client in CLIENT LIST; an old server without CLIENT
        // SETNAME is no reason to fail.
        let _ = ::redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(self.label.replace([' ', '\n'], "_"))
            .query_async::<::redis::Value>(&mut conn)
            .await;
        Ok(conn)
    }
}

/// The inject client: the connection now (none while reconnecting).
pub struct Link {
    pub status: Arc<LinkStatus>,
    conn: watch::Sender<Option<MultiplexedConnection>>,
    /// A command failed on the connection: check it now.
    broken: Notify,
}

impl Link {
    pub fn current(&self) -> Option<MultiplexedConnection> {
        self.conn.borrow().clone()
    }

    pub fn is_up(&self) -> bool {
        self.conn.borrow().is_some()
    }

    /// A command failed in a way that says the connection may be gone.
    pub fn broken(&self) {
        self.broken.notify_one();
    }
}

/// A named connection's clients, and what ends them (a reload, or stop).
pub struct Connected {
    inject: Option<Arc<Link>>,
    /// Opens each catch's own client.
    opener: Arc<Opener>,
    /// The catches' record (`role="catch"`), shared by the probe catches
    /// on this connection.
    catch: Option<Arc<LinkStatus>>,
    stop: CancellationToken,
}

impl Connected {
    pub fn inject(&self) -> Option<&Arc<Link>> {
        self.inject.as_ref()
    }

    pub fn links(&self) -> Vec<Arc<LinkStatus>> {
        self.inject
            .iter()
            .map(|l| Arc::clone(&l.status))
            .chain(self.catch.iter().cloned())
            .collect()
    }
}

impl Drop for Connected {
    /// Ends the inject client's supervisor, and with it the connection.
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects `name` for each role that uses it. In `run` the inject client
/// connects (and reconnects) in the background; with `ctx.fail_fast`
/// (`check`) the first attempt must succeed.
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
    let opener = Arc::new(
        Opener::new(name, &target, cfg.tls.as_ref())
            .map_err(|e| SetupError::new(what(), false, e))?,
    );
    let stop = ctx.stop.child_token();
    let mut out = Connected {
        inject: None,
        opener: Arc::clone(&opener),
        catch: roles.catch.then(|| LinkStatus::new(name, "catch")),
        stop: stop.clone(),
    };
    if ctx.fail_fast {
        // One connection proves the address and the credentials for both roles.
        let mut c = opener.open(Some(CONNECT_TIMEOUT)).await.map_err(|e| {
            SetupError::new(
                format!(
                    "{}: cannot connect to Redis at {}",
                    what(),
                    cfg.url.redacted()
                ),
                true,
                e,
            )
        })?;
        ::redis::cmd("PING")
            .query_async::<::redis::Value>(&mut c)
            .await
            .map_err(|e| SetupError::new(format!("{}: Redis refused PING", what()), true, e))?;
        if roles.inject {
            let link = new_link(name);
            link.conn.send_replace(Some(c));
            out.inject = Some(link);
        }
    } else if roles.inject {
        out.inject = Some(new_link(name));
    }
    if let Some(link) = &out.inject {
        ctx.tasks
            .spawn(supervise(Arc::clone(link), opener, name.to_owned(), stop));
    }
    Ok(out)
}

fn new_link(name: &str) -> Arc<Link> {
    let (tx, _) = watch::channel(None);
    Arc::new(Link {
        status: LinkStatus::new(name, "inject"),
        conn: tx,
        broken: Notify::new(),
    })
}

/// Keeps the inject client connected until `stop`: a PING each second (or
/// at once when a command failed) notices a lost connection, which is
/// counted and opened again with a short backoff.
async fn supervise(link: Arc<Link>, opener: Arc<Opener>, name: String, stop: CancellationToken) {
    let mut attempts: u64 = 0;
    let mut said = false;
    loop {
        if let Some(mut c) = link.current() {
            attempts = 0;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = link.broken.notified() => {}
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
            let ping = ::redis::cmd("PING");
            let reply =
                tokio::time::timeout(CONNECT_TIMEOUT, ping.query_async::<::redis::Value>(&mut c))
                    .await;
            let alive = matches!(reply, Ok(Ok(_)));
            if !alive {
                link.status.lost();
                link.conn.send_replace(None);
                tracing::warn!(connection = %name, role = "inject", "Redis connection lost; reconnecting.");
            }
            continue;
        }
        match opener.open(None).await {
            Ok(c) => {
                link.conn.send_replace(Some(c));
                tracing::info!(connection = %name, role = "inject", "Redis connected.");
                said = false;
            }
            Err(e) => {
                if !said {
                    tracing::warn!(connection = %name, role = "inject", error = %e, "Cannot connect to Redis; retrying.");
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

/// The failure kind of a Redis error, and whether the connection may be gone.
pub(crate) fn classify(e: &::redis::RedisError) -> (FailureKind, bool) {
    if e.is_timeout() {
        return (FailureKind::Timeout, true);
    }
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        return (FailureKind::Unavailable, true);
    }
    let kind = match e.code() {
        Some("NOAUTH" | "WRONGPASS" | "NOPERM") => FailureKind::Auth,
        Some("OOM" | "BUSY" | "LOADING" | "TRYAGAIN") => FailureKind::Throttled,
        Some("MASTERDOWN" | "READONLY" | "CLUSTERDOWN") => FailureKind::Unavailable,
        Some(_) => FailureKind::Rejected,
        None => FailureKind::Other,
    };
    (kind, false)
}

/// A bulk or simple string reply as bytes.
pub(crate) fn bytes(v: &::redis::Value) -> Option<&[u8]> {
    match v {
        ::redis::Value::BulkString(b) => Some(b),
        ::redis::Value::SimpleString(s) => Some(s.as_bytes()),
        ::redis::Value::VerbatimString { text, .. } => Some(text.as_bytes()),
        _ => None,
    }
}
