//! The PostgreSQL wire protocol endpoint, from the client's side (tokio-postgres, and Debian's
//! `psql` where it is installed): the same tenant scope, masking and audit as HTTP; sign-in with
//! a password (lockout as over HTTP) or an API key; read-only; errors with SQLSTATEs; garbage on
//! the socket never takes the server down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::serde_json::json;
use moat_testkit::{PASSWORD, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{NoTls, SimpleQueryMessage};

use moat_testkit::{CUSTOMERS_A as CSV_A, CUSTOMERS_B as CSV_B};

/// Two tenants with a `customers` table each; acme has a viewer and an admin.
async fn two_tenants() -> (TestServer, String) {
    let s = TestServer::start().await;
    let acme = s.tenant_with_admin("acme").await;
    s.put_csv("/v1/tables/customers", &acme, CSV_A).await;
    s.label_customers(&acme).await;
    s.user(&acme, "acme", "v@acme.example", "viewer").await;
    let beta = s.tenant_with_admin("beta").await;
    s.put_csv("/v1/tables/customers", &beta, CSV_B).await;
    s.label_customers(&beta).await;
    (s, acme)
}

async fn connect(s: &TestServer, db: &str, user: &str, password: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let cfg = format!("host={} port={} dbname={db} user={user} password={password} application_name=pgtest", s.pg.ip(), s.pg.port());
    let (client, conn) = tokio_postgres::connect(&cfg, NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

/// The rows of a simple query, as text cells.
async fn rows(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect())
}

fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_owned()).unwrap_or_else(|| panic!("not a server error: {e}"))
}

