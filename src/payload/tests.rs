use super::*;
use serde_json::json;

const TOKEN: &str =
    "chirp1.orders.00000000000000ff.0.42.1800000000123456.0123456789abcdef0123456789abcdef";

fn values() -> Values<'static> {
    Values {
        token: TOKEN,
        probe: "orders",
        lane: 0,
        seq: 42,
        sent_unix_us: 1_800_000_000_123_456,
    }
}

fn inline(v: Json) -> TemplateConfig {
    TemplateConfig {
        source: Source::Inline(v),
        format: Format::Json,
        schema_file: None,
        message: None,
        schema_id: None,
        registry: None,
    }
}

fn dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "chirp-payload-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn json_templates_fill_typed_slots_and_interpolate() {
    let t = Template::compile(
        &inline(json!({
            "id": "{{uuid}}",
            "meta": {"canary": "{{token}}", "at": "{{sent_at}}", "ms": "{{epoch_ms}}", "us": "{{ epoch_us }}"},
            "ref": "order-{{seq}}/{{probe}}",
            "seq": "{{seq}}",
            "tags": ["fixed", "{{lane}}"],
            "n": 1.5
        })),
        0,
    )
    .unwrap();
    let body: Json = serde_json::from_slice(&t.render(&values()).unwrap()).unwrap();
    assert_eq!(body["meta"]["canary"], TOKEN);
    assert_eq!(body["meta"]["at"], "2027-01-15T08:00:00.123456Z");
    assert_eq!(body["meta"]["ms"], 1_800_000_000_123u64);
    assert_eq!(body["meta"]["us"], 1_800_000_000_123_456u64);
    assert_eq!(body["ref"], "order-42/orders");
    assert_eq!(body["seq"], 42);
    assert_eq!(body["tags"], json!(["fixed", 0]));
    assert_eq!(body["n"], 1.5);
    assert!(uuid::Uuid::parse_str(body["id"].as_str().unwrap()).is_ok());
    // A canary found the way the catch side finds it.
    assert_eq!(
        crate::canary::scan(&t.render(&values()).unwrap()),
        Some(TOKEN)
    );
}

#[test]
fn padding_brings_a_json_body_to_its_size() {
    let t = Template::compile(
        &inline(json!({"c": "{{token}}", "pad": "{{padding}}"})),
        700,
    )
    .unwrap();
    assert_eq!(t.render(&values()).unwrap().len(), 700);
    // Already longer than the size: nothing added.
    let t =
        Template::compile(&inline(json!({"c": "{{token}}", "pad": "{{padding}}"})), 10).unwrap();
    assert!(t.render(&values()).unwrap().len() < 150);
}

#[test]
fn template_mistakes_are_named() {
    let e = Template::compile(
        &inline(json!({"a": {"b": ["x", "{{tokn}}"]}, "c": "{{token}}"})),
        0,
    )
    .unwrap_err();
    assert_eq!(e.key, "template");
    assert!(
        e.message
            .starts_with("at `a.b[1]`: unknown placeholder `{{tokn}}` (known: token, probe,"),
        "{}",
        e.message
    );
    let e = Template::compile(&inline(json!({"a": "{{seq}}"})), 0).unwrap_err();
    assert!(e.message.contains("no \"{{token}}\""), "{}", e.message);
    let e = Template::compile(&inline(json!({"a": "{{token}}"})), 300).unwrap_err();
    assert_eq!(e.key, "size");
    let mut c = inline(json!({"a": "{{token}}"}));
    c.format = Format::Avro;
    assert_eq!(Template::compile(&c, 0).unwrap_err().key, "schema_file");
    let mut c = inline(json!({"a": "{{token}}"}));
    c.schema_id = Some(3);
    assert_eq!(Template::compile(&c, 0).unwrap_err().key, "schema_id");
    let e = Template::compile(
        &TemplateConfig {
            source: Source::File("/nonexistent/t.json".into()),
            ..inline(Json::Null)
        },
        0,
    )
    .unwrap_err();
    assert_eq!(e.key, "template_file");
    assert!(
        e.message.contains("cannot read `/nonexistent/t.json`"),
        "{}",
        e.message
    );
}

const ORDER_AVSC: &str = r#"{
  "type": "record", "name": "OrderCreated", "namespace": "shop.v1",
  "fields": [
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "canary", "type": "string"},
    {"name": "seq", "type": "long"},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
    {"name": "note", "type": ["null", "string"], "default": null},
    {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [
      {"name": "id", "type": "long"},
      {"name": "tier", "type": "string", "default": "basic"}
    ]}},
    {"name": "previous", "type": ["null", "Customer"], "default": null},
    {"name": "lines", "type": {"type": "array", "items": {"type": "map", "values": "int"}}}
  ]
}"#;

