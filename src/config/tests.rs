use super::*;
use std::collections::HashMap;

fn env() -> HashMap<String, String> {
    HashMap::from([("KEY".to_owned(), "a-long-enough-signing-key".to_owned())])
}

const GOOD: &str = r#"
environment: staging
listen: 127.0.0.1:9999
signing_key: ${KEY}
defaults:
  interval: 500ms
  slo:
    latency: {threshold: 250ms, objective: 99%}
connections:
  main:
    nats:
      url: nats://alice:pw-in-url@127.0.0.1:4222
  other:
    nats:
      url: nats://127.0.0.1:4222
      token: s3cr3t-token
probes:
  - name: orders
    inject: {nats: {connection: main, subject: orders.in}}
    catch: {nats: {connection: main, subject: orders.out}}
    slo:
      delivery: {objective: 99.9%}
  - name: self-test
    interval: 100ms
    deadline: 5s
    inject:
      http:
        url: /hooks/self-test
        headers: {Authorization: Bearer abc}
    catch:
      http: {}
    payload: {size: 512}
"#;

#[test]
fn reads_a_valid_file_with_defaults_applied() {
    let c = load_str(GOOD, &env()).unwrap();
    assert_eq!(c.environment, "staging");
    assert_eq!(c.listen.address.port(), 9999);
    assert_eq!(c.signing_key.expose(), "a-long-enough-signing-key");
    assert_eq!(c.probes.len(), 2);
    let orders = &c.probes[0];
    assert_eq!(orders.interval, Duration::from_millis(500));
    assert_eq!(orders.deadline, DEFAULT_DEADLINE);
    assert_eq!(orders.publish_timeout, DEFAULT_PUBLISH_TIMEOUT);
    assert_eq!(
        orders.slo.latency.unwrap().threshold,
        Duration::from_millis(250)
    );
    assert_eq!(orders.slo.delivery.unwrap().objective, 99.9);
    assert_eq!(orders.slo.slice, DEFAULT_SLICE);
    assert!(matches!(&orders.inject, InjectConfig::Nats(n) if n.subject == "orders.in"));
    let st = &c.probes[1];
    assert_eq!(
        st.publish_timeout,
        Duration::from_secs(5),
        "capped by the deadline"
    );
    assert_eq!(st.payload.size, 512);
    assert!(matches!(&st.catch, CatchConfig::Http(h) if h.signature_header == "X-Chirp-Signature"));
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let c = load_str(GOOD, &env()).unwrap();
    let dbg = format!("{c:?}");
    for secret in [
        "a-long-enough-signing-key",
        "s3cr3t-token",
        "Bearer abc",
        "pw-in-url",
    ] {
        assert!(!dbg.contains(secret), "{secret} leaked in {dbg}");
    }
}

fn errors(text: &str) -> Vec<String> {
    load_str(text, &env())
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn reports_every_probe_s_mistakes_with_paths_and_lines() {
    let text = r#"signing_key: ${KEY}
connections:
  main:
    nats: {url: "nats://127.0.0.1:4222"}
probes:
  - name: a
    intervall: 1s
    inject: {nats: {connection: main, subject: a.in}}
    catch: {nats: {connection: main, subject: a.out}}
  - name: b
    deadline: soon
    inject: {http: {url: /hooks/b}}
    catch: {http: {}}
  - name: c
    interval: 0s
    inject: {nats: {connection: main, subject: c.in}}
    catch: {nats: {connection: mian, subject: c.out}}
"#;
    let e = errors(text);
    assert_eq!(e.len(), 4, "{e:#?}");
    assert_eq!(
        e[0],
        "probes[0].intervall: unknown key `intervall`; did you mean `interval`? (line 7, column 5)"
    );
    assert!(
        e[1].starts_with("probes[1].deadline: `soon` is not a duration"),
        "{}",
        e[1]
    );
    assert!(e[1].ends_with("(line 11, column 5)"), "{}", e[1]);
    // A probe that reads is checked whole: both of its mistakes are reported.
    assert_eq!(
        e[2],
        "probes[2].interval: must be at least 1ms (line 15, column 5)"
    );
    assert!(
        e[3].starts_with(
            "probes[2].catch.nats.connection: no connection named `mian`; did you mean `main`?"
        ),
        "{}",
        e[3]
    );
    assert!(e[3].ends_with("(line 17, column 20)"), "{}", e[3]);
}

#[test]
fn an_objective_without_a_percent_sign_is_an_error_showing_both_readings() {
    for (objective, expected) in [
        ("0.999", "`0.999` needs a `%`: write `99.9%` for a ratio of 0.999, or `0.999%` if you mean 0.999 percent"),
        ("99.9", "`99.9` needs a `%`: write `99.9%`"),
    ] {
        let text = format!(
            "signing_key: ${{KEY}}\nprobes:\n  - name: a\n    inject: {{http: {{url: /hooks/a}}}}\n    catch: {{http: {{}}}}\n    slo: {{delivery: {{objective: {objective}}}}}\n"
        );
        let e = errors(&text);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].starts_with("probes[0].slo.delivery.objective: "), "{}", e[0]);
        assert!(e[0].contains(expected), "{}", e[0]);
    }
    let defaults = "signing_key: ${KEY}\ndefaults:\n  slo:\n    latency: {threshold: 1s, objective: 0.99}\nprobes:\n  - name: a\n    inject: {http: {url: /hooks/a}}\n    catch: {http: {}}\n";
    let e = errors(defaults);
    assert!(
        e[0].starts_with("defaults.slo.latency.objective: `0.99` needs a `%`"),
        "{e:#?}"
    );
}

