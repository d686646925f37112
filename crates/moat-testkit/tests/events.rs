//! Audit and domain events to NATS JetStream (`events.url`). Runs when `MOAT_TEST_NATS` is set;
//! each test has its own subject namespace and stream on the shared server and deletes the
//! stream afterwards. What is checked is what a SIEM consumer relies on: every record of a
//! trail arrives on `tenant.{id}.audit`, in sequence order, with its event id as `Nats-Msg-Id`;
//! nothing of one tenant lands on another's subjects; and NATS going away never refuses a
//! request nor loses an event (the audit store is the spool).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use moat_testkit::fault::{CutProxy, upstream_of};
use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::{TestServer, customers_csv};
use serde_json::{Value, json};

/// A message as the stream holds it.
#[derive(Debug)]
struct Msg {
    subject: String,
    msg_id: String,
    body: Value,
}

/// One test's own namespace and stream on the NATS server of `MOAT_TEST_NATS`.
struct Bus {
    js: jetstream::Context,
    namespace: String,
    stream: String,
}

impl Bus {
    async fn new(url: &str) -> Self {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let tag = format!("{}x{nanos}", std::process::id());
        let client = async_nats::connect(url).await.expect("connect to MOAT_TEST_NATS");
        Self { js: jetstream::new(client), namespace: format!("t{tag}"), stream: format!("MOAT_TEST_{tag}") }
    }

    fn configure(&self, c: &mut moat_server::config::Config, url: String) {
        c.events.url = url;
        c.events.namespace = self.namespace.clone();
        c.events.stream = self.stream.clone();
    }