fn avro(template: Json, schema_id: Option<u32>) -> Result<Arc<Template>, Problem> {
    let d = dir();
    let schema = d.join("order.avsc");
    std::fs::write(&schema, ORDER_AVSC).unwrap();
    Template::compile(
        &TemplateConfig {
            format: Format::Avro,
            schema_file: Some(schema.display().to_string()),
            schema_id,
            ..inline(template)
        },
        0,
    )
}

fn order() -> Json {
    json!({
        "id": "{{uuid}}", "canary": "{{token}}", "seq": "{{seq}}", "at": "{{sent_at}}",
        "status": "NEW", "customer": {"id": 7}, "previous": {"Customer": {"id": 6, "tier": "gold"}},
        "lines": [{"sku-1": 2}]
    })
}

#[test]
fn avro_records_follow_the_schema_and_decode_back() {
    use apache_avro::types::Value as A;
    let t = avro(order(), Some(1234)).unwrap();
    let bytes = t.render(&values()).unwrap();
    assert_eq!(
        &bytes[..5],
        &[0, 0, 0, 0x04, 0xd2],
        "Confluent framing with id 1234"
    );
    assert_eq!(
        crate::canary::scan(&bytes),
        Some(TOKEN),
        "the token is findable in the datum"
    );
    let Encoder::Avro(enc) = &t.encoder else {
        panic!()
    };
    let (id, value) = avro::decode(enc, &bytes).unwrap();
    assert_eq!(id, Some(1234));
    let A::Record(fields) = value else {
        panic!("{value:?}")
    };
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(get("canary"), A::String(TOKEN.into()));
    assert_eq!(get("seq"), A::Long(42));
    assert_eq!(get("at"), A::TimestampMillis(1_800_000_000_123));
    assert_eq!(get("status"), A::Enum(0, "NEW".into()));
    assert_eq!(get("note"), A::Union(0, Box::new(A::Null)), "the default");
    assert_eq!(
        get("customer"),
        A::Record(vec![
            ("id".into(), A::Long(7)),
            ("tier".into(), A::String("basic".into()))
        ])
    );
    assert!(matches!(get("previous"), A::Union(1, _)));
    // Without an id: the bare datum.
    let bare = avro(order(), None).unwrap().render(&values()).unwrap();
    assert_eq!(bare.len() + 5, bytes.len());
}

#[test]
fn avro_mismatches_name_the_field() {
    let mut bad = order();
    bad["customer"]["id"] = json!("seven");
    let e = avro(bad, None).unwrap_err();
    assert_eq!(e.key, "template");
    assert_eq!(
        e.message,
        "field `customer.id`: expected a long, got the string \"seven\""
    );

    let mut bad = order();
    bad["lines"][0]["sku-1"] = json!(1.5);
    assert_eq!(
        avro(bad, None).unwrap_err().message,
        "field `lines[0].sku-1`: expected an int, got the number 1.5"
    );
    let mut bad = order();
    bad["status"] = json!("SHIPPED");
    assert_eq!(
        avro(bad, None).unwrap_err().message,
        "field `status`: expected one of the symbols NEW, PAID, got the string \"SHIPPED\""
    );
    let mut bad = order();
    bad["colour"] = json!("red");
    assert!(avro(bad, None)
        .unwrap_err()
        .message
        .starts_with("field `colour`: record `OrderCreated` has no such field"));
    let mut bad = order();
    bad.as_object_mut().unwrap().remove("seq");
    assert_eq!(
        avro(bad, None).unwrap_err().message,
        "field `seq`: missing, and the schema gives it no default"
    );
    let mut bad = order();
    bad["previous"] = json!({"id": "x"});
    assert_eq!(
        avro(bad, None).unwrap_err().message,
        "field `previous.id`: expected a long, got the string \"x\""
    );
}

const ORDER_PROTO: &str = r#"syntax = "proto3";
package shop.v1;
import "google/protobuf/timestamp.proto";
message Customer { int64 id = 1; string tier = 2; }
message OrderCreated {
  string canary = 1;
  uint64 seq = 2;
  google.protobuf.Timestamp at = 3;
  Customer customer = 4;
  repeated string tags = 5;
}
"#;

fn proto(template: Json, message: &str) -> Result<Arc<Template>, Problem> {
    let d = dir();
    let file = d.join("order.proto");
    std::fs::write(&file, ORDER_PROTO).unwrap();
    Template::compile(
        &TemplateConfig {
            format: Format::Protobuf,
            schema_file: Some(file.display().to_string()),
            message: Some(message.into()),
            ..inline(template)
        },
        0,
    )
}

