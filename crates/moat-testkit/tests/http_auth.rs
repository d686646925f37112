//! Authentication over HTTP, from the attacker's side: sessions and refresh rotation, reuse
//! detection, lockout progression (fake clock), indistinguishable failures, spraying limits,
//! forged and foreign tokens, malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::serde_json::json;
use moat_testkit::{PASSWORD, SUPER_ADMIN, TestServer};

#[tokio::test]
async fn login_sets_a_strict_refresh_cookie_and_no_store() {
    let s = TestServer::start().await;
    s.tenant_with_admin("acme").await;
    let r = s.login_raw(Some("acme"), "admin@acme.example", PASSWORD).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["token_type"], "Bearer");
    assert_eq!(r.body["expires_in"], 900);
    let cookie = r.cookies().into_iter().find(|c| c.starts_with("moat_refresh=")).expect("refresh cookie");
    for attr in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/v1/auth", "Max-Age=86400"] {
        assert!(cookie.contains(attr), "{cookie} lacks {attr}");
    }
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    assert!(r.header("x-request-id").is_some());
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let s = TestServer::start().await;
    s.tenant_with_admin("acme").await;
    let r = s.login_raw(Some("acme"), "admin@acme.example", PASSWORD).await;
    let access1 = r.body["access_token"].as_str().unwrap().to_owned();
    let c1 = r.refresh_cookie().unwrap();

    let r2 = s.send(Method::POST, "/v1/auth/refresh", None, None, Some(&format!("moat_refresh={c1}"))).await;
    assert_eq!(r2.status, StatusCode::OK, "{:?}", r2.body);
    let c2 = r2.refresh_cookie().unwrap();
    assert_ne!(c1, c2, "rotated");
    let access2 = r2.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/v1/auth/whoami", &access2).await.status, StatusCode::OK);

    // The thief replays the first cookie: reuse detected, the whole family dies.
    let reuse = s.send(Method::POST, "/v1/auth/refresh", None, None, Some(&format!("moat_refresh={c1}"))).await;
    assert_eq!((reuse.status, reuse.code()), (StatusCode::UNAUTHORIZED, "refresh_token_reused"));
    let legit = s.send(Method::POST, "/v1/auth/refresh", None, None, Some(&format!("moat_refresh={c2}"))).await;
    assert_eq!((legit.status, legit.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"));
    for t in [&access1, &access2] {
        let w = s.get("/v1/auth/whoami", t).await;
        assert_eq!((w.status, w.code()), (StatusCode::UNAUTHORIZED, "session_revoked"));
    }
    let trail = s.audit_of(Some("acme")).await;
    assert!(trail.iter().any(|e| e.action == "auth.refresh_reuse" && e.outcome == "denied"));
    assert!(trail.iter().any(|e| e.action == "auth.refresh" && e.outcome == "success"));
}

#[tokio::test]
async fn missing_or_garbage_refresh_cookie() {
    let s = TestServer::start().await;
    let r = s.send(Method::POST, "/v1/auth/refresh", None, None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "missing_refresh_token"));
    let r = s.send(Method::POST, "/v1/auth/refresh", None, None, Some("moat_refresh=AAAA")).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_refresh_token"));
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let r = s.send(Method::POST, "/v1/auth/logout", Some(&admin), None, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.cookies().iter().any(|c| c.starts_with("moat_refresh=;") && c.contains("Max-Age=0")));
    assert_eq!(s.get("/v1/auth/whoami", &admin).await.code(), "session_revoked");
    assert!(s.audit_of(Some("acme")).await.iter().any(|e| e.action == "auth.logout"));
}