#[tokio::test]
async fn a_viewer_sees_masked_rows_of_its_own_tenant_only() {
    let (s, _) = two_tenants().await;
    let c = connect(&s, "acme", "v@acme.example", PASSWORD).await.unwrap();
    let sql = "SELECT * FROM customers ORDER BY id";
    let got = rows(&c, sql).await.unwrap();
    // Exactly what the same viewer gets over HTTP: the same governed path.
    let viewer = s.login(Some("acme"), "v@acme.example", PASSWORD).await;
    let http = s.query(&viewer, sql).await;
    let http_rows: Vec<Vec<Option<String>>> = http.body["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_str().map_or_else(|| Some(v.to_string()), |s| Some(s.to_owned()))).collect())
        .collect();
    assert_eq!(got, http_rows);
    assert_eq!(got[0][2..], [Some("a***@***.com".to_owned()), Some("****".to_owned()), Some("pro".to_owned())]);
    assert_eq!(got[0].len(), 5, "revenue omitted for a viewer");
    let text = format!("{got:?}");
    for secret in ["Ann Canary", "ann@acme-secret.com", "123-45-6789", "Globex", "spy@"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    // Masked values cannot be probed through WHERE.
    for probe in ["SELECT id FROM customers WHERE ssn = '123-45-6789'", "SELECT id FROM customers WHERE email LIKE 'ann@%'"] {
        assert!(rows(&c, probe).await.unwrap().is_empty(), "{probe}");
    }
    // The catalog shows the caller's tenant only.
    let tables = rows(&c, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").await.unwrap();
    assert_eq!(tables, vec![vec![Some("customers".to_owned())]]);
    // The catalog shows the caller's tenant only, pg_catalog included.
    let sql = "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               WHERE c.relkind = 'r' AND n.nspname = 'public'";
    let names: Vec<String> = c.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(names.contains(&"customers".to_owned()) && names.len() == 1, "{names:?}");
    let dbs: Vec<String> = c.query("SELECT datname FROM pg_catalog.pg_database", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(dbs, ["acme"]);
    let db: String = c.query_one("SELECT current_database()", &[]).await.unwrap().get(0);
    assert_eq!(db, "acme");
}

#[tokio::test]
async fn prepared_statements_bind_parameters_into_the_governed_plan() {
    let (s, acme) = two_tenants().await;
    let c = connect(&s, "acme", "v@acme.example", PASSWORD).await.unwrap();
    // The extended protocol (tokio-postgres's typed API: binary results) sees what the simple
    // protocol and HTTP see.
    let stmt = c.prepare("SELECT id, email, ssn, plan FROM customers WHERE id = $1").await.unwrap();
    assert_eq!(stmt.params(), [tokio_postgres::types::Type::INT8]);
    let r = c.query_one(&stmt, &[&1i64]).await.unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, String>(1), r.get::<_, String>(2)), (1, "a***@***.com".to_owned(), "****".to_owned()));
    // Raw values bound as parameters meet masked values: a probe finds nothing.
    for (sql, raw) in [
        ("SELECT id FROM customers WHERE ssn = $1", "123-45-6789"),
        ("SELECT id FROM customers WHERE email = $1", "ann@acme-secret.com"),
        ("SELECT id FROM customers WHERE email LIKE $1", "ann@%"),
        ("SELECT id FROM customers WHERE name = $1", "Ann Canary"),
        ("SELECT id FROM customers WHERE ssn LIKE $1 || '%'", "123"),
        ("SELECT id FROM customers WHERE substr(ssn, 1, 3) = $1", "123"),
    ] {
        assert!(c.query(sql, &[&raw]).await.unwrap().is_empty(), "{sql} with {raw}");
    }
    // Another tenant's rows are not there whatever is bound.
    assert!(c.query("SELECT id FROM customers WHERE plan = $1", &[&"ent"]).await.unwrap().is_empty());
    // Prepared once, executed many times.
    let by_plan = c.prepare("SELECT count(*) FROM customers WHERE plan = $1").await.unwrap();
    for (plan, n) in [("pro", 1i64), ("free", 1), ("ent", 0)] {
        assert_eq!(c.query_one(&by_plan, &[&plan]).await.unwrap().get::<_, i64>(0), n, "{plan}");
    }
    // DEALLOCATE ALL frees every prepared statement of the connection (26000 after it).
    rows(&c, "DEALLOCATE ALL").await.unwrap();
    assert_eq!(sqlstate(&c.query_one(&by_plan, &[&"pro"]).await.unwrap_err()), "26000");
    // Each execution is audited with what was bound.
    let ev = s.get("/v1/audit/events?action=query.execute&limit=200", &acme).await;
    let bound: Vec<_> = ev.body["events"].as_array().unwrap().iter().filter(|e| e["details"]["params"] == json!(["123-45-6789"])).collect();
    assert_eq!(bound.len(), 1, "{}", ev.body);
    assert_eq!(bound[0]["details"]["tables"], json!(["customers"]));
    // Refusals come back as error responses with SQLSTATEs, and the connection goes on.
    for (sql, state) in
        [("DELETE FROM customers WHERE id = $1", "25006"), ("SELECT * FROM orders", "42P01"), ("SELECT * FROM '/etc/passwd'", "42P01")]
    {
        let e = c.query(sql, &[]).await.expect_err(sql);
        let got = sqlstate(&e);
        assert!(got == state || (state == "42P01" && got == "42000"), "{sql}: {e}");
    }
    assert_eq!(c.query_one("SELECT count(*) FROM customers", &[]).await.unwrap().get::<_, i64>(0), 2);
    // A parameter that does not decode is refused, not guessed.
    let e = c.query("SELECT id FROM customers WHERE id = $1::int8", &[&"not a number"]).await.expect_err("bad parameter");
    assert!(e.as_db_error().is_some() || e.to_string().contains("serializ"), "{e}");
}

#[tokio::test]
async fn types_map_to_postgres_in_binary_and_text() {
    let (s, _) = two_tenants().await;
    let c = connect(&s, "acme", "admin@acme.example", PASSWORD).await.unwrap();
    let sql = "SELECT CAST(1 AS SMALLINT) AS a, CAST(2 AS INT) AS b, CAST(3 AS BIGINT) AS c, CAST(1.5 AS REAL) AS d, \
               CAST(2.25 AS DOUBLE PRECISION) AS e, true AS f, 'x' AS g, DATE '2024-01-02' AS h, \
               TIMESTAMP '2024-01-02 03:04:05' AS i";
    // Binary (tokio-postgres's typed API).
    let r = c.query_one(sql, &[]).await.unwrap();
    assert_eq!(r.get::<_, i16>(0), 1);
    assert_eq!(r.get::<_, i32>(1), 2);
    assert_eq!(r.get::<_, i64>(2), 3);
    assert_eq!(r.get::<_, f32>(3), 1.5);
    assert_eq!(r.get::<_, f64>(4), 2.25);
    assert!(r.get::<_, bool>(5));
    assert_eq!(r.get::<_, String>(6), "x");
    let types: Vec<&str> = r.columns().iter().map(|c| c.type_().name()).collect();
    assert_eq!(types, ["int2", "int4", "int8", "float4", "float8", "bool", "text", "date", "timestamp"]);
    // Text (the simple protocol).
    let t = rows(&c, sql).await.unwrap();
    assert_eq!(
        t[0].iter().map(|v| v.clone().unwrap()).collect::<Vec<_>>(),
        ["1", "2", "3", "1.5", "2.25", "t", "x", "2024-01-02", "2024-01-02 03:04:05.000000"]
    );
    // numeric, timestamptz, bytea: their type names, text forms and (bytea, timestamptz)
    // binary values.
    let sql = "SELECT CAST(12.50 AS DECIMAL(10,2)) AS n, arrow_cast(TIMESTAMP '2024-01-02 03:04:05', 'Timestamp(Microsecond, Some(\"UTC\"))') AS tz, \
               CAST('ab' AS BYTEA) AS b";
    let r = c.query_one(sql, &[]).await.unwrap();
    let types: Vec<&str> = r.columns().iter().map(|c| c.type_().name()).collect();
    assert_eq!(types, ["numeric", "timestamptz", "bytea"]);
    assert_eq!(r.get::<_, Vec<u8>>(2), b"ab");
    let tz: std::time::SystemTime = r.get(1);
    assert_eq!(tz.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(), 1_704_164_645);
    let t = rows(&c, sql).await.unwrap();
    assert_eq!(t[0][0].as_deref(), Some("12.50"));
    assert!(t[0][1].as_deref().is_some_and(|v| v.starts_with("2024-01-02 03:04:05")), "{t:?}");
    assert_eq!(t[0][2].as_deref(), Some("\\x6162"));
}

#[tokio::test]
async fn portals_return_rows_in_pages_within_a_transaction() {
    let (s, acme) = two_tenants().await;
    let mut c = connect(&s, "acme", "admin@acme.example", PASSWORD).await.unwrap();
    let tx = c.transaction().await.unwrap();
    let stmt = tx.prepare("SELECT id FROM customers UNION ALL SELECT id + 10 FROM customers ORDER BY 1").await.unwrap();
    let portal = tx.bind(&stmt, &[]).await.unwrap();
    let mut pages = Vec::new();
    loop {
        let page: Vec<i64> = tx.query_portal(&portal, 3).await.unwrap().iter().map(|r| r.get(0)).collect();
        if page.is_empty() {
            break;
        }
        pages.push(page);
    }
    assert_eq!(pages, vec![vec![1, 2, 11], vec![12]]);
    tx.commit().await.unwrap();
    // One access record for the query, however many pages it took.
    let ev = s.get("/v1/audit/events?action=query.execute&limit=100", &acme).await;
    let n = ev.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["details"]["sql"].as_str().is_some_and(|q| q.contains("UNION ALL")))
        .count();
    assert_eq!(n, 1, "{}", ev.body);
}

#[tokio::test]
async fn a_cancel_request_stops_the_running_statement_and_is_audited() {
    let (s, acme) = two_tenants().await;
    let c = connect(&s, "acme", "admin@acme.example", PASSWORD).await.unwrap();
    let token = c.cancel_token();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        token.cancel_query(NoTls).await
    });
    let started = std::time::Instant::now();
    let e = c.simple_query("SELECT count(*) FROM generate_series(1, 100000000000) AS t(a) WHERE a % 7 = 3").await.expect_err("cancelled");
    canceller.await.unwrap().unwrap();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the statement was not interrupted");
    // The connection goes on.
    assert_eq!(rows(&c, "SELECT 1").await.unwrap(), vec![vec![Some("1".to_owned())]]);
    for _ in 0..100 {
        let ev = s.get("/v1/audit/events?action=query.execute&limit=100", &acme).await;
        if ev.body["events"].as_array().unwrap().iter().any(|e| e["details"]["error"] == "query_canceled") {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no record of the cancelled statement");
}

#[tokio::test]
async fn sign_in_refusals_read_alike_and_lock_like_http() {
    let (s, acme) = two_tenants().await;
    for (db, user, pass) in [
        ("acme", "v@acme.example", "wrong-password"),
        ("beta", "v@acme.example", PASSWORD),
        ("nosuch", "v@acme.example", PASSWORD),
        ("", "v@acme.example", PASSWORD),
    ] {
        let e = connect(&s, if db.is_empty() { "''" } else { db }, user, pass).await.expect_err("refused");
        assert_eq!(sqlstate(&e), "28P01", "{db}/{user}: {e}");
        assert!(e.as_db_error().unwrap().message().contains("invalid tenant, email or password"), "{e}");
    }
    // Lockout counts pgwire and HTTP failures alike.
    for _ in 0..5 {
        let _ = connect(&s, "acme", "v@acme.example", "wrong-password").await;
    }
    let locked = connect(&s, "acme", "v@acme.example", PASSWORD).await.expect_err("locked");
    assert_eq!(locked.as_db_error().unwrap().detail(), Some("moat error code: account_locked"));
    assert_eq!(s.login_raw(Some("acme"), "v@acme.example", PASSWORD).await.code(), "account_locked");
    // Every attempt is audited in the tenant's trail.
    let audit = s.get("/v1/audit/events?action=auth.login&limit=100", &acme).await;
    let failures = audit.body["events"].as_array().unwrap().iter().filter(|e| e["details"]["via"] == "pgwire").count();
    assert!(failures >= 6, "{}", audit.body);
}

#[tokio::test]
async fn an_api_key_signs_in_to_its_own_tenant_only() {
    let (s, acme) = two_tenants().await;
    let key = s.post("/v1/api-keys", &acme, json!({"name": "bi", "scopes": ["query:execute", "table:read"]})).await;
    assert_eq!(key.status, StatusCode::CREATED, "{:?}", key.body);
    let key = key.body["key"].as_str().unwrap().to_owned();
    let c = connect(&s, "acme", "anything", &key).await.unwrap();
    assert_eq!(rows(&c, "SELECT count(*) FROM customers").await.unwrap(), vec![vec![Some("2".to_owned())]]);
    let e = connect(&s, "beta", "anything", &key).await.expect_err("another tenant");
    assert_eq!(sqlstate(&e), "28P01");
    // A revoked key ends access at the next statement.
    let id = s.get("/v1/api-keys", &acme).await.body["keys"][0]["id"].as_str().unwrap().to_owned();
    let r = s.send(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&acme), None, None).await;
    assert!(r.status.is_success(), "{:?}", r.body);
    let e = rows(&c, "SELECT 1").await.expect_err("revoked");
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    assert_eq!(e.as_db_error().unwrap().detail(), Some("moat error code: invalid_api_key"));
}

