//! Benchmark: what rendering a canary from a payload template costs, per
//! format, beside the default body. Run with `cargo bench --bench
//! payload_render`. Figures only: nothing here asserts a speed.

use chirp::payload::{Format, Source, Template, TemplateConfig, Values};
use std::time::Instant;

const AVSC: &str = r#"{"type": "record", "name": "OrderCreated", "namespace": "shop.v1", "fields": [
  {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}},
  {"name": "canary", "type": "string"},
  {"name": "seq", "type": "long"},
  {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
  {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
  {"name": "note", "type": ["null", "string"], "default": null},
  {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
    {"name": "id", "type": "long"}, {"name": "tier", "type": "string", "default": "basic"}]}}
]}"#;

const PROTO: &str = "syntax = \"proto3\";\npackage shop.v1;\nimport \"google/protobuf/timestamp.proto\";\nmessage Customer { int64 id = 1; string tier = 2; }\nmessage OrderCreated { string event_id = 1; string canary = 2; uint64 seq = 3; google.protobuf.Timestamp created_at = 4; string status = 5; Customer customer = 6; }\n";

fn main() {
    let dir = std::env::temp_dir().join(format!("chirp-bench-payload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("o.avsc"), AVSC).expect("avsc");
    std::fs::write(dir.join("o.proto"), PROTO).expect("proto");
    let doc = serde_json::json!({
        "event_id": "{{uuid}}", "canary": "{{token}}", "seq": "{{seq}}", "created_at": "{{sent_at}}",
        "status": "NEW", "customer": {"id": 7}
    });
    let config = |format, schema: Option<&str>, message: Option<&str>| TemplateConfig {
        source: Source::Inline(doc.clone()),
        format,
        schema_file: schema.map(|s| dir.join(s).display().to_string()),
        message: message.map(str::to_owned),
        schema_id: (format == Format::Avro).then_some(42),
        registry: None,
    };
    let templates = [
        ("json", config(Format::Json, None, None)),
        (
            "avro (Confluent framing)",
            config(Format::Avro, Some("o.avsc"), None),
        ),
        (
            "protobuf",
            config(
                Format::Protobuf,
                Some("o.proto"),
                Some("shop.v1.OrderCreated"),
            ),
        ),
    ];
    let token =
        "chirp1.orders.00000000000000ff.0.42.1800000000123456.0123456789abcdef0123456789abcdef";
    const N: u64 = 100_000;
    let time = |name: &str, f: &mut dyn FnMut(u64) -> usize| {
        let start = Instant::now();
        let mut bytes = 0;
        for seq in 0..N {
            bytes += f(seq);
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / N as f64;
        println!(
            "{name:<26} {per:>6.2} µs per canary ({} bytes)",
            bytes as u64 / N
        );
    };
    let fields = chirp::canary::Token {
        probe: "orders".into(),
        run_id: 255,
        lane: 0,
        seq: 42,
        sent_unix_us: 1_800_000_000_123_456,
    };
    time("default body", &mut |_| {
        chirp::canary::body(token, &fields, 0).len()
    });
    for (name, c) in templates {
        let t = Template::compile(&c, 0).expect("template");
        time(name, &mut |seq| {
            t.render(&Values {
                token,
                probe: "orders",
                lane: 0,
                seq,
                sent_unix_us: 1_800_000_000_123_456 + seq,
            })
            .expect("render")
            .len()
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
}
