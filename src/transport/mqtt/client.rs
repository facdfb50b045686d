//! One face for rumqttc's two clients (MQTT 5 in `rumqttc::v5`, 3.1.1 at
//! its root): what chirp sends, and the few events it reads.

use crate::canary;
use crate::outcome::FailureKind;
use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;

#[derive(Clone)]
pub enum Client {
    V5(v5::AsyncClient),
    V311(rumqttc::AsyncClient),
}

pub enum EventLoop {
    V5(Box<v5::EventLoop>),
    V311(Box<rumqttc::EventLoop>),
}

/// What chirp reads from an event loop.
#[derive(Debug)]
pub enum Ev {
    /// The broker accepted the connection.
    ConnAck {
        session_present: bool,
    },
    /// A message on a subscribed topic.
    Message {
        topic: String,
        payload: Bytes,
        token: Option<String>,
        traceparent: Option<String>,
        /// The identifiers of the subscriptions it came through (MQTT 5).
        subscriptions: Vec<usize>,
    },
    /// The publish with this packet id is written (0: QoS 0, done).
    Sent(u16),
    /// The next publish waits for its packet id to be acked (the broker
    /// acked out of order); it is sent (`Sent`) once it is.
    Collided,
    /// The end of a publish: PUBACK (QoS 1), PUBCOMP (QoS 2), or a PUBREC
    /// with a failure reason (QoS 2, no PUBCOMP follows).
    Done {
        pkid: u16,
        failure: Option<(FailureKind, String)>,
    },
    /// The SUBSCRIBE with this packet id is written.
    Subscribing(u16),
    SubAck {
        pkid: u16,
        granted: bool,
    },
    Other,
}

fn qos5(q: u8) -> v5::mqttbytes::QoS {
    match q {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        2 => v5::mqttbytes::QoS::ExactlyOnce,
        _ => v5::mqttbytes::QoS::AtLeastOnce,
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        2 => rumqttc::QoS::ExactlyOnce,
        _ => rumqttc::QoS::AtLeastOnce,
    }
}

impl Client {
    /// Queues a publish; false if the request queue is full (never retained: a retained canary would be
    /// replayed, with its old timestamp, to every new subscriber).
    pub fn publish(
        &self,
        topic: &str,
        qos: u8,
        payload: Bytes,
        token: &str,
        traceparent: Option<&str>,
    ) -> bool {
        match self {
            Client::V5(c) => {
                let mut user_properties = vec![(canary::HEADER.to_owned(), token.to_owned())];
                if let Some(tp) = traceparent {
                    user_properties.push((canary::TRACEPARENT.to_owned(), tp.to_owned()));
                }
                let props = p5::PublishProperties {
                    user_properties,
                    ..Default::default()
                };
                c.try_publish_with_properties(topic, qos5(qos), false, payload, props)
                    .is_ok()
            }
            Client::V311(c) => c
                .try_publish(topic, qos4(qos), false, payload.to_vec())
                .is_ok(),
        }
    }

    /// Queues a SUBSCRIBE; `id` tags the messages it brings (MQTT 5), so a
    /// message matching two filters, sent once per subscription, reaches
    /// each filter's probes once.
    pub fn subscribe(&self, filter: &str, qos: u8, id: usize) -> bool {
        match self {
            Client::V5(c) => {
                let props = p5::SubscribeProperties {
                    id: Some(id),
                    user_properties: Vec::new(),
                };
                c.try_subscribe_with_properties(filter, qos5(qos), props)
                    .is_ok()
            }
            Client::V311(c) => c.try_subscribe(filter, qos4(qos)).is_ok(),
        }
    }

    pub fn unsubscribe(&self, filter: &str) {
        let _ = match self {
            Client::V5(c) => c.try_unsubscribe(filter).is_ok(),
            Client::V311(c) => c.try_unsubscribe(filter).is_ok(),
        };
    }

    pub fn disconnect(&self) {
        let _ = match self {
            Client::V5(c) => c.try_disconnect().is_ok(),
            Client::V311(c) => c.try_disconnect().is_ok(),
        };
    }
}

impl EventLoop {
    /// The next event; an error means the connection is gone (or could
    /// not be made), and polling again reconnects.
    pub async fn poll(&mut self) -> Result<Ev, crate::transport::BoxError> {
        match self {
            EventLoop::V5(l) => Ok(from_v5(l.poll().await?)),
            EventLoop::V311(l) => Ok(from_v4(l.poll().await?)),
        }
    }

    /// Connects once more with a clean session and leaves: the broker
    /// drops the persistent session (its subscriptions and queue) instead
    /// of keeping it for a client id no one will use again.
    pub async fn end_session(&mut self, client: &Client) {
        match self {
            EventLoop::V5(l) => {
                l.options.set_clean_start(true);
                l.options.set_session_expiry_interval(None);
            }
            EventLoop::V311(l) => {
                l.mqtt_options.set_clean_session(true);
            }
        }
        // Drops the connection: the next poll connects anew.
        self.forget(false);
        let connected = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            loop {
                match self.poll().await {
                    Ok(Ev::ConnAck { .. }) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        })
        .await;
        if connected == Ok(true) {
            client.disconnect();
            let _ = tokio::time::timeout(std::time::Duration::from_millis(500), async {
                while self.poll().await.is_ok() {}
            })
            .await;
        }
    }

