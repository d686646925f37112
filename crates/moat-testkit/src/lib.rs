//! moat-testkit: starts a real moat server on 127.0.0.1:0 with a fresh data dir and a manual
//! clock, and talks to it as a client would. Integration tests of the HTTP API live in this
//! crate's `tests/`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use moat_core::clock::ManualClock;
use moat_server::config::{Config, DataDir, Overrides};
use moat_server::state::AppState;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub mod fault;

/// Benchmark helpers (percentiles, rows beside a baseline), shared with the store benches.
pub use moat_core::bench;

pub use reqwest;
pub use serde_json;

pub const SUPER_ADMIN: &str = "root@platform.example";
/// Passes the default policy; used for every test account unless a test needs another.
pub const PASSWORD: &str = "Tr1cky-Gazelle";

/// A customers table as CSV for benchmarks: `id,name,email,ssn,amount`, `rows` rows, the same
/// bytes every run.
/// Two tenants' `customers` tables for the cross-tenant and masking tests (canary values that
/// must never show where they should not).
pub const CUSTOMERS_A: &str =
    "id,name,email,ssn,plan,revenue\n1,Ann Canary,ann@acme-secret.com,123-45-6789,pro,100\n2,Bob Stone,bob@acme.com,987-65-4321,free,5\n";
pub const CUSTOMERS_B: &str = "id,name,email,ssn,plan,revenue\n1,Globex Spy,spy@globex-secret.com,999-99-9999,ent,7\n";

pub fn customers_csv(rows: usize) -> String {
    let mut csv = String::with_capacity(rows * 64);
    csv.push_str("id,name,email,ssn,amount\n");
    for i in 0..rows {
        csv.push_str(&format!(
            "{i},Person {i},p{i}@example.com,{:03}-{:02}-{:04},{}.{:02}\n",
            100 + i % 800,
            1 + i % 98,
            i % 10_000,
            i % 997,
            i % 100
        ));
    }
    csv
}

pub struct TestServer {
    pub base: String,
    pub clock: ManualClock,
    pub state: Arc<AppState>,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// The PostgreSQL wire protocol listener.
    pub pg: std::net::SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// The server's own PostgreSQL database (`MOAT_TEST_STORE=postgres`), dropped with it.
    pg_db: Option<moat_store::pg_testing::TestDb>,
}

/// A response: status, JSON body (`Null` when empty), headers.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Resp {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }
    /// All `Set-Cookie` values.
    pub fn cookies(&self) -> Vec<String> {
        self.headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect()
    }
    /// The `moat_refresh` cookie value, if set.
    pub fn refresh_cookie(&self) -> Option<String> {
        self.cookies().iter().find_map(|c| c.strip_prefix("moat_refresh=").map(|r| r.split(';').next().unwrap_or("").to_owned()))
    }
}

/// Which metadata and audit store a [`TestServer`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    /// PostgreSQL when `MOAT_TEST_STORE=postgres`, else embedded SQLite (the suite's two passes).
    FromEnv,
    Embedded,
    /// A fresh PostgreSQL database (needs `MOAT_TEST_PG`).
    Postgres,
}

/// With `MOAT_TEST_STORE=postgres` (and `MOAT_TEST_PG`), points the data dir's configuration at
/// a fresh PostgreSQL database — runtime role in `store.url`, owner in `store.admin_url` — so
/// that the whole suite runs on the production store too.
async fn postgres_store(data: &DataDir, store: Store) -> Option<moat_store::pg_testing::TestDb> {
    let postgres = match store {
        Store::FromEnv => std::env::var("MOAT_TEST_STORE").is_ok_and(|v| v == "postgres"),
        Store::Embedded => false,
        Store::Postgres => true,
    };
    if !postgres {
        return None;
    }
    let base = moat_store::pg_testing::TestDb::base_from_env().expect("MOAT_TEST_STORE=postgres needs MOAT_TEST_PG");
    let db = moat_store::pg_testing::TestDb::create(&base).await;
    let path = data.config_file();
    let toml = std::fs::read_to_string(&path).unwrap();
    let toml = toml.replacen("[store]\n", &format!("[store]\nadmin_url = {:?}\n", db.admin_url), 1);
    let toml = toml.replacen("url = \"sqlite://moat.db\"", &format!("url = {:?}", db.app_url), 1);
    std::fs::write(&path, toml).unwrap();
    Some(db)
}