#[tokio::test]
async fn moat_stays_read_only_and_answers_with_sqlstates() {
    let (s, acme) = two_tenants().await;
    let c = connect(&s, "acme", "admin@acme.example", PASSWORD).await.unwrap();
    // Drivers wrap reads in transactions; harmless settings are accepted.
    c.batch_execute("BEGIN").await.unwrap();
    c.batch_execute("SET application_name = 'metabase'").await.unwrap();
    c.batch_execute("SET extra_float_digits = 3").await.unwrap();
    c.batch_execute("SAVEPOINT a").await.unwrap();
    assert_eq!(rows(&c, "SELECT 1 + 1").await.unwrap(), vec![vec![Some("2".to_owned())]]);
    c.batch_execute("ROLLBACK TO SAVEPOINT a").await.unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    c.batch_execute("START TRANSACTION READ ONLY").await.unwrap();
    c.batch_execute("ROLLBACK").await.unwrap();
    for (sql, state) in [
        ("BEGIN READ WRITE", "25006"),
        ("DELETE FROM customers", "25006"),
        ("CREATE TABLE x (a int)", "25006"),
        ("COPY customers TO '/tmp/x'", "25006"),
        ("SET role = 'postgres'", "0A000"),
        ("SELEC 1", "42601"),
    ] {
        let e = c.batch_execute(sql).await.expect_err(sql);
        assert_eq!(sqlstate(&e), state, "{sql}: {e}");
    }
    // Each statement is audited like an HTTP query, format pgwire; the session start too.
    let ev = s.get("/v1/audit/events?action=query.execute&limit=100", &acme).await;
    let pg: Vec<_> = ev.body["events"].as_array().unwrap().iter().filter(|e| e["details"]["format"] == "pgwire").collect();
    assert!(pg.iter().any(|e| e["details"]["sql"] == "DELETE FROM customers" && e["outcome"] != "success"), "{pg:?}");
    let start = s.get("/v1/audit/events?action=pg.session.start&limit=10", &acme).await;
    let start = &start.body["events"][0];
    assert_eq!(start["details"]["application_name"], "pgtest");
    assert_eq!(start["user_agent"], "pgwire pgtest");
    drop(c);
    // The session's end is recorded when the client goes away.
    for _ in 0..100 {
        let end = s.get("/v1/audit/events?action=pg.session.end&limit=10", &acme).await;
        if !end.body["events"].as_array().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no pg.session.end record");
}

#[tokio::test]
async fn garbage_on_the_socket_closes_that_connection_only() {
    let (s, _) = two_tenants().await;
    for junk in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0, 0, 0, 4][..],                         // a length too short for a startup packet
        &[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0][..], // a 2 GiB startup packet
        &[0, 0, 0, 8, 0, 3, 0, 0][..],             // a startup without parameters, then silence
    ] {
        let mut sock = tokio::net::TcpStream::connect(s.pg).await.unwrap();
        sock.write_all(junk).await.unwrap();
        let mut buf = vec![0u8; 1024];
        // The server answers with an error or closes; it never hangs the test.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await;
    }
    // Signed in, then garbage: an unknown message type, a truncated message, a 2 GiB one.
    for junk in [&b"\x01\x00\x00\x00\x04"[..], &b"Q\x00\x00\x00\x20SELE"[..], &b"Q\x7f\xff\xff\xff"[..]] {
        let mut sock = signed_in_socket(&s).await;
        sock.write_all(junk).await.unwrap();
        let mut buf = vec![0u8; 4096];
        // An error response or a closed connection, never a hang.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf)).await;
        drop(sock);
    }
    let c = connect(&s, "acme", "v@acme.example", PASSWORD).await.unwrap();
    assert_eq!(rows(&c, "SELECT count(*) FROM customers").await.unwrap(), vec![vec![Some("2".to_owned())]]);
}