    /// Forgets every request not yet acknowledged, and (unless
    /// `keep_messages`) every buffered event, so nothing queued before a
    /// disconnect is sent (or reported) after the reconnect: their waiters
    /// were answered already.
    pub fn forget(&mut self, keep_messages: bool) {
        match self {
            EventLoop::V5(l) => {
                l.clean();
                // clean() keeps a publish waiting for its packet id: it
                // would block every later publish after the reconnect.
                l.state.collision = None;
                l.pending.clear();
                l.state.events.retain(|e| {
                    keep_messages && matches!(e, v5::Event::Incoming(v5::Incoming::Publish(_)))
                });
            }
            EventLoop::V311(l) => {
                l.clean();
                l.state.collision = None;
                l.pending.clear();
                l.state.events.retain(|e| {
                    keep_messages
                        && matches!(e, rumqttc::Event::Incoming(rumqttc::Incoming::Publish(_)))
                });
            }
        }
    }
}

fn failure5(reason: impl std::fmt::Debug, auth: bool, quota: bool) -> (FailureKind, String) {
    let kind = if auth {
        FailureKind::Auth
    } else if quota {
        FailureKind::Throttled
    } else {
        FailureKind::Rejected
    };
    (kind, format!("the broker refused the publish: {reason:?}"))
}

fn from_v5(e: v5::Event) -> Ev {
    use rumqttc::Outgoing;
    use v5::{Event, Incoming};
    match e {
        Event::Incoming(Incoming::ConnAck(c)) => Ev::ConnAck {
            session_present: c.session_present,
        },
        Event::Incoming(Incoming::Publish(p)) => {
            let get = |name: &str| {
                p.properties.as_ref().and_then(|props| {
                    props
                        .user_properties
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                })
            };
            Ev::Message {
                topic: String::from_utf8_lossy(&p.topic).into_owned(),
                token: get(canary::HEADER),
                traceparent: get(canary::TRACEPARENT),
                subscriptions: p
                    .properties
                    .as_ref()
                    .map(|props| props.subscription_identifiers.clone())
                    .unwrap_or_default(),
                payload: p.payload,
            }
        }
        Event::Incoming(Incoming::PubAck(a)) => {
            use p5::PubAckReason as R;
            let failure = match a.reason {
                R::Success | R::NoMatchingSubscribers => None,
                r => Some(failure5(r, r == R::NotAuthorized, r == R::QuotaExceeded)),
            };
            Ev::Done {
                pkid: a.pkid,
                failure,
            }
        }
        Event::Incoming(Incoming::PubRec(a)) => {
            use p5::PubRecReason as R;
            match a.reason {
                R::Success | R::NoMatchingSubscribers => Ev::Other,
                r => Ev::Done {
                    pkid: a.pkid,
                    failure: Some(failure5(r, r == R::NotAuthorized, r == R::QuotaExceeded)),
                },
            }
        }
        Event::Incoming(Incoming::PubComp(c)) => Ev::Done {
            pkid: c.pkid,
            failure: (c.reason != p5::PubCompReason::Success)
                .then(|| failure5(c.reason, false, false)),
        },
        Event::Incoming(Incoming::SubAck(s)) => Ev::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .iter()
                .all(|r| matches!(r, p5::SubscribeReasonCode::Success(_))),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
        Event::Outgoing(Outgoing::AwaitAck(_)) => Ev::Collided,
        Event::Outgoing(Outgoing::Subscribe(pkid)) => Ev::Subscribing(pkid),
        _ => Ev::Other,
    }
}

fn from_v4(e: rumqttc::Event) -> Ev {
    use rumqttc::{Event, Incoming, Outgoing};
    match e {
        Event::Incoming(Incoming::ConnAck(c)) => Ev::ConnAck {
            session_present: c.session_present,
        },
        Event::Incoming(Incoming::Publish(p)) => Ev::Message {
            topic: p.topic,
            payload: p.payload,
            token: None,
            traceparent: None,
            subscriptions: Vec::new(),
        },
        Event::Incoming(Incoming::PubAck(a)) => Ev::Done {
            pkid: a.pkid,
            failure: None,
        },
        Event::Incoming(Incoming::PubComp(c)) => Ev::Done {
            pkid: c.pkid,
            failure: None,
        },
        Event::Incoming(Incoming::SubAck(s)) => Ev::SubAck {
            pkid: s.pkid,
            granted: s
                .return_codes
                .iter()
                .all(|r| matches!(r, rumqttc::SubscribeReasonCode::Success(_))),
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Ev::Sent(pkid),
        Event::Outgoing(Outgoing::AwaitAck(_)) => Ev::Collided,
        Event::Outgoing(Outgoing::Subscribe(pkid)) => Ev::Subscribing(pkid),
        _ => Ev::Other,
    }
}