impl TestServer {
    /// The server's PostgreSQL database, when the suite runs on PostgreSQL.
    pub fn postgres(&self) -> Option<&moat_store::pg_testing::TestDb> {
        self.pg_db.as_ref()
    }

    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with a tweaked configuration (limits, lockout) and a Super Admin account.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_stores(tweak, |s| s).await
    }

    /// Starts with a tweaked configuration over the data dir's stores as `wrap` returns them
    /// (a benchmark's baseline wraps the audit store).
    pub async fn start_with_stores(tweak: impl FnOnce(&mut Config), wrap: impl FnOnce(moat_store::Stores) -> moat_store::Stores) -> Self {
        Self::start_on(Store::FromEnv, tweak, wrap).await
    }

    /// Starts on the given store (benchmarks compare both in one run).
    pub async fn start_on(
        store: Store,
        tweak: impl FnOnce(&mut Config),
        wrap: impl FnOnce(moat_store::Stores) -> moat_store::Stores,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let data = DataDir::new(dir.path().join("data"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        moat_server::bootstrap::init(&data, now).await.unwrap();
        let pg_db = postgres_store(&data, store).await;
        moat_server::bootstrap::create_super_admin(&data, SUPER_ADMIN, PASSWORD, now).await.unwrap();
        Self::serve(dir, pg_db, tweak, wrap).await
    }

    /// Serves a data dir made elsewhere (`dir/data`: restored from a backup, say), as it is.
    pub async fn start_in(dir: tempfile::TempDir) -> Self {
        Self::serve(dir, None, |_| {}, |s| s).await
    }

    async fn serve(
        dir: tempfile::TempDir,
        pg_db: Option<moat_store::pg_testing::TestDb>,
        tweak: impl FnOnce(&mut Config),
        wrap: impl FnOnce(moat_store::Stores) -> moat_store::Stores,
    ) -> Self {
        let data = DataDir::new(dir.path().join("data"));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        let mut cfg = Config::load(Some(&data.config_file()), Vec::new(), &Overrides::default()).unwrap();
        // Scheduled data-key rotation would add records to trails that tests count (a fake clock
        // jumps years); the rotation tests switch it on.
        cfg.keys.rotation_days = 0;
        tweak(&mut cfg);
        cfg.validate().unwrap();
        // With TLS on, the helpers speak HTTPS and trust the configured certificate.
        let tls_root = cfg.tls.enabled().then(|| {
            let cert = std::path::Path::new(&cfg.tls.cert);
            let cert = if cert.is_absolute() { cert.to_path_buf() } else { data.root.join(cert) };
            reqwest::Certificate::from_pem(&std::fs::read(cert).unwrap()).unwrap()
        });
        let clock = ManualClock::new(now);
        let stores = wrap(moat_store::open_with(&cfg.store_url(&data.root), cfg.store.admin_url.as_deref()).await.unwrap());
        let state = Arc::new(AppState::open_with_stores(&data, cfg, Arc::new(clock.clone()), stores).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let scheme = if tls_root.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        tokio::spawn(async move {
            moat_server::http::serve(listener, st, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        let pg_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pg = pg_listener.local_addr().unwrap();
        tokio::spawn(moat_server::pg::serve(pg_listener, state.clone(), state.closing.clone().cancelled_owned()));
        let mut http = reqwest::Client::builder().user_agent("moat-testkit");
        if let Some(root) = tls_root {
            http = http.tls_certs_only([root]);
        }
        let http = http.build().unwrap();
        Self { base, clock, state, http, dir, pg, shutdown: Some(tx), pg_db }
    }

    /// Any request. `auth` is a bearer credential; `cookie` a raw Cookie header.
    pub async fn send(&self, method: Method, path: &str, auth: Option<&str>, body: Option<Value>, cookie: Option<&str>) -> Resp {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Resp { status, body, headers }
    }

    pub async fn get(&self, path: &str, auth: &str) -> Resp {
        self.send(Method::GET, path, Some(auth), None, None).await
    }

    pub async fn post(&self, path: &str, auth: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(auth), Some(body), None).await
    }

    /// Classifies column `col` of `customers` (panics unless accepted).
    pub async fn label(&self, admin: &str, col: &str, classification: &str, pii: &str, entity: Option<&str>) {
        self.label_in(admin, "customers", col, classification, pii, entity).await;
    }

    /// Classifies column `col` of `table` (panics unless accepted).
    pub async fn label_in(&self, admin: &str, table: &str, col: &str, classification: &str, pii: &str, entity: Option<&str>) {
        let body = serde_json::json!({"classification": classification, "pii": pii, "entity": entity});
        let r = self.send(reqwest::Method::PUT, &format!("/v1/tables/{table}/columns/{col}"), Some(admin), Some(body), None).await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }

    /// Classifies a table shaped by [`customers_csv`] for the benchmarks: three PII columns a
    /// Viewer sees masked, not omitted (a hash token, a partial e-mail, `****`).
    pub async fn label_bench_customers(&self, admin: &str, table: &str) {
        for (col, classification, pii, entity) in [
            ("id", "PUBLIC", "none", None),
            ("name", "CONFIDENTIAL", "direct", Some("person_name")),
            ("email", "CONFIDENTIAL", "direct", Some("email")),
            ("ssn", "RESTRICTED", "direct", Some("ssn")),
            ("amount", "INTERNAL", "none", None),
        ] {
            self.label_in(admin, table, col, classification, pii, entity).await;
        }
    }

    /// Classifies the columns of a `customers` table shaped like [`CUSTOMERS_A`] as the
    /// contract's demo does: names and emails CONFIDENTIAL PII, the SSN RESTRICTED.
    pub async fn label_customers(&self, admin: &str) {
        for (col, classification, pii, entity) in [
            ("id", "PUBLIC", "none", None),
            ("name", "CONFIDENTIAL", "direct", Some("person_name")),
            ("email", "CONFIDENTIAL", "direct", Some("email")),
            ("ssn", "RESTRICTED", "direct", Some("ssn")),
            ("plan", "INTERNAL", "none", None),
            ("revenue", "CONFIDENTIAL", "none", None),
        ] {
            self.label(admin, col, classification, pii, entity).await;
        }
    }

    /// Uploads CSV as a table.
    pub async fn put_csv(&self, path: &str, auth: &str, csv: impl Into<reqwest::Body>) -> Resp {
        self.put_body(path, auth, "text/csv", csv).await
    }

    /// Uploads a body of any type.
    pub async fn put_body(&self, path: &str, auth: &str, content_type: &str, body: impl Into<reqwest::Body>) -> Resp {
        let resp = self
            .http
            .put(format!("{}{path}", self.base))
            .bearer_auth(auth)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Resp { status, body, headers }
    }

    /// Runs SQL through `POST /v1/query`.
    pub async fn query(&self, auth: &str, sql: &str) -> Resp {
        self.post("/v1/query", auth, json!({"sql": sql})).await
    }

    /// Runs SQL asking for `accept` (CSV, Arrow): the raw response.
    pub async fn query_as(&self, auth: &str, sql: &str, accept: &str) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/query", self.base))
            .bearer_auth(auth)
            .header("accept", accept)
            .json(&json!({"sql": sql}))
            .send()
            .await
            .unwrap()
    }

    pub async fn login_raw(&self, tenant: Option<&str>, email: &str, password: &str) -> Resp {
        self.send(Method::POST, "/v1/auth/login", None, Some(json!({"tenant": tenant, "email": email, "password": password})), None).await
    }

    /// Logs in and returns the access token, failing the test otherwise.
    pub async fn login(&self, tenant: Option<&str>, email: &str, password: &str) -> String {
        let r = self.login_raw(tenant, email, password).await;
        assert_eq!(r.status, StatusCode::OK, "login {email}: {:?}", r.body);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn super_admin(&self) -> String {
        self.login(None, SUPER_ADMIN, PASSWORD).await
    }

    /// Creates a tenant with `admin@<slug>.example` and returns the admin's token.
    pub async fn tenant_with_admin(&self, slug: &str) -> String {
        let sa = self.super_admin().await;
        let r = self
            .post(
                "/v1/tenants",
                &sa,
                json!({"slug": slug, "name": slug, "admin": {"email": format!("admin@{slug}.example"), "password": PASSWORD}}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        self.login(Some(slug), &format!("admin@{slug}.example"), PASSWORD).await
    }

    /// Creates a user with `role` in the admin's tenant; returns (user id, token).
    pub async fn user(&self, admin: &str, tenant: &str, email: &str, role: &str) -> (String, String) {
        let r = self.post("/v1/users", admin, json!({"email": email, "password": PASSWORD, "role": role})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        let id = r.body["id"].as_str().unwrap().to_owned();
        (id, self.login(Some(tenant), email, PASSWORD).await)
    }

    /// Waits until the token's trail has a published checkpoint covering every record so far
    /// (the reads it makes are audited too: a checkpoint up to them will do); returns it.
    pub async fn checkpointed(&self, token: &str) -> Value {
        for _ in 0..100 {
            let cp = self.get("/v1/audit/checkpoint", token).await;
            let events = self.get("/v1/audit/events?limit=1000", token).await;
            assert_eq!(events.status, StatusCode::OK, "{:?}", events.body);
            // The page is the first 1000 records: enough for the tests that use this.
            let last = events.body["events"].as_array().and_then(|e| e.last()).and_then(|e| e["seq"].as_u64()).unwrap_or(0);
            if cp.status == StatusCode::OK && cp.body["size"].as_u64().unwrap_or(0) >= last {
                return cp.body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("no checkpoint within 10 s");
    }

    /// Audit records of a trail, straight from the store (bypassing the API).
    pub async fn audit_of(&self, tenant_slug: Option<&str>) -> Vec<moat_store::AuditRecord> {
        let trail = match tenant_slug {
            Some(s) => Some(self.state.stores.meta.tenant_by_slug(s).await.unwrap().unwrap().id),
            None => None,
        };
        self.state.stores.audit.list(trail, &moat_store::AuditFilter { limit: 10_000, ..Default::default() }).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(db) = self.pg_db.take() {
            // Off the test's runtime (this may run inside it): a thread with its own.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    rt.block_on(db.drop_db());
                }
            })
            .join();
        }
    }
}
