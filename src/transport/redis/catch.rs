//! Reads the probe's stream on a client of its own until chirp stops.
//!
//! - With `group`: `XREADGROUP` as `consumer`, the group created at the
//!   stream's end when missing, each batch acknowledged (`XACK`) once it is
//!   recorded. After every (re)connect the consumer's pending entries are
//!   read first: an entry recorded whose acknowledgement was lost comes
//!   back, a second catch that the ledger counts as `duplicate`; one left
//!   by an earlier run is foreign and acknowledged.
//! - Without: `XREAD` from the stream's last entry at start, then from the
//!   last entry read, across reconnects, so entries added while chirp was
//!   away are caught late rather than skipped.
//!
//! The token is the `Chirp-Token` field, else the probe finds it in the
//! body: the configured field, or the first field that holds a token.

use super::config::CatchConfig;
use super::{bytes, Opener};
use crate::canary;
use crate::transport::{BoxError, CatchHandle, CatchSink, Caught, Context, LinkStatus, SetupError};
use ::redis::aio::MultiplexedConnection;
use ::redis::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one read blocks on the server before chirp looks at `stop`.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries per read.
const BATCH: usize = 256;

struct RedisCatch {
    up: watch::Receiver<bool>,
}

#[async_trait::async_trait]
impl CatchHandle for RedisCatch {
    fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// The group exists (or the position at the stream's end is taken):
    /// entries appended from now on reach chirp.
    async fn ready(&self, stop: &CancellationToken) -> bool {
        let mut up = self.up.clone();
        tokio::select! {
            r = up.wait_for(|r| *r) => r.is_ok(),
            _ = stop.cancelled() => false,
        }
    }
}

/// Where the next read starts.
#[derive(Debug, Clone)]
enum Cursor {
    /// In a group: the pending entries after this ID first, then new ones.
    Group {
        group: String,
        pending: Option<String>,
    },
    /// Plain reads after this entry ID.
    After(String),
}

struct Reader {
    cfg: CatchConfig,
    consumer: String,
    sink: Arc<dyn CatchSink>,
    cursor: Cursor,
    /// An XACK was refused (said once).
    ack_refused: bool,
}

pub async fn start(
    conn: &super::Connected,
    cfg: &CatchConfig,
    sink: Arc<dyn CatchSink>,
    ctx: &Context,
) -> Result<Arc<dyn CatchHandle>, SetupError> {
    let status = conn.catch.clone().ok_or_else(|| {
        SetupError::new(
            format!("connection `{}`", cfg.connection),
            false,
            "no client for catches",
        )
    })?;
    let mut reader = Reader {
        consumer: cfg.consumer(sink.name()),
        cursor: match &cfg.group {
            Some(g) => Cursor::Group {
                group: g.clone(),
                pending: Some("0".into()),
            },
            None => Cursor::After(String::new()),
        },
        cfg: cfg.clone(),
        sink,
        ack_refused: false,
    };
    let (up_tx, up) = watch::channel(false);
    let first = if ctx.fail_fast {
        let what = format!("probe `{}`: catch", reader.sink.name());
        let mut c = conn
            .opener
            .open(None)
            .await
            .map_err(|e| SetupError::new(what.clone(), true, e))?;
        reader
            .prepare(&mut c)
            .await
            .map_err(|e| SetupError::new(what, true, e))?;
        up_tx.send_replace(true);
        Some(c)
    } else {
        None
    };
    ctx.tasks.spawn(catch_loop(
        Arc::clone(&conn.opener),
        status,
        reader,
        first,
        up_tx,
        ctx.stop.clone(),
    ));
    Ok(Arc::new(RedisCatch { up }))
}