#[test]
fn protobuf_messages_compile_from_a_proto_file_and_decode_back() {
    let doc = json!({"canary": "{{token}}", "seq": "{{seq}}", "at": "{{sent_at}}", "customer": {"id": 7}, "tags": ["a"]});
    let t = proto(doc.clone(), "shop.v1.OrderCreated").unwrap();
    let bytes = t.render(&values()).unwrap();
    assert_eq!(crate::canary::scan(&bytes), Some(TOKEN));
    let Encoder::Protobuf(enc) = &t.encoder else {
        panic!()
    };
    let m = enc.decode(&bytes).unwrap();
    assert_eq!(m.get_field_by_name("canary").unwrap().as_str(), Some(TOKEN));
    assert_eq!(m.get_field_by_name("seq").unwrap().as_u64(), Some(42));
    let at = m.get_field_by_name("at").unwrap();
    let at = at.as_message().unwrap();
    assert_eq!(
        at.get_field_by_name("seconds").unwrap().as_i64(),
        Some(1_800_000_000)
    );

    let mut bad = doc.clone();
    bad["customer"]["id"] = json!("seven");
    let e = proto(bad, "shop.v1.OrderCreated").unwrap_err();
    assert!(
        e.message.starts_with("field `customer.id`:"),
        "{}",
        e.message
    );
    let mut bad = doc;
    bad["colour"] = json!("red");
    let e = proto(bad, "shop.v1.OrderCreated").unwrap_err();
    assert!(e.message.contains("colour"), "{}", e.message);
    let e = proto(json!({"canary": "{{token}}"}), "shop.v1.Nope").unwrap_err();
    assert_eq!(e.key, "message");
    assert!(e.message.contains("shop.v1.OrderCreated"), "{}", e.message);
}

#[test]
fn a_registry_template_waits_for_its_schema_and_then_fits_it() {
    let reg = Registry {
        url: crate::config::secret::Endpoint::new("http://registry:8081"),
        subject: "orders-value".into(),
        username: None,
        password: None,
    };
    let pending = Template::compile(
        &TemplateConfig {
            format: Format::Avro,
            registry: Some(reg.clone()),
            ..inline(order())
        },
        0,
    )
    .unwrap();
    assert_eq!(pending.registry(), Some(&reg));
    assert!(pending.render(&values()).is_err(), "no schema yet");
    let t = pending.with_registry_schema(ORDER_AVSC, 77).unwrap();
    let bytes = t.render(&values()).unwrap();
    assert_eq!(&bytes[..5], &[0, 0, 0, 0, 77]);
    // Equal to its form before the lookup: a reload keeps the probe.
    assert_eq!(*t, *pending);
    let mut bad = order();
    bad["seq"] = json!("x");
    let pending = Template::compile(
        &TemplateConfig {
            format: Format::Avro,
            registry: Some(reg),
            ..inline(bad)
        },
        0,
    )
    .unwrap();
    let e = pending.with_registry_schema(ORDER_AVSC, 77).unwrap_err();
    assert_eq!(
        e.message,
        "field `seq`: expected a long, got the string \"x\""
    );
}

#[test]
fn protobuf_messages_also_come_from_a_descriptor_set() {
    use prost::Message;
    let d = dir();
    std::fs::write(d.join("order.proto"), ORDER_PROTO).unwrap();
    // What `protoc --include_imports --descriptor_set_out` writes.
    let set = protox::compile(["order.proto"], [&d]).unwrap();
    let desc = d.join("order.desc");
    std::fs::write(&desc, set.encode_to_vec()).unwrap();
    let config = |message: &str| TemplateConfig {
        format: Format::Protobuf,
        schema_file: Some(desc.display().to_string()),
        message: Some(message.into()),
        ..inline(json!({"canary": "{{token}}", "seq": "{{seq}}", "customer": {"id": 7}}))
    };
    let t = Template::compile(&config("shop.v1.OrderCreated"), 0).unwrap();
    let Encoder::Protobuf(enc) = &t.encoder else {
        panic!()
    };
    let m = enc.decode(&t.render(&values()).unwrap()).unwrap();
    assert_eq!(m.get_field_by_name("canary").unwrap().as_str(), Some(TOKEN));
    // Not a descriptor set at all.
    std::fs::write(&desc, b"not protobuf").unwrap();
    let e = Template::compile(&config("shop.v1.OrderCreated"), 0).unwrap_err();
    assert_eq!(e.key, "schema_file");
    assert!(
        e.message
            .contains("neither a .proto file nor a descriptor set"),
        "{}",
        e.message
    );
}