/// Unknown tenant, unknown e-mail, wrong password, disabled account: one answer.
#[tokio::test]
async fn login_failures_are_indistinguishable() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (id, _) = s.user(&admin, "acme", "gone@acme.example", "viewer").await;
    assert_eq!(s.post(&format!("/v1/users/{id}/disable"), &admin, json!({})).await.status, StatusCode::OK);
    let attempts = [
        (Some("nosuch"), "admin@acme.example", PASSWORD),
        (Some("acme"), "nobody@acme.example", PASSWORD),
        (Some("acme"), "admin@acme.example", "Wrong-Passw0rd!"),
        (Some("acme"), "gone@acme.example", PASSWORD),
        (None, "admin@acme.example", PASSWORD),
        (Some("acme"), "not-an-email", PASSWORD),
    ];
    let mut answers = Vec::new();
    for (t, e, p) in attempts {
        let r = s.login_raw(t, e, p).await;
        answers.push((r.status, r.body.clone()));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "{answers:#?}");
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    assert_eq!(answers[0].1["error"]["code"], "invalid_credentials");
    // The audit trail keeps the real reasons for the tenant's admins.
    let reasons: Vec<String> = s
        .audit_of(Some("acme"))
        .await
        .iter()
        .filter(|e| e.action == "auth.login" && e.outcome == "failure")
        .map(|e| e.details["reason"].as_str().unwrap_or("").to_owned())
        .collect();
    for want in ["unknown_user", "bad_password", "account_disabled"] {
        assert!(reasons.iter().any(|r| r == want), "{reasons:?} lacks {want}");
    }
}

#[tokio::test]
async fn lockout_progresses_5_15_then_admin_unlock() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (uid, _) = s.user(&admin, "acme", "eve@acme.example", "viewer").await;
    let fail = |n: usize| {
        let s = &s;
        async move {
            for _ in 0..n {
                let r = s.login_raw(Some("acme"), "eve@acme.example", "Wrong-Passw0rd!").await;
                assert_eq!(r.code(), "invalid_credentials");
            }
        }
    };
    fail(5).await;
    // Locked: even the right password is refused, with Retry-After.
    let r = s.login_raw(Some("acme"), "eve@acme.example", PASSWORD).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "account_locked"));
    assert_eq!(r.header("retry-after").as_deref(), Some("300"));
    s.clock.advance_s(301);
    fail(5).await;
    let r = s.login_raw(Some("acme"), "eve@acme.example", PASSWORD).await;
    assert_eq!(r.header("retry-after").as_deref(), Some("900"));
    s.clock.advance_s(901);
    fail(5).await;
    s.clock.advance_s(7 * 86_400);
    let r = s.login_raw(Some("acme"), "eve@acme.example", PASSWORD).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "account_locked"), "no timeout frees the last stage");
    // The admin's session is 7 days old by now: log in again and unlock.
    let admin = s.login(Some("acme"), "admin@acme.example", PASSWORD).await;
    assert_eq!(s.post(&format!("/v1/users/{uid}/unlock"), &admin, json!({})).await.status, StatusCode::OK);
    s.login(Some("acme"), "eve@acme.example", PASSWORD).await;
    let trail = s.audit_of(Some("acme")).await;
    assert_eq!(trail.iter().filter(|e| e.action == "auth.lockout").count(), 3);
    assert!(trail.iter().any(|e| e.action == "user.unlock"));
}

/// An unknown account locks exactly like a known one.
#[tokio::test]
async fn unknown_accounts_lock_too() {
    let s = TestServer::start().await;
    s.tenant_with_admin("acme").await;
    for who in ["admin@acme.example", "ghost@acme.example"] {
        for _ in 0..5 {
            s.login_raw(Some("acme"), who, "Wrong-Passw0rd!").await;
        }
        let r = s.login_raw(Some("acme"), who, "Wrong-Passw0rd!").await;
        assert_eq!(
            (r.status, r.code(), r.header("retry-after")),
            (StatusCode::TOO_MANY_REQUESTS, "account_locked", Some("300".into())),
            "{who}"
        );
    }
}