    /// Every message in the stream, in stream order (none if it does not exist yet).
    async fn messages(&self) -> Vec<Msg> {
        let Ok(mut stream) = self.js.get_stream(&self.stream).await else { return vec![] };
        let last = stream.info().await.unwrap().state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let m = stream.get_raw_message(seq).await.unwrap();
            let msg_id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned()).unwrap_or_default();
            out.push(Msg { subject: m.subject.to_string(), msg_id, body: serde_json::from_slice(&m.payload).unwrap() });
        }
        out
    }

    /// Waits until every event id in `want` is on `subject`; the stream's messages then.
    async fn wait_for(&self, subject: &str, want: &HashSet<String>, within: Duration) -> Vec<Msg> {
        let until = Instant::now() + within;
        loop {
            let all = self.messages().await;
            let got: HashSet<&str> = all.iter().filter(|m| m.subject == subject).map(|m| m.body["event_id"].as_str().unwrap()).collect();
            let missing: Vec<&String> = want.iter().filter(|id| !got.contains(id.as_str())).collect();
            if missing.is_empty() {
                return all;
            }
            assert!(Instant::now() < until, "{} of {} events never reached {subject}: {missing:?}", missing.len(), want.len());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn delete(&self) {
        let _ = self.js.delete_stream(&self.stream).await;
    }
}

async fn readyz(s: &TestServer) -> (StatusCode, Value) {
    let r = s.send(Method::GET, "/readyz", None, None, None).await;
    (r.status, r.body)
}

async fn tenant_id(s: &TestServer, slug: &str) -> String {
    s.state.stores.meta.tenant_by_slug(slug).await.unwrap().unwrap().id.to_string()
}

/// Event ids of a trail's records so far.
async fn event_ids(s: &TestServer, slug: Option<&str>) -> HashSet<String> {
    s.audit_of(slug).await.into_iter().map(|r| r.event_id).collect()
}

#[tokio::test]
async fn audit_records_reach_jetstream_in_order_on_their_tenants_subjects() {
    let Ok(url) = std::env::var("MOAT_TEST_NATS") else {
        eprintln!("MOAT_TEST_NATS not set: skipped");
        return;
    };
    let bus = Bus::new(&url).await;
    let s = TestServer::start_with(|c| bus.configure(c, url.clone())).await;
    let acme = s.tenant_with_admin("acme").await;
    let globex = s.tenant_with_admin("globex").await;
    for admin in [&acme, &globex] {
        assert!(s.put_csv("/v1/tables/customers", admin, customers_csv(10)).await.status.is_success());
        s.label_bench_customers(admin, "customers").await;
        assert_eq!(s.query(admin, "SELECT count(*) FROM customers").await.status, StatusCode::OK);
    }
    s.user(&acme, "acme", "ana@acme.example", "user").await;
    let (acme_id, globex_id) = (tenant_id(&s, "acme").await, tenant_id(&s, "globex").await);
    let ns = &bus.namespace;

    let want = event_ids(&s, Some("acme")).await;
    let platform = event_ids(&s, None).await;
    bus.wait_for(&format!("{ns}.tenant.{globex_id}.audit"), &event_ids(&s, Some("globex")).await, Duration::from_secs(30)).await;
    bus.wait_for(&format!("{ns}.platform.audit"), &platform, Duration::from_secs(30)).await;
    let all = bus.wait_for(&format!("{ns}.tenant.{acme_id}.audit"), &want, Duration::from_secs(30)).await;

    // Every message names its record's event id, and sits on its own trail's subjects only.
    for m in &all {
        let (id, trail) = (m.body["event_id"].as_str().unwrap(), m.body["trail"].as_str().unwrap());
        let domain = m.subject.rsplit('.').next().unwrap();
        let expected_id = if domain == "audit" { id.to_owned() } else { format!("{id}:{domain}") };
        assert_eq!(m.msg_id, expected_id, "{m:?}");
        let prefix = if trail == "platform" { format!("{ns}.platform.") } else { format!("{ns}.tenant.{trail}.") };
        assert!(m.subject.starts_with(&prefix), "a record of trail {trail} on {}", m.subject);
    }
    // A trail's records arrive in sequence order, each once.
    let acme_audit: Vec<i64> =
        all.iter().filter(|m| m.subject == format!("{ns}.tenant.{acme_id}.audit")).map(|m| m.body["seq"].as_i64().unwrap()).collect();
    assert_eq!(acme_audit, (1..=acme_audit.len() as i64).collect::<Vec<_>>(), "in order, no gaps, no repeats");
    // Domain subjects: ingest, classification and admin changes each also on their own.
    let on = |domain: &str| -> Vec<String> {
        let subject = format!("{ns}.tenant.{acme_id}.{domain}");
        all.iter().filter(|m| m.subject == subject).map(|m| m.body["action"].as_str().unwrap().to_owned()).collect()
    };
    assert!(on("ingest").iter().any(|a| a == "table.write"), "ingest: {:?}", on("ingest"));
    assert!(!on("classification").is_empty() && on("classification").iter().all(|a| a.starts_with("classification.")));
    assert!(on("admin").iter().any(|a| a == "user.create"), "admin: {:?}", on("admin"));
    assert!(on("audit").iter().any(|a| a == "query.execute"), "queries are on the audit subject");
    assert!(!on("admin").iter().any(|a| a.starts_with("query")), "queries are not admin events");

    let (status, body) = readyz(&s).await;
    assert_eq!((status, body["checks"]["events"].as_str()), (StatusCode::OK, Some("ok")), "{body}");
    bus.delete().await;
}

/// NATS cut while requests run: every request is still served and recorded, `/readyz` stays
/// ready and says the events lag, and once NATS is back every record arrives (at least once).
#[tokio::test]
async fn nats_down_never_refuses_requests_and_loses_no_event() {
    let Ok(url) = std::env::var("MOAT_TEST_NATS") else {
        eprintln!("MOAT_TEST_NATS not set: skipped");
        return;
    };
    let bus = Bus::new(&url).await;
    let proxy = Arc::new(CutProxy::start(&upstream_of(&url, 4222)).await);
    let routed = proxy.route(&url);
    let s = TestServer::start_with(|c| bus.configure(c, routed)).await;
    let admin = s.tenant_with_admin("acme").await;
    assert!(s.put_csv("/v1/tables/customers", &admin, customers_csv(10)).await.status.is_success());
    let acme_id = tenant_id(&s, "acme").await;
    let subject = format!("{}.tenant.{acme_id}.audit", bus.namespace);
    bus.wait_for(&subject, &event_ids(&s, Some("acme")).await, Duration::from_secs(30)).await;

    proxy.cut();
    let mut lagging = None;
    let until = Instant::now() + Duration::from_secs(30);
    let mut served = 0;
    while lagging.is_none() || served < 20 {
        let r = s.query(&admin, &format!("SELECT count(*) AS n, {served} AS i FROM customers")).await;
        assert_eq!(r.status, StatusCode::OK, "NATS down must not refuse a query: {:?}", r.body);
        served += 1;
        let (status, body) = readyz(&s).await;
        assert_eq!(status, StatusCode::OK, "NATS down must not make the server unready: {body}");
        let events = body["checks"]["events"].as_str().unwrap().to_owned();
        if events.starts_with("lagging") {
            lagging = Some(events);
        }
        assert!(Instant::now() < until, "readyz never reported the lag: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lagging = lagging.unwrap();
    assert!(lagging.contains("wait in the audit store"), "{lagging}");
    assert!(!lagging.contains(&proxy.addr.to_string()), "the reason never names the server: {lagging}");

    proxy.restore();
    let want = event_ids(&s, Some("acme")).await;
    let all = bus.wait_for(&subject, &want, Duration::from_secs(60)).await;
    let mut times: HashMap<&str, usize> = HashMap::new();
    for m in all.iter().filter(|m| m.subject == subject) {
        *times.entry(m.body["event_id"].as_str().unwrap()).or_default() += 1;
    }
    let repeats = times.values().filter(|n| **n > 1).count();
    eprintln!("{served} queries served while NATS was cut; {} records forwarded after it came back, {repeats} delivered twice", want.len());
    let until = Instant::now() + Duration::from_secs(30);
    while readyz(&s).await.1["checks"]["events"] != json!("ok") {
        assert!(Instant::now() < until, "events never reported ok again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bus.delete().await;
}