/// A raw socket past sign-in (startup, cleartext password, ReadyForQuery).
async fn signed_in_socket(s: &TestServer) -> tokio::net::TcpStream {
    let mut sock = tokio::net::TcpStream::connect(s.pg).await.unwrap();
    let mut body = vec![0, 3, 0, 0];
    for (k, v) in [("user", "v@acme.example"), ("database", "acme")] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    sock.write_all(&startup).await.unwrap();
    let mut auth = [0u8; 9];
    sock.read_exact(&mut auth).await.unwrap();
    assert_eq!(auth[0], b'R', "cleartext password requested");
    let mut pw = b"p".to_vec();
    pw.extend_from_slice(&((PASSWORD.len() + 5) as u32).to_be_bytes());
    pw.extend_from_slice(PASSWORD.as_bytes());
    pw.push(0);
    sock.write_all(&pw).await.unwrap();
    // Read until ReadyForQuery ('Z', length 5, status).
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.windows(6).any(|w| w[0] == b'Z' && w[1..5] == [0, 0, 0, 5]) {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), sock.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed during sign-in");
        seen.extend_from_slice(&buf[..n]);
    }
    sock
}

/// Debian's `psql`, when installed (CI has it): the acceptance command of the contract.
#[tokio::test]
async fn psql_shows_masked_customers() {
    let Ok(out) = std::process::Command::new("psql").arg("--version").output() else {
        eprintln!("psql not installed; skipped");
        return;
    };
    assert!(out.status.success());
    let (s, _) = two_tenants().await;
    let conn = format!("host={} port={} dbname=acme user=v@acme.example", s.pg.ip(), s.pg.port());
    let out = tokio::process::Command::new("psql")
        .args([conn.as_str(), "-X", "-A", "-t", "-c", "SELECT id, name, ssn FROM customers ORDER BY id"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = stdout.trim().lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(lines[0].starts_with("1|") && lines[0].ends_with("|****") && lines[1].starts_with("2|"), "{stdout}");
    for secret in ["Ann", "Canary", "6789", "Bob"] {
        assert!(!stdout.contains(secret), "{secret} leaked: {stdout}");
    }
    // psql's catalog commands: the caller's tenant only, and only the columns it may see.
    let psql = |command: &'static str| {
        let conn = conn.clone();
        async move {
            let out = tokio::process::Command::new("psql")
                .args([conn.as_str(), "-X", "-A", "-t", "-c", command])
                .env("PGPASSWORD", PASSWORD)
                .env("PGCONNECT_TIMEOUT", "10")
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "{command}: {stdout} {}", String::from_utf8_lossy(&out.stderr));
            stdout
        }
    };
    let dt = psql("\\dt").await;
    assert!(dt.lines().any(|l| l.starts_with("public|customers|table")), "{dt}");
    assert_eq!(dt.trim().lines().count(), 1, "{dt}");
    let d = psql("\\d customers").await;
    for col in ["id", "name", "email", "ssn", "plan"] {
        assert!(d.lines().any(|l| l.starts_with(&format!("{col}|"))), "{col} missing: {d}");
    }
    assert!(!d.contains("revenue"), "an omitted column shows in \\d: {d}");
    let l = psql("\\l").await;
    assert!(l.lines().any(|x| x.starts_with("acme|")), "{l}");
    assert!(!l.contains("beta"), "another tenant shows in \\l: {l}");
}

