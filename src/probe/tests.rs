use super::*;
use crate::transport::{Confirm, PublishError};
use std::collections::HashMap;
use tokio::sync::watch;

/// An injector whose partitions the test decides, recording what it sends.
struct FakeInject {
    lanes: watch::Sender<Vec<i32>>,
    sent: Mutex<Vec<(Option<i32>, String)>>,
}

#[async_trait::async_trait]
impl Inject for FakeInject {
    async fn send(&self, msg: Outgoing) -> Result<Confirm, PublishError> {
        self.sent.lock().unwrap().push((msg.partition, msg.token));
        Ok(Box::pin(async { Ok(Ack::Confirmed) }))
    }
    fn is_up(&self) -> bool {
        true
    }
    fn lanes(&self) -> Option<watch::Receiver<Vec<i32>>> {
        Some(self.lanes.subscribe())
    }
}

struct Listening;

#[async_trait::async_trait]
impl CatchHandle for Listening {
    fn is_up(&self) -> bool {
        true
    }
    async fn ready(&self, _stop: &CancellationToken) -> bool {
        true
    }
}

fn config() -> ProbeConfig {
    let text = "signing_key: a-long-enough-signing-key\nprobes:\n  - {name: p, interval: 100ms, deadline: 1s, inject: {http: {url: /x}}, catch: {http: {}}}\n";
    crate::config::load_str(text, &HashMap::<String, String>::new())
        .unwrap()
        .probes
        .remove(0)
}

/// Per-partition mode with no partition known at start: the partitions
/// that appear while the loop waits for them get lanes and canaries.
#[tokio::test(start_paused = true)]
async fn partitions_found_while_waiting_for_them_get_lanes() {
    let inject = Arc::new(FakeInject {
        lanes: watch::Sender::new(Vec::new()),
        sent: Mutex::new(Vec::new()),
    });
    let probe = Arc::new(Probe::new(
        config(),
        7,
        Signer::new(b"a-long-enough-signing-key"),
        Some(&[]),
        Vec::new(),
        TaskTracker::new(),
    ));
    probe.attach(Arc::clone(&inject) as Arc<dyn Inject>, Arc::new(Listening));
    let (stop, abort) = (CancellationToken::new(), CancellationToken::new());
    let run = tokio::spawn(Arc::clone(&probe).inject_loop(
        stop.clone(),
        abort,
        Duration::ZERO,
        Some(3),
        None,
    ));
    probe.ready().await;
    // The loop is now waiting for partitions.
    tokio::time::sleep(Duration::from_millis(50)).await;
    inject.lanes.send_replace(vec![0, 1]);
    let ended = tokio::time::timeout(Duration::from_secs(60), run).await;
    assert!(
        ended.is_ok(),
        "the loop never sent to the partitions that appeared"
    );
    let lanes: Vec<(u32, u64)> = probe
        .lanes()
        .iter()
        .map(|l| (l.id.id, l.ledger().counts().sent))
        .collect();
    assert_eq!(lanes, [(0, 3), (1, 3)]);
    let sent = inject.sent.lock().unwrap();
    assert_eq!(sent.iter().filter(|(p, _)| *p == Some(1)).count(), 3);
}
