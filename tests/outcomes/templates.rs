//! Canaries in the user's own event shape: Kafka (tansu) with an Avro
//! template in the Confluent wire format. The records on the topic are read
//! back by Python's `fastavro`, an implementation independent of chirp's,
//! with the schema: magic byte, schema id and every field; chirp's catch
//! counts every canary delivered.

use crate::support::brokers::{create_topics, Tansu};
use crate::support::{self, start_counted, TempDir, KEY};
use chirp::canary::Signer;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const SCHEMA: &str = r#"{
  "type": "record", "name": "OrderCreated", "namespace": "shop.v1",
  "fields": [
    {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "canary", "type": "string"},
    {"name": "seq", "type": "long"},
    {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    {"name": "amount_cents", "type": "int"},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
      {"name": "id", "type": "long"}, {"name": "tier", "type": "string", "default": "basic"}]}}
  ]
}"#;

/// Reads each hex line of stdin as a Confluent-framed record and prints
/// `{"id": …, "record": …}` per line, decoded by fastavro with the schema.
const DECODE: &str = r#"
import io, json, sys
import fastavro
schema = fastavro.parse_schema(json.loads(sys.argv[1]))
for line in sys.stdin:
    raw = bytes.fromhex(line.strip())
    assert raw[0] == 0, "magic byte"
    sid = int.from_bytes(raw[1:5], "big")
    body = io.BytesIO(raw[5:])
    record = fastavro.schemaless_reader(body, schema)
    assert body.read() == b"", "bytes after the record"
    print(json.dumps({"id": sid, "record": record}, default=str))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_avro_canaries_decode_with_fastavro_and_are_delivered() {
    const N: u64 = 30;
    let tansu = Tansu::start();
    create_topics(&tansu.bootstrap(), &[("orders.avro", 1)]).await;
    let dir = TempDir::new("avro-template");
    let schema = dir.write("order.avsc", SCHEMA);
    let config = support::Conf::new()
        .connection("k", format!("kafka: {{brokers: \"{}\"}}", tansu.bootstrap()))
        .probe(format!(
            r#"{{name: avro, interval: 20ms, deadline: 5s,
                payload: {{format: avro, schema_file: "{}", schema_id: 42,
                  template: {{event_id: "{{{{uuid}}}}", canary: "{{{{token}}}}", seq: "{{{{seq}}}}",
                    created_at: "{{{{sent_at}}}}", status: NEW, amount_cents: 1999, customer: {{id: 7}}}}}},
                inject: {{kafka: {{connection: k, topic: orders.avro}}}},
                catch: {{kafka: {{connection: k, topic: orders.avro}}}}}}"#,
            schema.display()
        ))
        .build();
    let mut rt = start_counted(&config, N).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    let c = support::probe(&rt, "avro").counts();
    assert_eq!(
        (c.sent, c.delivered, c.rejected, c.unrelated),
        (N, N, 0, 0),
        "{c:?}"
    );
    let run_id = rt.run_id;
    rt.shutdown().await;

    // The records as they are on the topic.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", "avro-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("orders.avro", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut stream = consumer.stream();
    let mut hex_lines = String::new();
    for _ in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("a record")
            .expect("a message")
            .expect("no error");
        hex_lines.push_str(&hex::encode(m.payload().expect("a value")));
        hex_lines.push('\n');
    }

    let mut py = Command::new("python3")
        .args(["-c", DECODE, SCHEMA])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    py.stdin
        .take()
        .unwrap()
        .write_all(hex_lines.as_bytes())
        .unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "fastavro (pip install fastavro, or ./scripts/test) could not read the records:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let signer = Signer::new(KEY.as_bytes());
    let mut seqs = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["id"], 42, "{line}");
        let r = &v["record"];
        let token = signer
            .decode(r["canary"].as_str().expect("canary"))
            .expect("a valid token in the record");
        assert_eq!((token.probe.as_str(), token.run_id), ("avro", run_id));
        assert_eq!(r["seq"], token.seq, "{line}");
        assert_eq!(r["status"], "NEW");
        assert_eq!(r["amount_cents"], 1999);
        assert_eq!(r["note"], serde_json::Value::Null);
        assert_eq!(r["customer"], serde_json::json!({"id": 7, "tier": "basic"}));
        assert!(uuid_shaped(r["event_id"].as_str().unwrap()), "{line}");
        // timestamp-micros: fastavro gives a datetime at the token's send time.
        let at = humantime::format_rfc3339_micros(
            std::time::UNIX_EPOCH + Duration::from_micros(token.sent_unix_us),
        )
        .to_string();
        let shown = r["created_at"]
            .as_str()
            .unwrap()
            .replace(' ', "T")
            .replace("+00:00", "Z");
        assert_eq!(shown, at, "{line}");
        seqs.push(token.seq);
    }
    seqs.sort();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>());
}

