//! Payload templates as users meet them: `validate` renders one canary per
//! probe and names the field that does not fit its schema (exit 2), and a
//! JSON template runs through `check` with the token found where the
//! template puts it.

use crate::support::{config_file, exits, TempDir, CHIRP};
use std::process::Command;

const AVSC: &str = r#"{"type": "record", "name": "OrderCreated", "namespace": "shop.v1", "fields": [
  {"name": "canary", "type": "string"},
  {"name": "seq", "type": "long"},
  {"name": "customer", "type": {"type": "record", "name": "Customer", "fields": [{"name": "id", "type": "long"}]}}
]}"#;

const PROTO: &str = "syntax = \"proto3\";\npackage shop.v1;\nmessage OrderCreated { string canary = 1; uint64 seq = 2; int32 quantity = 3; }\n";

fn validate(text: &str) -> (Option<i32>, String) {
    let cfg = config_file(text);
    let out = Command::new(&*CHIRP)
        .args(["validate", "-c"])
        .arg(&cfg.path)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn probe(payload: &str) -> String {
    format!("signing_key: 0123456789abcdef0123456789abcdef\nprobes:\n  - name: orders\n    inject: {{http: {{url: /hooks/orders}}}}\n    catch: {{http: {{}}}}\n    payload:\n{payload}")
}

#[test]
fn validate_names_the_field_a_template_gets_wrong_and_exits_2() {
    let dir = TempDir::new("templates");
    let avsc = dir.write("order.avsc", AVSC);
    let proto = dir.write("order.proto", PROTO);
    let avro = |customer_id: &str| {
        probe(&format!(
            "      format: avro\n      schema_file: {}\n      schema_id: 7\n      template:\n        canary: \"{{{{token}}}}\"\n        seq: \"{{{{seq}}}}\"\n        customer: {{id: {customer_id}}}\n",
            avsc.display()
        ))
    };
    let (code, said) = validate(&avro("7"));
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = validate(&avro("seven"));
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("probes[0].payload.template: field `customer.id`: expected a long, got the string \"seven\" (line 10"),
        "{said}"
    );

    let protobuf = |quantity: &str| {
        probe(&format!(
            "      format: protobuf\n      schema_file: {}\n      message: shop.v1.OrderCreated\n      template: {{canary: \"{{{{token}}}}\", seq: \"{{{{seq}}}}\", quantity: {quantity}}}\n",
            proto.display()
        ))
    };
    let (code, said) = validate(&protobuf("3"));
    assert_eq!(code, Some(0), "{said}");
    let (code, said) = validate(&protobuf("three"));
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("probes[0].payload.template: field `quantity`:"),
        "{said}"
    );

    // A JSON template in a file, with a placeholder that does not exist.
    let file = dir.write(
        "order.json",
        r#"{"meta": {"canary": "{{token}}", "when": "{{sent}}"}}"#,
    );
    let (code, said) = validate(&probe(&format!(
        "      template_file: {}\n",
        file.display()
    )));
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("probes[0].payload.template_file: at `meta.when`: unknown placeholder `{{sent}}` (known: token, probe, lane, seq, sent_at, epoch_ms, epoch_us, uuid, padding)"),
        "{said}"
    );
}

#[test]
fn a_json_template_runs_through_check_with_its_token_pointer() {
    let cfg = config_file(&probe(
        "      size: 400\n      token_pointer: /meta/canary\n      template:\n        order_id: \"{{uuid}}\"\n        amount: 12.5\n        paid: true\n        meta: {canary: \"{{token}}\", at: \"{{sent_at}}\", seq: \"{{seq}}\", pad: \"{{padding}}\"}\n",
    ).replace("  - name: orders\n", "  - name: orders\n    interval: 5ms\n"));
    let out = exits(
        Command::new(&*CHIRP)
            .args(["check", "--count", "50", "-c"])
            .arg(&cfg.path),
        0,
    );
    let said = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = said
        .lines()
        .find(|l| l.starts_with("orders "))
        .unwrap_or_else(|| panic!("{said}"))
        .split_whitespace()
        .collect();
    assert_eq!(&row[1..5], ["50", "50", "0", "0"], "{said}");
}

/// A registry that answers every request with `status` and `body`.
fn fake_registry(status: &'static str, body: String) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn check_says_what_the_schema_registry_did_wrong() {
    const PASSWORD: &str = "Hunter2-registry-xyzzy";
    let conf = |port: u16| {
        probe(&format!(
            "      format: avro\n      schema_registry: {{url: \"http://127.0.0.1:{port}\", subject: orders-value, username: key, password: {PASSWORD}}}\n      template: {{canary: \"{{{{token}}}}\", seq: \"{{{{seq}}}}\", customer: {{id: seven}}}}\n"
        ))
        .replace("  - name: orders\n", "  - name: orders\n    interval: 5ms\n")
    };
    let run = |text: &str| {
        let cfg = config_file(text);
        let out = Command::new(&*CHIRP)
            .args(["check", "--count", "5", "-c"])
            .arg(&cfg.path)
            .output()
            .unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!said.contains(PASSWORD), "{said}");
        (out.status.code(), said)
    };
    // Offline, the template itself is fine: there is no schema to hold it to.
    let (code, said) = validate(&conf(1));
    assert_eq!(code, Some(0), "{said}");
    // No registry there: unreachable.
    let (code, said) = run(&conf(crate::support::free_port()));
    assert_eq!(code, Some(3), "{said}");
    assert!(said.contains("probe `orders`: payload.schema_registry: cannot reach the schema registry at http://127.0.0.1:"), "{said}");
    // It refuses the credentials.
    let (code, said) = run(&conf(fake_registry("401 Unauthorized", String::new())));
    assert_eq!(code, Some(3), "{said}");
    assert!(
        said.contains("answered 401 Unauthorized for http://127.0.0.1:"),
        "{said}"
    );
    assert!(
        said.contains("/subjects/orders-value/versions/latest"),
        "{said}"
    );
    // Its schema does not fit the template: the field is named.
    let body =
        serde_json::json!({"subject": "orders-value", "version": 1, "id": 5, "schema": AVSC})
            .to_string();
    let (code, said) = run(&conf(fake_registry("200 OK", body)));
    assert_eq!(code, Some(2), "{said}");
    assert!(
        said.contains("probe `orders`: payload.template: field `customer.id`: expected a long, got the string \"seven\""),
        "{said}"
    );
}