#[test]
fn a_missing_variable_is_named() {
    let text = "signing_key: ${CHIRP_TEST_UNSET_KEY}\nprobes:\n  - name: a\n    inject: {http: {url: /hooks/a}}\n    catch: {http: {}}\n";
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("signing_key: environment variable `CHIRP_TEST_UNSET_KEY` is not set"),
        "{}",
        e[0]
    );
}

#[test]
fn unknown_transports_and_slo_mistakes_are_explained() {
    let text = r#"signing_key: ${KEY}
probes:
  - name: a
    inject: {natz: {}}
    catch: {http: {}}
  - name: b
    inject: {http: {url: /hooks/b}}
    catch: {kinesis: {}}
  - name: c
    deadline: 1s
    inject: {http: {url: /hooks/c}}
    catch: {http: {}}
    slo:
      latency: {threshold: 2s, objective: 100%}
  - name: d
    inject: {http: {url: /hooks/d}}
    catch: {http: {}}
    slo: {slice: 7m}
  - name: e
    inject: {http: {url: /hooks/e}, nats: {connection: x, subject: y}}
    catch: {http: {}}
"#;
    let e = errors(text);
    let joined = e.join("\n");
    for want in [
        "probes[0].inject: unknown transport `natz` (one of: nats, jetstream, http, kafka, amqp, mqtt, redis, sqs, pubsub); did you mean `nats`?",
        "probes[1].catch: unknown transport `kinesis` (one of: nats, jetstream, http, kafka, amqp, mqtt, redis, sqs, pubsub)",
        "probes[2].slo.latency.objective: objective `100%` must be strictly between",
        "probes[3].slo.slice: 7m must be a whole number of seconds that divides a day",
        "probes[4].inject: name exactly one transport",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    assert_eq!(e.len(), 5, "{joined}");
}

#[test]
fn threshold_must_be_below_the_deadline_and_period_whole_slices() {
    let text = r#"signing_key: ${KEY}
probes:
  - name: a
    deadline: 1s
    inject: {http: {url: /hooks/a}}
    catch: {http: {}}
    slo:
      latency: {threshold: 1s, objective: 99%}
      slice: 5m
      period: 7m
"#;
    let joined = errors(text).join("\n");
    assert!(joined.contains("probes[0].slo.latency.threshold: 1s must be above 0 and below the probe's deadline (1s)"), "{joined}");
    assert!(
        joined.contains("probes[0].slo.period: 7m must be a whole number of slices (5m)"),
        "{joined}"
    );
}

#[test]
fn duplicate_names_short_keys_and_bad_yaml() {
    let text = "signing_key: short\nprobes:\n  - name: a\n    inject: {http: {url: /x}}\n    catch: {http: {}}\n  - name: a\n    inject: {http: {url: ftp://x}}\n    catch: {http: {}}\n";
    let joined = errors(text).join("\n");
    assert!(joined.contains("signing_key: is too short"), "{joined}");
    assert!(
        joined.contains("probes[1].name: probe name `a` is already used by probes[0]")
            || joined.contains("probes[1].inject.http.url: `ftp://x` must start with"),
        "{joined}"
    );
    let e = errors("probes: [\n");
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("not valid YAML"), "{}", e[0]);
}

