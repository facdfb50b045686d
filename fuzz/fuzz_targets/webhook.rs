//! chirp's listener as a webhook sender (or anyone) reaches it: raw bytes
//! on one connection, through HTTP parsing, the body limits, routing, the
//! signature check and the catch. Half the inputs are raw; the other half
//! are bodies the harness posts to `/hooks/fuzz` correctly signed, so the
//! fuzzer reaches the token finder and the ledger. Never a panic, and the
//! probe's counts stay consistent.
#![no_main]

use chirp::canary::Signer;
use chirp::config::listen::Limits;
use chirp::export::catalogue::{Live, Running, Sources};
use chirp::history::History;
use chirp::export::listener::ListenerStats;
use chirp::probe::Probe;
use chirp::report::Watched;
use chirp::server::{self, AppState};
use chirp::transport::{self, CatchConfig, CatchSink, Context};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const KEY: &str = "fuzz-signing-key-0123456789";

struct Harness {
    rt: tokio::runtime::Runtime,
    probe: Arc<Probe>,
    router: axum::Router,
    hooks: Arc<transport::http::Hooks>,
    signer: Signer,
}

static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = format!(
        "signing_key: {KEY}\nprobes:\n  - {{name: fuzz, interval: 1s, inject: {{http: {{url: /hooks/fuzz}}}}, catch: {{http: {{}}}}, payload: {{token_pointer: /t}}}}\n"
    );
    let config = chirp::config::load_str(&text, &HashMap::new()).unwrap();
    let pc = config.probes[0].clone();
    let signer = Signer::new(KEY.as_bytes());
    let tasks = TaskTracker::new();
    let probe = Arc::new(Probe::new(pc.clone(), 7, signer.clone(), None, Vec::new()));
    let ctx = Context {
        run_id: 7,
        signer: signer.clone(),
        listener: None,
        own_certificate: None,
        fail_fast: false,
        stop: CancellationToken::new(),
        tasks,
        hooks: Arc::default(),
    };
    let CatchConfig::Http(catch) = &pc.catch else {
        unreachable!("the probe catches webhooks")
    };
    let sink: Arc<dyn CatchSink> = Arc::clone(&probe) as Arc<dyn CatchSink>;
    // The receiver watches its stop token on a task of its own.
    let _ = {
        let _in = rt.enter();
        transport::http::catch::start(catch, sink, &ctx)
    };
    let sources = Sources {
        live: Live::new(Running {
            probes: vec![Watched {
                probe: Arc::clone(&probe),
                slo: None,
                history: Arc::new(History::new()),
            }],
            links: Vec::new(),
        }),
        ..Sources::default()
    };
    let state = AppState::new("fuzz".into(), true, sources, None);
    let router = server::router(state, transport::http::router(Arc::clone(&ctx.hooks)));
    Harness {
        rt,
        probe,
        router,
        hooks: ctx.hooks,
        signer,
    }
});

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    let input = match data.split_first() {
        Some((mode, body)) if mode % 2 == 1 => {
            let mut req = format!(
                "POST /hooks/fuzz HTTP/1.1\r\nHost: f\r\nContent-Length: {}\r\nX-Chirp-Signature: {}\r\n\r\n",
                body.len(),
                h.signer.signature(body)
            )
            .into_bytes();
            req.extend_from_slice(body);
            req
        }
        _ => data.to_vec(),
    };
    let limits = Limits {
        max_body: 4096,
        ..Limits::default()
    };
    h.rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let serve = server::listener::serve_stream(
            server,
            h.router.clone(),
            Arc::clone(&h.hooks),
            limits,
            Arc::new(ListenerStats::default()),
        );
        let talk = async move {
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
            let mut out = Vec::new();
            let _ = client.read_to_end(&mut out).await;
        };
        let bounded = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(serve, talk)
        });
        assert!(bounded.await.is_ok(), "a connection did not end after its input");
    });
    let c = h.probe.counts();
    assert_eq!(c.sent, c.delivered + c.lost + c.publish_failed + c.in_flight, "{c:?}");
    assert_eq!(c.delivered, 0, "nothing was sent, nothing can be delivered: {c:?}");
});