#[tokio::test]
async fn password_spraying_is_limited_per_address() {
    let s = TestServer::start_with(|c| c.auth.ip_failure_limit = 8).await;
    s.tenant_with_admin("acme").await;
    for i in 0..8 {
        let r = s.login_raw(Some("acme"), &format!("user{i}@acme.example"), "Spring-2026!x").await;
        assert_eq!(r.code(), "invalid_credentials");
    }
    let r = s.login_raw(Some("acme"), "admin@acme.example", PASSWORD).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    assert!(r.header("retry-after").is_some());
}

/// With `cache.url` set and Redis unreachable, no sign-in gets past the limiter it cannot ask
/// (fail closed, 503), each refusal is on the record, and the server keeps serving.
#[tokio::test]
async fn sign_ins_fail_closed_when_the_shared_limiter_cannot_be_reached() {
    // Nothing listens on port 1.
    let s = TestServer::start_with(|c| c.cache.url = "redis://127.0.0.1:1".into()).await;
    for _ in 0..2 {
        let r = s.login_raw(None, SUPER_ADMIN, PASSWORD).await;
        assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "cache_unavailable"), "{:?}", r.body);
        assert!(!r.body.to_string().contains("127.0.0.1:1"), "the answer names the Redis address: {:?}", r.body);
    }
    let refused = s.audit_of(None).await.into_iter().filter(|r| r.action == "auth.login" && r.outcome.as_str() == "denied").count();
    assert_eq!(refused, 2, "each refused sign-in is recorded");
    assert_eq!(s.send(Method::GET, "/healthz", None, None, None).await.status, StatusCode::OK);
}

/// Replicas behind a load balancer share the per-address limiter through Redis (`cache.url`):
/// guesses spread over them count together, and every key carries the window as its TTL.
/// Runs when `MOAT_TEST_REDIS` is set.
#[tokio::test]
async fn replicas_share_the_sign_in_limiter_through_redis() {
    let Ok(url) = std::env::var("MOAT_TEST_REDIS") else {
        eprintln!("skipped: set MOAT_TEST_REDIS=redis://127.0.0.1:6379 to run");
        return;
    };
    // A namespace of this run's own: tests running beside it count apart.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let namespace = format!("moat-test-{}-{nanos}", std::process::id());
    let tweak = |c: &mut moat_server::config::Config| {
        c.cache.url = url.clone();
        c.cache.namespace = namespace.clone();
        c.auth.ip_failure_limit = 6;
        c.auth.ip_failure_window_s = 600;
    };
    let (a, b) = (TestServer::start_with(tweak).await, TestServer::start_with(tweak).await);
    a.tenant_with_admin("acme").await;
    b.tenant_with_admin("acme").await;
    // Six guesses, alternating between the replicas: three each, under the limit on either.
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        assert_eq!(replica.login_raw(Some("acme"), &format!("user{i}@acme.example"), "Spring-2026!x").await.code(), "invalid_credentials");
    }
    for replica in [&a, &b] {
        let r = replica.login_raw(Some("acme"), "admin@acme.example", PASSWORD).await;
        assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"), "{:?}", r.body);
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=600).contains(&retry), "retry-after {retry}");
    }
    let mut redis = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{namespace}:*")).query_async(&mut redis).await.unwrap();
    assert_eq!(keys, [format!("{namespace}:p:login-ip:127.0.0.1")], "platform keys are prefixed p:");
    let ttl: i64 = redis::cmd("TTL").arg(&keys[0]).query_async(&mut redis).await.unwrap();
    assert!((1..=600).contains(&ttl), "every key carries a TTL within the window: {ttl}");
    let _: () = redis::cmd("DEL").arg(&keys[0]).query_async(&mut redis).await.unwrap();
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused() {
    let s = TestServer::start().await;
    let other = TestServer::start().await;
    s.tenant_with_admin("acme").await;
    let foreign = other.tenant_with_admin("acme").await;
    for (bad, code) in [
        ("garbage", "invalid_token"),
        ("a.b.c", "invalid_token"),
        (foreign.as_str(), "invalid_token"),
        ("moat_sk_live_xxxxxxxx", "invalid_api_key"),
    ] {
        let r = s.get("/v1/auth/whoami", bad).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, code), "{bad}");
        assert_eq!(r.header("www-authenticate").as_deref(), Some("Bearer"));
    }
    let r = s.send(Method::GET, "/v1/auth/whoami", None, None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "missing_credentials"));
}