#[test]
fn secret_values_are_not_quoted_in_errors() {
    let text = "signing_key: [not, a, string]\nprobes: []\n";
    let joined = errors(text).join("\n");
    assert!(
        joined.contains("signing_key: expected a string, found a list"),
        "{joined}"
    );
}

#[test]
fn kafka_connections_and_probes_are_read_and_checked() {
    let text = r#"signing_key: ${KEY}
connections:
  k:
    kafka:
      brokers: b1:9092,b2:9092
      sasl: {mechanism: scram-sha-512, username: chirp, password: kafka-pw-123}
      tls: true
      properties: {sasl.oauthbearer.config: "secret-ish"}
  n:
    nats: {url: "nats://127.0.0.1:4222"}
probes:
  - name: a
    inject: {kafka: {connection: k, topic: orders.in, partitions: all}}
    catch: {kafka: {connection: k, topic: orders.out}}
  - name: b
    inject: {kafka: {connection: k, topic: t, partitions: [2, 0, 2]}}
    catch: {http: {}}
"#;
    let c = load_str(text, &env()).unwrap();
    use crate::transport::kafka::config::{Brokers, Partitions, SaslMechanism};
    let ConnectionConfig::Kafka(k) = &c.connections["k"] else {
        panic!("kafka connection")
    };
    assert_eq!(k.brokers, Brokers::List("b1:9092,b2:9092".into()));
    assert_eq!(
        k.sasl.as_ref().unwrap().mechanism,
        SaslMechanism::ScramSha512
    );
    assert!(k.tls.is_some());
    let InjectConfig::Kafka(a) = &c.probes[0].inject else {
        panic!("kafka inject")
    };
    assert_eq!(
        (a.partitions.clone(), a.acks.as_str()),
        (Some(Partitions::All), "all")
    );
    let CatchConfig::Kafka(ac) = &c.probes[0].catch else {
        panic!("kafka catch")
    };
    assert_eq!(
        (ac.commit, ac.fetch_wait_max),
        (false, Duration::from_millis(5))
    );
    let InjectConfig::Kafka(b) = &c.probes[1].inject else {
        panic!("kafka inject")
    };
    assert_eq!(b.partitions, Some(Partitions::List(vec![0, 2])));
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("kafka-pw-123") && !dbg.contains("secret-ish"),
        "{dbg}"
    );

    let bad = r#"signing_key: ${KEY}
connections:
  k: {kafka: {brokers: b:9092}}
  k1: {kafka: {brokers: b:9092, sasl: {mechanism: GSSAPI, username: u, password: p}}}
  k2: {kafka: {brokers: b:9092, sasl: {mechanism: PLAIN, username: u}}}
  n: {nats: {url: "nats://x:4222"}}
probes:
  - name: a
    inject: {kafka: {connection: k, topic: t, partitions: some}}
    catch: {kafka: {connection: k, topic: t}}
  - name: b
    inject: {kafka: {connection: n, topic: "bad topic", partitions: [1, 0]}}
    catch: {kafka: {connection: k, topic: t, commit: true}}
"#;
    let joined = errors(bad).join("\n");
    for expected in [
        "connections.k1.kafka.sasl.mechanism: `GSSAPI` is not supported",
        "connections.k2.kafka.sasl.password: is required",
        "probes[0].inject.kafka.partitions: expected `all` or a list of partition numbers",
        "probes[1].inject.kafka.connection: connection `n` is a nats connection; this transport needs a kafka one",
        "probes[1].inject.kafka.topic: `bad topic` is not a valid Kafka topic name",
        "probes[1].catch.kafka.commit: committing offsets needs an explicit `group_id`",
    ] {
        assert!(joined.contains(expected), "missing {expected:?} in\n{joined}");
    }
}

