use super::*;

fn limits() -> Limits {
    Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(60),
        max_body: 1024,
    }
}

#[tokio::test(start_paused = true)]
async fn each_phase_has_its_deadline() {
    let l = limits();
    let c = Conn::new(Instant::now());
    let t0 = Instant::now();
    assert_eq!(c.check(t0, &l), Ok(t0 + l.header_timeout));
    assert_eq!(
        c.check(t0 + l.header_timeout, &l),
        Err(Some(Rejection::HeaderTimeout))
    );
    c.enter(Phase::Busy);
    assert!(c.check(t0 + Duration::from_secs(3600), &l).is_ok());
    tokio::time::advance(Duration::from_secs(1)).await;
    c.enter(Phase::Idle);
    let idle_at = Instant::now();
    assert_eq!(c.check(idle_at, &l), Ok(idle_at + l.idle_timeout));
    assert_eq!(c.check(idle_at + l.idle_timeout, &l), Err(None));
    // A byte of the next request: the header clock starts.
    tokio::time::advance(Duration::from_secs(30)).await;
    c.read_some();
    let head_at = Instant::now();
    assert_eq!(c.phase(), Phase::Head);
    assert_eq!(c.check(head_at, &l), Ok(head_at + l.header_timeout));
}

#[tokio::test(start_paused = true)]
async fn idle_connections_live_while_bytes_move() {
    let l = limits();
    let c = Conn::new(Instant::now());
    c.enter(Phase::Idle);
    tokio::time::advance(Duration::from_secs(50)).await;
    c.moved(); // a slow reader takes a response
    let now = Instant::now();
    assert_eq!(c.check(now, &l), Ok(now + l.idle_timeout));
}

fn shared(max: usize) -> Shared {
    Shared {
        limits: Limits {
            max_connections: max,
            ..limits()
        },
        auth: None,
        tls: None,
        router: Router::new(),
        hooks: Arc::default(),
        stats: Arc::default(),
        quiet: Quiet::default(),
        open: Mutex::new(BTreeMap::new()),
    }
}

#[tokio::test(start_paused = true)]
async fn room_is_made_from_the_longest_pending_request_then_the_longest_idle() {
    let s = shared(4);
    let tick = || tokio::time::advance(Duration::from_secs(1));
    // An old connection (a webhook source kept alive) that has just
    // started its next request, and a newer one that has sat on an
    // unfinished head since it connected: the newer one goes.
    let old = Arc::new(Conn::new(Instant::now()));
    s.admit(0, Arc::clone(&old));
    tick().await;
    let slow = Arc::new(Conn::new(Instant::now()));
    s.admit(1, Arc::clone(&slow));
    tick().await;
    old.enter(Phase::Idle);
    old.read_some();
    // Two idle ones: the one that moved bytes last stays.
    let scraper = Arc::new(Conn::new(Instant::now()));
    let quiet = Arc::new(Conn::new(Instant::now()));
    s.admit(2, Arc::clone(&scraper));
    s.admit(3, Arc::clone(&quiet));
    scraper.enter(Phase::Idle);
    quiet.enter(Phase::Idle);
    tick().await;
    scraper.moved();
    assert_eq!(s.make_room(), Room::Evicted);
    assert!(slow.evict.is_cancelled());
    assert!(!old.evict.is_cancelled());
    s.admit(4, Arc::new(Conn::new(Instant::now())));
    s.open.lock().unwrap().get(&4).unwrap().enter(Phase::Busy);
    old.enter(Phase::Busy);
    // No request pending: the idle one that moved nothing longest goes.
    assert_eq!(s.make_room(), Room::Evicted);
    assert!(quiet.evict.is_cancelled());
    assert!(!scraper.evict.is_cancelled());
    s.admit(5, Arc::new(Conn::new(Instant::now())));
    s.open.lock().unwrap().get(&5).unwrap().enter(Phase::Busy);
    scraper.enter(Phase::Busy);
    // Every connection is being answered: the newcomer is refused.
    assert_eq!(s.make_room(), Room::Full);
    assert_eq!(s.stats.open(), 4);
    s.leave(5);
    assert_eq!(s.make_room(), Room::Free);
}
