//! Fault tests: a backing service goes away while requests are in flight (a proxy between
//! moat and the service is cut: open connections reset, new ones refused; the machine's shared
//! instance is never touched). Whatever is answered is 200 or 503 with a stable code — never a
//! 500 or a hang —, everything acknowledged is on the record, and service resumes by itself.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use moat_testkit::fault::{CutProxy, upstream_of};
use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{PASSWORD, SUPER_ADMIN, TestServer};

/// One request's fate: the phase it was sent in (0 before the cut, 1 cut, 2 restored).
#[derive(Debug)]
struct Fate {
    phase: usize,
    query: bool,
    status: u16,
    code: String,
    request_id: String,
}

async fn ready(s: &TestServer, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if s.send(Method::GET, "/readyz", None, None, None).await.status == StatusCode::OK {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// PostgreSQL (the metadata and audit store) cut while 4 clients query and read: every answer
/// is 200 or 503 (`store_unavailable` / `audit_unavailable`), every acknowledged query has its
/// audit record, and after the store is back the server is ready again and the trail verifies.
/// Runs in the PostgreSQL pass (`MOAT_TEST_STORE=postgres`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_cut_mid_request_answers_503_and_loses_nothing_acknowledged() {
    if std::env::var("MOAT_TEST_STORE").as_deref() != Ok("postgres") {
        eprintln!("runs in the PostgreSQL pass (MOAT_TEST_STORE=postgres): skipped");
        return;
    }
    let base = moat_store::pg_testing::TestDb::base_from_env().expect("MOAT_TEST_PG");
    let proxy = Arc::new(CutProxy::start(&upstream_of(&base, 5432)).await);
    let p = proxy.clone();
    let s = Arc::new(TestServer::start_with(move |c| c.store.url = p.route(&c.store.url)).await);
    let admin = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &admin, moat_testkit::customers_csv(20)).await.status.is_success());

    let (phase, stop, sent) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let mut clients = Vec::new();
    for c in 0..4 {
        let (s, admin, phase, stop, sent) = (s.clone(), admin.clone(), phase.clone(), stop.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let mut fates = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::SeqCst) {
                let at = phase.load(Ordering::SeqCst);
                let query = i % 2 == 0;
                let r = if query {
                    s.query(&admin, &format!("SELECT count(*) AS n, {i} AS i FROM customers")).await
                } else {
                    s.get("/v1/users", &admin).await
                };
                let request_id = r.header("x-request-id").unwrap_or_default();
                fates.push(Fate { phase: at, query, status: r.status.as_u16(), code: r.code().to_owned(), request_id });
                sent.fetch_add(1, Ordering::SeqCst);
                i += 4;
            }
            fates
        }));
    }
    let wait_for = async |n: usize| {
        let until = Instant::now() + Duration::from_secs(60);
        while sent.load(Ordering::SeqCst) < n && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_for(20).await;
    proxy.cut();
    phase.store(1, Ordering::SeqCst);
    let during = sent.load(Ordering::SeqCst);
    wait_for(during + 20).await;
    proxy.restore();
    phase.store(2, Ordering::SeqCst);
    assert!(ready(&s, Duration::from_secs(30)).await, "the server is ready again once the store is back");
    let after = sent.load(Ordering::SeqCst);
    wait_for(after + 20).await;
    stop.store(true, Ordering::SeqCst);
    let mut fates = Vec::new();
    for c in clients {
        fates.extend(c.await.unwrap());
    }

    for f in &fates {
        let fine = f.status == 200 || (f.status == 503 && ["store_unavailable", "audit_unavailable"].contains(&f.code.as_str()));
        assert!(fine, "{f:?}: only 200 or 503 with a store code");
    }
    let in_phase = |p: usize, status: u16| fates.iter().filter(|f| f.phase == p && f.status == status).count();
    assert!(in_phase(0, 200) > 0, "served before the cut");
    assert!(in_phase(1, 503) > 0, "refused while the store is gone");
    assert!(in_phase(2, 200) > 0, "served again after");
    // Nothing acknowledged is lost: each answered query has its audit record.
    let recorded: std::collections::HashSet<String> = s.audit_of(Some("acme")).await.into_iter().filter_map(|r| r.request_id).collect();
    let answered: Vec<&Fate> = fates.iter().filter(|f| f.query && f.status == 200).collect();
    for f in &answered {
        assert!(recorded.contains(&f.request_id), "an answered query without its audit record: {f:?}");
    }
    let v = s.get("/v1/audit/verify", &admin).await;
    assert_eq!(v.body["ok"], true, "{:?}", v.body);
    eprintln!(
        "{} requests: {} answered, {} refused with 503 ({} while cut); {} answered queries all on the record",
        fates.len(),
        fates.iter().filter(|f| f.status == 200).count(),
        fates.iter().filter(|f| f.status == 503).count(),
        in_phase(1, 503),
        answered.len()
    );
}

/// Redis (`cache.url`, the shared sign-in limiter) cut after it served: sign-ins fail closed
/// with 503 `cache_unavailable`, each refusal on the record, and work again once it is back.
/// Runs when `MOAT_TEST_REDIS` is set.
#[tokio::test]
async fn redis_cut_mid_use_fails_sign_ins_closed_and_recovers() {
    let Ok(url) = std::env::var("MOAT_TEST_REDIS") else {
        eprintln!("MOAT_TEST_REDIS not set: skipped");
        return;
    };
    let proxy = Arc::new(CutProxy::start(&upstream_of(&url, 6379)).await);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let (p, namespace) = (proxy.clone(), format!("moat-fault-{}-{nanos}", std::process::id()));
    let s = TestServer::start_with(move |c| {
        c.cache.url = p.route(&url);
        c.cache.namespace = namespace;
    })
    .await;
    assert_eq!(s.login_raw(None, SUPER_ADMIN, PASSWORD).await.status, StatusCode::OK);
    proxy.cut();
    for _ in 0..3 {
        let r = s.login_raw(None, SUPER_ADMIN, PASSWORD).await;
        assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "cache_unavailable"), "{:?}", r.body);
    }
    let denied = s.audit_of(None).await.into_iter().filter(|r| r.action == "auth.login" && r.outcome == "denied").count();
    assert_eq!(denied, 3, "each refused sign-in is recorded");
    proxy.restore();
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let r = s.login_raw(None, SUPER_ADMIN, PASSWORD).await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(r.code(), "cache_unavailable", "{:?}", r.body);
        assert!(Instant::now() < until, "sign-ins did not recover within 15 s of Redis coming back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