#[test]
fn a_self_test_loop_cannot_have_its_own_webhook_secret() {
    let text = "signing_key: ${KEY}\nprobes:\n  - name: a\n    inject: {http: {url: /hooks/a}}\n    catch: {http: {secret: other-secret-0123456789}}\n";
    let e = errors(text);
    assert_eq!(e.len(), 1, "{e:#?}");
    assert!(
        e[0].starts_with("probes[0].catch.http.secret: this probe posts to chirp's own listener"),
        "{}",
        e[0]
    );
    // From elsewhere, a secret of its own is fine.
    let ok = "signing_key: ${KEY}\nprobes:\n  - name: a\n    inject: {http: {url: 'https://pipeline.example/in'}}\n    catch: {http: {secret: other-secret-0123456789}}\n";
    assert!(load_str(ok, &env()).is_ok());
}

#[test]
fn the_demo_key_is_named_only_on_probes_of_a_real_pipeline() {
    let text = |key: &str| {
        format!(
            "signing_key: {key}\nconnections:\n  e: {{kafka: {{brokers: embedded}}}}\n  n: {{nats: {{url: 'nats://127.0.0.1:4222'}}}}\nprobes:\n  - {{name: self, inject: {{http: {{url: /hooks/self}}}}, catch: {{http: {{}}}}}}\n  - {{name: k, inject: {{kafka: {{connection: e, topic: t}}}}, catch: {{kafka: {{connection: e, topic: t}}}}}}\n  - {{name: orders, inject: {{nats: {{connection: n, subject: a}}}}, catch: {{nats: {{connection: n, subject: b}}}}}}\n"
        )
    };
    let demo = load_str(&text(DEMO_SIGNING_KEY), &env()).unwrap();
    assert_eq!(demo.demo_key_on_real_probes(), ["orders"]);
    let own = load_str(&text("a-long-enough-signing-key"), &env()).unwrap();
    assert!(own.demo_key_on_real_probes().is_empty());
}

#[test]
fn the_listener_is_an_address_or_a_mapping_with_limits_tls_and_auth() {
    let c = load_str(GOOD, &env()).unwrap();
    let l = &c.listen;
    assert_eq!(l.limits, listen::Limits::default());
    assert!(l.tls.is_none() && l.auth.is_none());
    let full = GOOD.replace(
        "listen: 127.0.0.1:9999",
        "listen:\n  address: 127.0.0.1:9999\n  max_connections: 50\n  header_timeout: 2s\n  body_timeout: 3s\n  idle_timeout: 4s\n  max_body: 4096\n  tls: {cert_file: /c.pem, key_file: /k.pem}\n  auth: {bearer_token: a-bearer-token-of-length, basic: {username: prom, password: twelve-chars}}",
    );
    let c = load_str(&full, &env()).unwrap();
    let l = &c.listen;
    assert_eq!(l.address.port(), 9999);
    assert_eq!(
        l.limits,
        listen::Limits {
            max_connections: 50,
            header_timeout: Duration::from_secs(2),
            body_timeout: Duration::from_secs(3),
            idle_timeout: Duration::from_secs(4),
            max_body: 4096,
        }
    );
    assert_eq!(l.tls.as_ref().unwrap().key_file, "/k.pem");
    let auth = l.auth.as_ref().unwrap();
    assert_eq!(auth.basic.as_ref().unwrap().0, "prom");
    let shown = format!("{c:?}");
    assert!(!shown.contains("a-bearer-token-of-length") && !shown.contains("twelve-chars"));
}

#[test]
fn the_default_body_limit_makes_room_for_padded_webhook_canaries() {
    let big = GOOD.replace("payload: {size: 512}", "payload: {size: 100000}");
    let c = load_str(&big, &env()).unwrap();
    assert_eq!(c.listen.limits.max_body, 100000 + listen::BODY_SLACK);
    let too_small = big.replace(
        "listen: 127.0.0.1:9999",
        "listen: {address: 127.0.0.1:9999, max_body: 50000}",
    );
    let e = errors(&too_small);
    assert!(
        e.iter().any(|e| e
            .starts_with("listen.max_body: 50000 bytes is smaller than a webhook probe's canary")),
        "{e:?}"
    );
}