fn uuid_shaped(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

/// A schema registry the test serves: the latest version of one subject,
/// behind basic authentication; it records what it was asked.
async fn registry(
    subject: &'static str,
    id: u32,
    schema: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = std::sync::Arc::clone(&seen);
    let path = format!("/subjects/{subject}/versions/latest");
    let app = axum::Router::new().route(
        &path,
        axum::routing::get(move |headers: HeaderMap| {
            let log = std::sync::Arc::clone(&log);
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                log.lock().unwrap().push(auth.clone());
                // key:s3cret-registry
                if auth != "Basic a2V5OnMzY3JldC1yZWdpc3RyeQ==" {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                let body = serde_json::json!({"subject": subject, "version": 3, "id": id, "schema": schema});
                (StatusCode::OK, body.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// The schema and its id come from a registry by subject (`<topic>-value`
/// by default): the records carry the registry's id, and chirp catches
/// every canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avro_schema_and_id_come_from_the_registry_by_subject() {
    const N: u64 = 10;
    let mock = crate::support::brokers::Mock::start();
    mock.create_topic("orders.reg", 1);
    let (url, seen) = registry("orders.reg-value", 99, SCHEMA).await;
    let config = support::Conf::new()
        .connection("k", format!("kafka: {{brokers: \"{}\"}}", mock.bootstrap()))
        .probe(format!(
            r#"{{name: reg, interval: 20ms, deadline: 5s,
                payload: {{format: avro, schema_registry: {{url: "{url}", username: key, password: s3cret-registry}},
                  template: {{event_id: "{{{{uuid}}}}", canary: "{{{{token}}}}", seq: "{{{{seq}}}}",
                    created_at: "{{{{sent_at}}}}", status: PAID, amount_cents: 5, customer: {{id: 1}}}}}},
                inject: {{kafka: {{connection: k, topic: orders.reg}}}},
                catch: {{kafka: {{connection: k, topic: orders.reg}}}}}}"#
        ))
        .build();
    let mut rt = start_counted(&config, N).await;
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(10)).await, 0);
    let c = support::probe(&rt, "reg").counts();
    assert_eq!((c.sent, c.delivered, c.rejected), (N, N, 0), "{c:?}");
    rt.shutdown().await;
    assert_eq!(seen.lock().unwrap().len(), 1, "one lookup at start");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap())
        .set("group.id", "reg-reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("orders.reg", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut stream = consumer.stream();
    for _ in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("a record")
            .expect("a message")
            .expect("no error");
        let v = m.payload().unwrap();
        assert_eq!(
            &v[..5],
            &[0, 0, 0, 0, 99],
            "magic byte and the registry's id"
        );
        assert!(chirp::canary::scan(v).is_some());
    }
}

/// A webhook receives a Protobuf template's canaries with their media type
/// (`application/x-protobuf`), not as JSON, and the token in the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_canary_is_posted_with_its_media_type() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, Vec<u8>)>::new()));
    let log = std::sync::Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let log = std::sync::Arc::clone(&log);
                async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    log.lock().unwrap().push((ct, body.to_vec()));
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/ingest", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = TempDir::new("proto-template");
    let proto = dir.write(
        "o.proto",
        "syntax = \"proto3\";\npackage shop.v1;\nmessage OrderCreated { string canary = 1; uint64 seq = 2; }\n",
    );
    let config = support::Conf::new()
        .probe(format!(
            r#"{{name: pb, interval: 10ms, deadline: 1s,
                payload: {{format: protobuf, schema_file: "{}", message: shop.v1.OrderCreated,
                  template: {{canary: "{{{{token}}}}", seq: "{{{{seq}}}}"}}}},
                inject: {{http: {{url: "{url}"}}}}, catch: {{http: {{}}}}}}"#,
            proto.display()
        ))
        .build();
    let mut rt = start_counted(&config, 3).await;
    rt.injection_done().await;
    let c = support::probe(&rt, "pb").counts();
    assert_eq!(c.publish_failed, 0, "{c:?}");
    rt.shutdown().await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    for (ct, body) in seen.iter() {
        assert_eq!(ct, "application/x-protobuf");
        let token = chirp::canary::scan(body).expect("the token in the message");
        assert!(Signer::new(KEY.as_bytes()).decode(token).is_ok());
    }
}
