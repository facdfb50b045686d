//! Inject and catch on different systems: NATS in, webhook out (a relay
//! POSTs what it reads from NATS to chirp's `/hooks/{probe}`, signed), and
//! HTTP in, NATS out (a test endpoint republishes what it is POSTed on NATS).

mod common;

use axum::body::Bytes;
use axum::http::HeaderMap;
use chirp::canary::{Signer, HEADER};
use common::{config_with, NatsServer, KEY};
use futures::StreamExt;
use std::time::Duration;

const COUNT: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_in_webhook_out_and_http_in_nats_out() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.expect("connect");

    // HTTP endpoint that republishes every POST body (with its token header) on `fromhttp.out`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/ingest", listener.local_addr().unwrap());
    let publisher = client.clone();
    let app = axum::Router::new().route(
        "/ingest",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let publisher = publisher.clone();
            async move {
                let mut h = async_nats::HeaderMap::new();
                if let Some(t) = headers.get(HEADER).and_then(|v| v.to_str().ok()) {
                    h.insert(HEADER, t);
                }
                publisher
                    .publish_with_headers("fromhttp.out", h, body)
                    .await
                    .expect("republish");
                "accepted"
            }
        }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = config_with(
        &nats.url(),
        &format!(
            "  - name: tohook\n    interval: 20ms\n    deadline: 3s\n    inject: {{nats: {{connection: main, subject: tohook.in}}}}\n    catch: {{http: {{}}}}\n\
             \x20 - name: fromhttp\n    interval: 20ms\n    deadline: 3s\n    inject: {{http: {{url: \"{endpoint}\"}}}}\n    catch: {{nats: {{connection: main, subject: fromhttp.out}}}}\n"
        ),
    );

    // Relay NATS → webhook; it learns chirp's address once chirp has started.
    let mut sub = client.subscribe("tohook.in").await.unwrap();
    client.flush().await.unwrap();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel::<std::net::SocketAddr>();
    let relay = tokio::spawn(async move {
        let addr = addr_rx.await.expect("chirp address");
        let http = reqwest::Client::new();
        let signer = Signer::new(KEY.as_bytes());
        while let Some(msg) = sub.next().await {
            let resp = http
                .post(format!("http://{addr}/hooks/tohook"))
                .header("X-Chirp-Signature", signer.signature(&msg.payload))
                .body(msg.payload.to_vec())
                .send()
                .await
                .expect("post to chirp");
            assert_eq!(resp.status(), 200);
        }
    });

    let mut rt = common::start_counted(&config, COUNT).await;
    addr_tx.send(rt.addr).unwrap();
    rt.injection_done().await;
    assert_eq!(rt.drain(Duration::from_secs(5)).await, 0);
    for p in &rt.probes {
        let c = p.counts();
        assert_eq!(
            (c.sent, c.delivered, c.lost, c.publish_failed),
            (COUNT, COUNT, 0, 0),
            "{}: {c:?}",
            p.name()
        );
        assert_eq!(
            (c.duplicate, c.rejected, c.unrelated, c.foreign),
            (0, 0, 0, 0),
            "{}: {c:?}",
            p.name()
        );
    }
    // The HTTP inject's publish latency is the endpoint's response time.
    let snap = rt.probes[1].snapshot(tokio::time::Instant::now());
    assert_eq!(snap.publish_latency.cumulative.count, COUNT);
    rt.shutdown().await;
    relay.abort();
    server.abort();
}