#[test]
fn listener_mistakes_are_named() {
    for (listen, says) in [
        (
            "listen: {adress: 127.0.0.1:1}",
            "listen.adress: unknown key `adress`; did you mean `address`?",
        ),
        (
            "listen: {address: nowhere}",
            "listen.address: `nowhere` is not an address",
        ),
        ("listen: [1]", "listen: expected an address"),
        (
            "listen: {max_connections: 0}",
            "listen.max_connections: must be between 1",
        ),
        (
            "listen: {header_timeout: 1ms}",
            "listen.header_timeout: must be at least 100ms",
        ),
        (
            "listen: {idle_timeout: 300000000000y}",
            "listen.idle_timeout: must be at most 1d",
        ),
        (
            "listen: {auth: {}}",
            "listen.auth: name `bearer_token`, `basic` or both",
        ),
        (
            "listen: {auth: {bearer_token: short}}",
            "listen.auth.bearer_token: is too short",
        ),
        ("listen: {tls: {cert_file: /c.pem}}", "listen.tls.key_file"),
    ] {
        let text = GOOD.replace("listen: 127.0.0.1:9999", listen);
        let e = errors(&text);
        assert!(e.iter().any(|e| e.starts_with(says)), "{listen}: {e:?}");
    }
}

#[test]
fn previous_signing_keys_are_checked_and_empty_ones_skipped() {
    let text = GOOD.replace(
        "signing_key: ${KEY}",
        "signing_key: ${KEY}\nprevious_signing_keys: [the-old-key-0123456, \"${OLD:-}\"]",
    );
    let c = load_str(&text, &env()).unwrap();
    assert_eq!(c.previous_signing_keys.len(), 1);
    assert_eq!(c.previous_signing_keys[0].expose(), "the-old-key-0123456");
    let bad = GOOD.replace(
        "signing_key: ${KEY}",
        "signing_key: ${KEY}\nprevious_signing_keys: [short, \"${KEY}\"]",
    );
    let e = errors(&bad);
    assert!(
        e.iter()
            .any(|e| e.starts_with("previous_signing_keys[0]: is too short")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.starts_with("previous_signing_keys[1]: is the signing key itself")),
        "{e:?}"
    );
    assert!(
        !e.iter().any(|e| e.contains("a-long-enough-signing-key")),
        "{e:?}"
    );
}

#[test]
fn alerts_take_labels_a_runbook_and_thresholds_within_bounds() {
    let probes = "probes:\n  - {name: a, inject: {http: {url: /hooks/a}}, catch: {http: {}}}\n";
    let c = load_str(
        &format!("signing_key: ${{KEY}}\nalerts:\n  labels: {{team: payments}}\n  runbook_url: https://runbooks.example.com/chirp/\n  silent_intervals: 20\n  absent_for: 10m\n{probes}"),
        &env(),
    )
    .unwrap();
    assert_eq!(
        c.alerts.labels.get("team").map(String::as_str),
        Some("payments")
    );
    assert_eq!(
        c.alerts.runbook_url.as_deref(),
        Some("https://runbooks.example.com/chirp")
    );
    assert_eq!(c.alerts.silent_intervals, 20);
    assert_eq!(c.alerts.absent_for, Duration::from_secs(600));
    assert_eq!(c.alerts.disconnected_for, Duration::from_secs(300));
    let e = errors(&format!(
        "signing_key: ${{KEY}}\nalerts:\n  labels: {{severity: low, 9lives: x, __x: y}}\n  runbook_url: ftp://x\n  silent_intervals: 1\n  absent_for: 10s\n{probes}"
    ));
    for expected in [
        "alerts.labels.severity: is set by `chirp rules` itself",
        "alerts.labels.9lives: is not a Prometheus label name",
        "alerts.labels.__x: is not a Prometheus label name",
        "alerts.runbook_url: must be an http:// or https:// URL",
        "alerts.silent_intervals: must be between 2 and 10000",
        "alerts.absent_for: must be between 1m and 1d",
    ] {
        assert!(
            e.iter().any(|x| x.starts_with(expected)),
            "{expected} not in {e:#?}"
        );
    }
}