async fn catch_loop(
    opener: Arc<Opener>,
    status: Arc<LinkStatus>,
    mut reader: Reader,
    mut first: Option<MultiplexedConnection>,
    up: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let name = reader.sink.name().to_owned();
    let mut said = false;
    loop {
        let mut conn = match first.take() {
            Some(c) => c,
            None => {
                let opened = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = opener.open(None) => c,
                };
                let ready = match opened {
                    Ok(mut c) => reader.prepare(&mut c).await.map(|()| c),
                    Err(e) => Err(e.into()),
                };
                match ready {
                    Ok(c) => c,
                    Err(e) => {
                        if !said {
                            tracing::warn!(probe = %name, stream = %reader.cfg.stream, error = %e, "Redis catch not reading; retrying every second.");
                            said = true;
                        }
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
        };
        if said {
            tracing::info!(probe = %name, stream = %reader.cfg.stream, "Redis catch reading again.");
            said = false;
        }
        up.send_replace(true);
        let e = loop {
            let read = tokio::select! {
                biased;
                _ = stop.cancelled() => return,
                r = reader.read(&mut conn) => r,
            };
            if let Err(e) = read {
                break e;
            }
        };
        up.send_replace(false);
        status.lost();
        tracing::warn!(probe = %name, stream = %reader.cfg.stream, error = %e, "Redis catch lost its connection; reading again.");
        if let Cursor::Group { pending, .. } = &mut reader.cursor {
            // What was read but not acknowledged comes back first.
            *pending = Some("0".into());
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

impl Reader {
    /// Creates the group (or takes the position at the stream's end) on a
    /// new connection.
    async fn prepare(&mut self, conn: &mut MultiplexedConnection) -> Result<(), BoxError> {
        match &mut self.cursor {
            Cursor::Group { group, .. } => {
                let created = ::redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&self.cfg.stream)
                    .arg(&*group)
                    .arg("$")
                    .arg("MKSTREAM")
                    .query_async::<Value>(conn)
                    .await;
                match created {
                    Ok(Value::ServerError(e)) if e.code() != "BUSYGROUP" => {
                        return Err(::redis::RedisError::from(e).into())
                    }
                    Err(e) if e.code() != Some("BUSYGROUP") => return Err(e.into()),
                    _ => {}
                }
            }
            Cursor::After(id) if id.is_empty() => {
                let last = ::redis::cmd("XREVRANGE")
                    .arg(&self.cfg.stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async::<Value>(conn)
                    .await?;
                *id = entries(&last)
                    .next()
                    .and_then(|(id, _)| std::str::from_utf8(id).ok())
                    .unwrap_or("0-0")
                    .to_owned();
            }
            _ => {}
        }
        Ok(())
    }

    /// One read: records what it returns (and acknowledges it in a group).
    async fn read(&mut self, conn: &mut MultiplexedConnection) -> Result<(), BoxError> {
        let mut cmd;
        match &self.cursor {
            Cursor::Group { group, pending } => {
                cmd = ::redis::cmd("XREADGROUP");
                cmd.arg("GROUP").arg(group).arg(&self.consumer);
                cmd.arg("COUNT").arg(BATCH);
                if pending.is_none() {
                    cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
                }
                cmd.arg("STREAMS")
                    .arg(&self.cfg.stream)
                    .arg(pending.as_deref().unwrap_or(">"));
            }
            Cursor::After(id) => {
                cmd = ::redis::cmd("XREAD");
                cmd.arg("COUNT").arg(BATCH);
                cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
                cmd.arg("STREAMS").arg(&self.cfg.stream).arg(id);
            }
        }
        // The server answers a blocked read after BLOCK; longer is a dead connection.
        let reply = tokio::time::timeout(
            BLOCK + super::CONNECT_TIMEOUT,
            cmd.query_async::<Value>(conn),
        )
        .await
        .map_err(|_| "no answer to a read within 6 s")??;
        if let Value::ServerError(e) = reply {
            // NOGROUP: the stream or group was deleted (a restarted server
            // without persistence); prepared again on a new connection.
            return Err(::redis::RedisError::from(e).into());
        }
        let mut ids: Vec<Vec<u8>> = Vec::new();
        let mut last: Option<&[u8]> = None;
        for (id, fields) in entries(&reply) {
            last = Some(id);
            ids.push(id.to_vec());
            let Some(fields) = fields else {
                // A pending entry trimmed from the stream since: nothing to record.
                continue;
            };
            let at = Instant::now();
            let (mut token, mut traceparent, mut body) = (None, None, None);
            let mut scanned = None;
            for pair in fields.chunks_exact(2) {
                let (Some(k), Some(v)) = (bytes(&pair[0]), bytes(&pair[1])) else {
                    continue;
                };
                if k == canary::HEADER.as_bytes() {
                    token = std::str::from_utf8(v).ok();
                } else if k == canary::TRACEPARENT.as_bytes() {
                    traceparent = std::str::from_utf8(v).ok();
                } else if k == self.cfg.field.as_bytes() {
                    body = Some(v);
                } else if scanned.is_none() && canary::scan(v).is_some() {
                    scanned = Some(v);
                }
            }
            self.sink.on_message(Caught {
                token,
                traceparent,
                body: body.or(scanned).unwrap_or_default(),
                at,
            });
        }
        match &mut self.cursor {
            Cursor::Group { pending, .. } => {
                if pending.is_some() {
                    // The pending list is read through once, from after the
                    // last entry it returned, until it has nothing more.
                    *pending = last.map(|id| String::from_utf8_lossy(id).into_owned());
                }
            }
            Cursor::After(id) => {
                if let Some(l) = last {
                    *id = String::from_utf8_lossy(l).into_owned();
                }
            }
        }
        if let (Some(group), false) = (&self.cfg.group, ids.is_empty()) {
            // Recorded, then acknowledged: an acknowledgement lost with the
            // connection brings the entries back as pending.
            let acked = ::redis::cmd("XACK")
                .arg(&self.cfg.stream)
                .arg(group)
                .arg(&ids)
                .query_async::<Value>(conn)
                .await;
            let refused = match acked {
                Ok(Value::ServerError(e)) => ::redis::RedisError::from(e),
                Err(e) if !super::classify(&e).1 => e,
                Err(e) => return Err(e.into()),
                Ok(_) => return Ok(()),
            };
            // Not the connection: the server said no (an ACL without
            // XACK). The entries stay pending and come back after a
            // reconnect, as duplicates.
            if !self.ack_refused {
                self.ack_refused = true;
                tracing::warn!(probe = %self.sink.name(), stream = %self.cfg.stream, error = %refused, "Redis refused XACK: the group's pending entries grow, and come back as duplicates after a reconnect.");
            }
        }
        Ok(())
    }
}

/// The entries of an `XREAD`/`XREADGROUP`/`XREVRANGE` reply: (ID,
/// fields), with no fields for a pending entry deleted since. Anything
/// else in the reply is skipped.
fn entries(reply: &Value) -> impl Iterator<Item = (&[u8], Option<&[Value]>)> {
    let mut out = Vec::new();
    let items: Vec<&Value> = match reply {
        Value::Array(items) => items.iter().collect(),
        // RESP3: {stream: [entry…]}.
        Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
        _ => Vec::new(),
    };
    let arrays = |es: &[Value]| es.is_empty() || es.iter().any(|e| matches!(e, Value::Array(_)));
    for item in items {
        match item {
            // A read's [stream, [entry…]] (no entries: nothing pending).
            Value::Array(pair) if pair.len() == 2 && bytes(&pair[0]).is_some() => match &pair[1] {
                Value::Array(es) if arrays(es) => out.extend(es.iter().filter_map(entry)),
                _ => out.extend(entry(item)),
            },
            // A map's list of entries.
            Value::Array(list) if arrays(list) => out.extend(list.iter().filter_map(entry)),
            // A range's entry.
            other => out.extend(entry(other)),
        }
    }
    out.into_iter()
}

/// `[id, [field, value…]]`, or `[id, nil]` for a deleted pending entry.
fn entry(v: &Value) -> Option<(&[u8], Option<&[Value]>)> {
    let Value::Array(parts) = v else { return None };
    let [id, fields] = parts.as_slice() else {
        return None;
    };
    let id = bytes(id)?;
    match fields {
        Value::Array(f) if !f.is_empty() && f.iter().all(|x| bytes(x).is_some()) => {
            Some((id, Some(f.as_slice())))
        }
        Value::Nil => Some((id, None)),
        _ => None,
    }
}

/// The entries of a reply as (ID, number of field values) for tests.
#[cfg(test)]
pub(super) fn tests_entries(reply: &Value) -> Vec<(String, Option<usize>)> {
    entries(reply)
        .map(|(id, f)| {
            (
                String::from_utf8_lossy(id).into_owned(),
                f.map(<[Value]>::len),
            )
        })
        .collect()
}
