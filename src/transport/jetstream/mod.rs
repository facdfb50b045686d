//! NATS JetStream: canaries published to a stream's subject and acknowledged
//! by the server once stored (the publish latency is that PubAck), with the
//! token as `Nats-Msg-Id` so the stream's duplicate window drops a retried
//! publish; caught by an ordered ephemeral consumer (new messages only; it
//! leaves nothing behind on the server) or by a named durable pull consumer
//! with explicit acks, acked after recording, to probe the exact consumer
//! path a service uses. It rides the named `nats` connection's clients.

pub mod catch;
pub mod config;
pub mod inject;
#[cfg(test)]
mod tests;

use std::time::Duration;

/// How long a JetStream API request (stream lookup, consumer creation) may take.
const API_TIMEOUT: Duration = Duration::from_secs(5);

/// A JetStream context on `client` with chirp's timeouts.
fn context(client: async_nats::Client, timeout: Duration) -> async_nats::jetstream::Context {
    let mut js = async_nats::jetstream::new(client);
    js.set_timeout(timeout);
    js
}