#[test]
fn the_environment_is_plain_text() {
    let probes = "probes:\n  - {name: a, inject: {http: {url: /hooks/a}}, catch: {http: {}}}\n";
    for bad in ["'{{ $value }}'", "\"a\\nb\"", "''"] {
        let e = errors(&format!(
            "signing_key: ${{KEY}}\nenvironment: {bad}\n{probes}"
        ));
        assert!(
            e.iter()
                .any(|x| x.starts_with("environment: must be 1 to 64 printable")),
            "{bad}: {e:#?}"
        );
    }
    let ok = load_str(
        &format!("signing_key: ${{KEY}}\nenvironment: eu-west prod.2\n{probes}"),
        &env(),
    )
    .unwrap();
    assert_eq!(ok.environment, "eu-west prod.2");
}

#[test]
fn a_dead_letter_catch_point_is_a_second_transport_beside_the_catch() {
    let text = r#"signing_key: ${KEY}
connections:
  n: {nats: {url: "nats://127.0.0.1:4222"}}
probes:
  - name: a
    inject: {nats: {connection: n, subject: in}}
    catch: {nats: {connection: n, subject: out}, dead_letter: {nats: {connection: n, subject: dlq}}}
  - name: b
    inject: {nats: {connection: n, subject: in}}
    catch: {nats: {connection: n, subject: out}, dead_letter: {http: {}}}
  - name: c
    inject: {nats: {connection: n, subject: in}}
    catch: {nats: {connection: n, subject: out}, dead_letter: {nats: {connection: n, subject: out}}}
  - name: d
    inject: {nats: {connection: n, subject: in}}
    catch: {nats: {connection: n, subject: out}, dead_letter: {nats: {connection: m, subject: dlq}}}
  - name: e
    inject: {nats: {connection: n, subject: in}}
    catch: {dead_letter: {nats: {connection: n, subject: dlq}}}
"#;
    let e = errors(text);
    let joined = e.join("\n");
    for want in [
        "probes[1].catch.dead_letter: a dead-letter catch point is a queue, topic, subject or stream",
        "probes[2].catch.dead_letter: the dead-letter catch point is the probe's catch point itself",
        "probes[3].catch.dead_letter.nats.connection: no connection named `m`",
        "probes[4].catch: name exactly one transport",
    ] {
        assert!(joined.contains(want), "missing {want:?} in\n{joined}");
    }
    assert_eq!(e.len(), 4, "{joined}");
    let ok = text.split("  - name: b").next().unwrap();
    let c = load_str(ok, &env()).unwrap();
    assert_eq!(
        c.probes[0]
            .dead_letter
            .as_ref()
            .map(|d| d.end("a").description),
        Some("NATS subject dlq (connection n)".to_owned())
    );
}

#[test]
fn two_probes_may_not_split_one_queue_between_them() {
    let text = r#"
signing_key: "0123456789abcdef0123456789abcdef"
connections:
  aws: {sqs: {region: eu-west-1}}
  r: {redis: {url: "redis://h"}}
probes:
  - name: orders
    inject: {sqs: {connection: aws, queue: orders-in}}
    catch: {sqs: {connection: aws, queue: orders-out}, dead_letter: {sqs: {connection: aws, queue: pipeline-dlq}}}
  - name: billing
    inject: {sqs: {connection: aws, queue: billing-in}}
    catch: {sqs: {connection: aws, queue: billing-out}, dead_letter: {sqs: {connection: aws, queue: pipeline-dlq}}}
  - name: grouped
    inject: {redis: {connection: r, stream: s}}
    catch: {redis: {connection: r, stream: s, group: g}}
  - name: grouped-too
    inject: {redis: {connection: r, stream: s}}
    catch: {redis: {connection: r, stream: s, group: g}}
  - name: tail
    inject: {redis: {connection: r, stream: s}}
    catch: {redis: {connection: r, stream: s}}
"#;
    let e = errors(text);
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("probes[1].catch.dead_letter: SQS queue `pipeline-dlq` (connection `aws`) is consumed by probes[0].catch.dead_letter too: its consumers split the messages"), "{}", e[0]);
    assert!(e[1].starts_with("probes[3].catch: Redis stream `s` as consumer group `g` (connection `r`) is consumed by probes[2].catch too"), "{}", e[1]);
}