/// Runs an interop client (`program args… HOST PORT DBNAME USER PASSWORD`, signing in as the
/// acme Viewer) and returns the JSON object it prints.
async fn interop_client(s: &TestServer, program: &str, args: &[&str]) -> moat_testkit::serde_json::Value {
    let out = tokio::process::Command::new(program)
        .args(args)
        .args([&s.pg.ip().to_string(), &s.pg.port().to_string(), "acme", "v@acme.example", PASSWORD])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    moat_testkit::serde_json::from_str(&stdout).unwrap()
}

/// psycopg 3, SQLAlchemy 2 reflection and pandas.read_sql, the way notebook and BI users
/// connect (`tests/interop/pg_clients.py`). Runs when `MOAT_TEST_PYTHON` is set; CI installs
/// the packages.
#[tokio::test]
async fn python_drivers_see_what_http_sees() {
    let Ok(python) = std::env::var("MOAT_TEST_PYTHON") else {
        eprintln!("skipped: set MOAT_TEST_PYTHON=python3 (with psycopg, sqlalchemy, pandas installed) to run");
        return;
    };
    let (s, _) = two_tenants().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/pg_clients.py");
    let got = interop_client(&s, &python, &[script]).await;
    assert_eq!(got["psycopg_rows"], json!([[1, "a***@***.com", "****", "pro"], [2, "b***@***.com", "****", "free"]]));
    assert_eq!(got["psycopg_probe"], json!([]), "a raw SSN bound as a parameter matched a masked column");
    assert_eq!(got["psycopg_bound"], json!([[1, "pro"]]));
    assert_eq!(got["psycopg_prepared"], json!(1));
    assert_eq!(got["psycopg_delete"], "25006");
    assert_eq!(got["sqlalchemy_tables"], json!(["customers"]));
    let columns: Vec<&str> = got["sqlalchemy_columns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(columns, ["id", "name", "email", "ssn", "plan"], "revenue is omitted for a viewer");
    assert_eq!(got["pandas_columns"], json!(["id", "name", "email", "ssn", "plan"]));
    let text = got.to_string();
    for secret in ["Ann Canary", "ann@acme-secret.com", "123-45-6789", "Globex", "spy@", "revenue"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

/// `SHOW` and `pg_settings` answer from one list of moat's settings; unknown ones are refused.
#[tokio::test]
async fn show_and_pg_settings_agree() {
    let (s, _) = two_tenants().await;
    let c = connect(&s, "acme", "v@acme.example", PASSWORD).await.unwrap();
    for (shown, name, value) in [
        ("transaction isolation level", "transaction_isolation", "read committed"),
        ("TimeZone", "TimeZone", "UTC"),
        ("max_index_keys", "max_index_keys", "32"),
        ("transaction_read_only", "transaction_read_only", "on"),
    ] {
        assert_eq!(rows(&c, &format!("SHOW {shown}")).await.unwrap(), vec![vec![Some(value.to_owned())]], "{shown}");
        let listed = rows(&c, &format!("SELECT setting FROM pg_catalog.pg_settings WHERE name = '{name}'")).await.unwrap();
        assert_eq!(listed, vec![vec![Some(value.to_owned())]], "{name}");
    }
    assert_eq!(sqlstate(&rows(&c, "SHOW data_directory").await.unwrap_err()), "42704");
    let all = rows(&c, "SELECT name FROM pg_catalog.pg_settings").await.unwrap();
    assert!(!all.iter().flatten().flatten().any(|n| n.contains("data_directory") || n.contains("password")), "{all:?}");
}

/// PgJDBC, the driver under DBeaver, Metabase and most BI servers: DatabaseMetaData
/// introspection, plain and prepared statements (past the driver's prepare threshold), a cursor
/// with a fetch size, and PostgreSQL's failed-transaction rule (`tests/interop/JdbcClient.java`).
/// Runs when `MOAT_TEST_JDBC` names the driver's jar (Debian: libpostgresql-jdbc-java,
/// `/usr/share/java/postgresql.jar`); `java` comes from the PATH.
#[tokio::test]
async fn jdbc_tools_introspect_and_query_the_callers_tenant_only() {
    let Ok(jar) = std::env::var("MOAT_TEST_JDBC") else {
        eprintln!("skipped: set MOAT_TEST_JDBC=/usr/share/java/postgresql.jar (with java on the PATH) to run");
        return;
    };
    let (s, _) = two_tenants().await;
    let program = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/JdbcClient.java");
    let got = interop_client(&s, "java", &["-cp", &jar, program]).await;
    let text = got.to_string();
    assert_eq!(got["product"], "PostgreSQL 16", "{text}");
    assert_eq!(got["catalogs"], json!(["acme"]), "{text}");
    assert_eq!(got["tables"], json!(["customers"]), "{text}");
    assert_eq!(
        got["columns"],
        json!(["id:int8", "name:text", "email:text", "ssn:text", "plan:text"]),
        "revenue is omitted for a viewer: {text}"
    );
    for empty in ["primary_keys", "imported_keys", "index_info"] {
        assert_eq!(got[empty], json!([]), "{empty}: {text}");
    }
    assert_eq!(got["select"], json!([["1", "a***@***.com", "****", "pro"], ["2", "b***@***.com", "****", "free"]]), "{text}");
    assert_eq!(got["result_types"], json!(["id:int8", "name:text", "email:text", "ssn:text", "plan:text"]), "{text}");
    assert_eq!(got["bound"], json!([["1", "pro"]]), "{text}");
    assert_eq!(got["probe"], json!([]), "a raw SSN bound as a parameter matched a masked column: {text}");
    assert_eq!(got["cursor"], json!([["1"], ["2"]]), "{text}");
    assert_eq!(got["delete"], "25006", "{text}");
    assert_eq!(got["failed_transaction"], json!(["42703", "25P02", "recovered"]), "{text}");
    for secret in ["Ann Canary", "ann@acme-secret.com", "123-45-6789", "Globex", "spy@", "beta", "revenue"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}

#[tokio::test]
async fn connections_are_limited_per_tenant_and_closed_when_idle() {
    let s = TestServer::start_with(|c| {
        c.server.pg_max_connections_per_tenant = 2;
        c.server.pg_idle_timeout_s = 1;
    })
    .await;
    let acme = s.tenant_with_admin("acme").await;
    s.put_csv("/v1/tables/customers", &acme, CSV_A).await;
    let beta = s.tenant_with_admin("beta").await;
    let a1 = connect(&s, "acme", "admin@acme.example", PASSWORD).await.unwrap();
    let a2 = connect(&s, "acme", "admin@acme.example", PASSWORD).await.unwrap();
    let e = connect(&s, "acme", "admin@acme.example", PASSWORD).await.expect_err("over the limit");
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert_eq!(e.as_db_error().unwrap().detail(), Some("moat error code: too_many_connections"));
    // Another tenant's connections are counted apart.
    let b1 = connect(&s, "beta", "admin@beta.example", PASSWORD).await.unwrap();
    assert_eq!(rows(&b1, "SELECT 1").await.unwrap(), vec![vec![Some("1".to_owned())]]);
    // A closed connection gives its place back.
    drop(a2);
    let mut again = None;
    for _ in 0..50 {
        if let Ok(c) = connect(&s, "acme", "admin@acme.example", PASSWORD).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let a3 = again.expect("the place of a closed connection was not given back");
    // A statement keeps a connection alive; silence beyond the idle timeout closes it.
    assert_eq!(rows(&a1, "SELECT 1").await.unwrap(), vec![vec![Some("1".to_owned())]]);
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    assert!(rows(&a1, "SELECT 1").await.is_err(), "an idle connection stayed open");
    assert!(a3.is_closed() || rows(&a3, "SELECT 1").await.is_err());
    let mut reasons = Vec::new();
    for _ in 0..100 {
        let end = s.get("/v1/audit/events?action=pg.session.end&limit=10", &acme).await;
        reasons = end.body["events"].as_array().unwrap().iter().map(|e| e["details"]["reason"].clone()).collect();
        if reasons.iter().any(|r| r == "idle_timeout") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reasons.iter().any(|r| r == "idle_timeout"), "{reasons:?}");
    let _ = beta;
}

/// The masking-inference attempts of the HTTP tests, over pgwire: errors, aggregates, EXPLAIN
/// and the catalogs give nothing away.
#[tokio::test]
async fn inference_attempts_over_pgwire_leak_nothing() {
    let (s, _) = two_tenants().await;
    let c = connect(&s, "acme", "v@acme.example", PASSWORD).await.unwrap();
    let mut seen = String::new();
    // An engine error on a masked value is scrubbed.
    for sql in ["SELECT CAST(ssn AS INT) FROM customers", "SELECT CAST(email AS DATE) FROM customers"] {
        let e = c.query(sql, &[]).await.expect_err(sql);
        seen.push_str(&format!("{e:?} {}", e.as_db_error().map(|d| d.message()).unwrap_or_default()));
        let e = c.simple_query(sql).await.expect_err(sql);
        seen.push_str(&format!("{e:?}"));
    }
    // Aggregates see masked values only.
    let r = c.query_one("SELECT min(ssn), max(ssn), max(email), count(DISTINCT ssn) FROM customers", &[]).await.unwrap();
    assert_eq!((r.get::<_, String>(0), r.get::<_, String>(1)), ("****".to_owned(), "****".to_owned()));
    assert_eq!(r.get::<_, i64>(3), 1, "every SSN masks to the same value");
    seen.push_str(&r.get::<_, String>(2));
    // No plans for a Viewer.
    let e = c.query("EXPLAIN SELECT * FROM customers WHERE ssn = '123-45-6789'", &[]).await.expect_err("explain");
    assert_eq!(sqlstate(&e), "42501", "{e}");
    // The catalogs list the columns the caller sees, nothing of another tenant, no row counts.
    for sql in [
        "SELECT a.attname FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid WHERE c.relname = 'customers'",
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'customers'",
    ] {
        let cols: Vec<String> = c.query(sql, &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert!(cols.contains(&"ssn".to_owned()) && !cols.contains(&"revenue".to_owned()), "{sql}: {cols:?}");
    }
    let tuples: Vec<f64> = c
        .query("SELECT reltuples FROM pg_catalog.pg_class WHERE relname = 'customers'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tuples, [0.0]);
    let everything = c.simple_query("SELECT relname FROM pg_catalog.pg_class").await.unwrap();
    seen.push_str(&format!("{everything:?}"));
    for secret in ["123-45-6789", "6789", "ann@acme-secret.com", "Ann Canary", "Globex", "spy@", "revenue"] {
        assert!(!seen.contains(secret), "{secret} leaked: {seen}");
    }
}