#[tokio::test]
async fn access_tokens_expire() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    s.clock.advance_s(900 + 31);
    assert_eq!(s.get("/v1/auth/whoami", &admin).await.code(), "invalid_token");
}

#[tokio::test]
async fn super_admin_logs_in_without_tenant() {
    let s = TestServer::start().await;
    let sa = s.super_admin().await;
    let me = s.get("/v1/auth/whoami", &sa).await;
    assert_eq!(me.body["role"], "super_admin");
    assert!(me.body["tenant"].is_null());
    assert_eq!(
        s.login_raw(Some("acme"), SUPER_ADMIN, PASSWORD).await.code(),
        "invalid_credentials",
        "no tenant login for the platform account"
    );
}

#[tokio::test]
async fn bad_json_is_a_clear_400() {
    let s = TestServer::start().await;
    let raw = |body: &'static str, ctype: &'static str| {
        let s = &s;
        async move {
            let r = s.http.post(format!("{}/v1/auth/login", s.base)).header("content-type", ctype).body(body).send().await.unwrap();
            let status = r.status();
            (status, r.json::<moat_testkit::serde_json::Value>().await.unwrap())
        }
    };
    let (st, b) = raw("{not json", "application/json").await;
    assert_eq!((st, b["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("malformed_json")));
    let (st, b) = raw(r#"{"email":"a@b.example","password":"x","admin":true}"#, "application/json").await;
    assert_eq!((st, b["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_body")));
    assert!(b["error"]["message"].as_str().unwrap().contains("admin"), "names the field: {b}");
    let (st, b) = raw(r#"{"email":"a@b.example"}"#, "application/json").await;
    assert!(st == StatusCode::BAD_REQUEST && b["error"]["message"].as_str().unwrap().contains("password"), "{b}");
    // serde would read a struct from an array (["a@b.example","x"] as email and password):
    // every body is an object, anything else is refused.
    for body in [r#"["a@b.example","x",null,null]"#, "[]", "null", "\"x\"", "7"] {
        let (st, b) = raw(body, "application/json").await;
        assert_eq!((st, b["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_body")), "{body}: {b}");
    }
    let (st, b) = raw(r#"{"email":"a@b.example","password":"x"}"#, "text/plain").await;
    assert_eq!((st, b["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("unsupported_media_type")));
    let big = format!(r#"{{"email":"a@b.example","password":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let r = s.http.post(format!("{}/v1/auth/login", s.base)).header("content-type", "application/json").body(big).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json::<moat_testkit::serde_json::Value>().await.unwrap()["error"]["code"], "body_too_large");
}

#[tokio::test]
async fn password_change_enforces_policy_history_and_ends_sessions() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let put = |tok: &str, cur: &str, new: &str| {
        let (s, tok, body) = (&s, tok.to_owned(), json!({"current_password": cur, "new_password": new}));
        async move { s.send(Method::PUT, "/v1/auth/password", Some(&tok), Some(body), None).await }
    };
    assert_eq!(put(&admin, "Wrong-Passw0rd!", "Other-Gazelle-9").await.code(), "invalid_current_password");
    assert_eq!(put(&admin, PASSWORD, "weak").await.code(), "weak_password");
    assert_eq!(put(&admin, PASSWORD, PASSWORD).await.code(), "password_reused");
    assert_eq!(put(&admin, PASSWORD, "Other-Gazelle-9").await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/v1/auth/whoami", &admin).await.code(), "session_revoked");
    let t = s.login(Some("acme"), "admin@acme.example", "Other-Gazelle-9").await;
    // Back to the original: it is in the history.
    assert_eq!(put(&t, "Other-Gazelle-9", PASSWORD).await.code(), "password_reused");
}
