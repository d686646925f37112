//! Multi-factor sign-in from the attacker's side: codes replayed, guessed or copied between
//! accounts, a stolen session or API key trying to remove the factor, the PostgreSQL protocol
//! as a way around it, the secret at rest and in the audit trail, and the factor's keys
//! (rotation re-seals it; crypto-shredding makes sign-in fail closed).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use moat_core::clock::Clock;
use moat_core::mfa::MfaSecret;
use moat_store::MfaChange;
use moat_testkit::{PASSWORD, SUPER_ADMIN, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn login(s: &TestServer, tenant: Option<&str>, email: &str, code: Option<&str>) -> moat_testkit::Resp {
    let body = json!({"tenant": tenant, "email": email, "password": PASSWORD, "mfa_code": code});
    s.send(Method::POST, "/v1/auth/login", None, Some(body), None).await
}

/// Enrols and confirms a factor for the token's account; returns the app's view of it and the
/// recovery codes.
async fn enable(s: &TestServer, token: &str) -> (MfaSecret, Vec<String>) {
    let r = s.send(Method::POST, "/v1/auth/mfa", Some(token), None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let app = MfaSecret::from_setup_key(r.body["secret"].as_str().unwrap()).unwrap();
    let r = s.post("/v1/auth/mfa/confirm", token, json!({"code": code(s, &app, 0)})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let codes = r.body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    (app, codes)
}

/// The code the app shows `offset_s` from the server's clock.
fn code(s: &TestServer, app: &MfaSecret, offset_s: i64) -> String {
    app.code_at(u64::try_from(s.clock.now_s() + offset_s).unwrap()).unwrap()
}

fn details_reason(r: &moat_store::AuditRecord) -> Option<&str> {
    r.details["reason"].as_str()
}

#[tokio::test]
async fn a_code_signs_in_once_and_guessing_locks_the_account() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (uid, ana) = s.user(&admin, "acme", "ana@acme.example", "user").await;
    assert_eq!(s.get("/v1/auth/mfa", &ana).await.body["status"], "off");

    // Enrolment: pending until confirmed, and a pending factor is not asked for.
    let r = s.send(Method::POST, "/v1/auth/mfa", Some(&ana), None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let uri = r.body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/moat%20%28acme%29:ana%40acme.example?secret="), "{uri}");
    let app = MfaSecret::from_setup_key(r.body["secret"].as_str().unwrap()).unwrap();
    assert_eq!(s.get("/v1/auth/mfa", &ana).await.body["status"], "pending");
    assert_eq!(login(&s, Some("acme"), "ana@acme.example", None).await.status, StatusCode::OK);
    // A wrong confirmation code changes nothing.
    let wrong = format!("{:06}", (code(&s, &app, 0).parse::<u32>().unwrap() + 1) % 1_000_000);
    let r = s.post("/v1/auth/mfa/confirm", &ana, json!({"code": wrong})).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_mfa_code"));
    let confirm_code = code(&s, &app, 0);
    let r = s.post("/v1/auth/mfa/confirm", &ana, json!({"code": confirm_code})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let recovery: Vec<String> = r.body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(recovery.len(), 10);
    let status = s.get("/v1/auth/mfa", &ana).await.body;
    assert_eq!((status["status"].as_str(), status["recovery_codes_left"].as_u64()), (Some("on"), Some(10)));
    let r = s.post("/v1/auth/mfa/confirm", &ana, json!({"code": code(&s, &app, 30)})).await;
    assert_eq!(r.code(), "mfa_already_enabled");
    // Not replaceable without turning it off first (with a code).
    assert_eq!(s.send(Method::POST, "/v1/auth/mfa", Some(&ana), None, None).await.code(), "mfa_already_enabled");

    // The password alone no longer signs in, and that is not a failed attempt.
    let r = login(&s, Some("acme"), "ana@acme.example", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "mfa_required"));
    // The code that confirmed the factor was used: replaying it within its step is refused.
    let r = login(&s, Some("acme"), "ana@acme.example", Some(&confirm_code)).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_mfa_code"));
    // The next step's code works once.
    s.clock.advance_s(30);
    let next = code(&s, &app, 0);
    let r = login(&s, Some("acme"), "ana@acme.example", Some(&next)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.body.get("recovery_codes").is_none());
    assert_eq!(login(&s, Some("acme"), "ana@acme.example", Some(&next)).await.code(), "invalid_mfa_code");
    // The wrong password with the right code: the one answer for a bad password.
    let r = s
        .send(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"tenant": "acme", "email": "ana@acme.example", "password": "nope-nope-nope", "mfa_code": code(&s, &app, 30)})),
            None,
        )
        .await;
    assert_eq!(r.code(), "invalid_credentials");

    // A recovery code signs in once, typed loosely.
    let loose = recovery[0].replace('-', " ").to_lowercase();
    let r = login(&s, Some("acme"), "ana@acme.example", Some(&loose)).await;
    assert_eq!((r.status, r.body["recovery_codes_left"].as_u64()), (StatusCode::OK, Some(9)), "{:?}", r.body);
    assert_eq!(login(&s, Some("acme"), "ana@acme.example", Some(&recovery[0])).await.code(), "invalid_mfa_code");

    // What the trail says: the missing code recorded but not counted, replays and wrong codes
    // counted, and how each sign-in was made.
    let trail = s.audit_of(Some("acme")).await;
    let reasons: Vec<&str> = trail.iter().filter(|r| r.action == "auth.login").filter_map(details_reason).collect();
    for reason in ["mfa_required", "mfa_code_reused", "bad_mfa_code", "bad_password"] {
        assert!(reasons.contains(&reason), "{reason} in {reasons:?}");
    }
    let ways: Vec<&str> = trail.iter().filter(|r| r.action == "auth.login").filter_map(|r| r.details["mfa"].as_str()).collect();
    assert!(ways.contains(&"totp") && ways.contains(&"recovery_code"), "{ways:?}");
    for action in ["user.mfa_enroll", "user.mfa_enable"] {
        assert!(trail.iter().any(|r| r.action == action && r.resource.as_deref() == Some(format!("user:{uid}").as_str())), "{action}");
    }
    // No secret in any record: neither the key nor a recovery code, in any spelling.
    let all = serde_json::to_string(&trail.iter().map(|r| &r.details).collect::<Vec<_>>()).unwrap();
    assert!(!all.to_lowercase().contains(&app.setup_key().unwrap().to_lowercase()), "the key leaked");
    for c in &recovery {
        assert!(!all.contains(c.as_str()) && !all.contains(&c.replace('-', "")), "recovery code leaked");
    }

    // Guessing: wrong codes count like wrong passwords (one is counted already, the reused
    // recovery code); the fifth failure locks the account, and then even the right code is
    // refused.
    let live = [code(&s, &app, -30), code(&s, &app, 0), code(&s, &app, 30)];
    let guesses = (123_456..).map(|n| format!("{n:06}")).filter(|g| !live.contains(g));
    let answers: Vec<String> = {
        let mut out = Vec::new();
        for g in guesses.take(5) {
            out.push(login(&s, Some("acme"), "ana@acme.example", Some(&g)).await.code().to_owned());
        }
        out
    };
    assert_eq!(answers, ["invalid_mfa_code", "invalid_mfa_code", "invalid_mfa_code", "invalid_mfa_code", "account_locked"]);
    s.clock.advance_s(30);
    let r = login(&s, Some("acme"), "ana@acme.example", Some(&code(&s, &app, 0))).await;
    assert_eq!((r.status, r.code()), (StatusCode::TOO_MANY_REQUESTS, "account_locked"));
    assert!(s.audit_of(Some("acme")).await.iter().any(|r| r.action == "auth.lockout"));
}

#[tokio::test]
async fn the_secret_is_sealed_per_account_and_only_a_code_turns_it_off() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (ana_id, ana) = s.user(&admin, "acme", "ana@acme.example", "user").await;
    let (bob_id, _bob) = s.user(&admin, "acme", "bob@acme.example", "user").await;
    let (app, recovery) = enable(&s, &ana).await;

    // At rest: sealed under the tenant's DEK v1, none of the key in the clear.
    let t = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap();
    let ana_rec = s.state.stores.meta.user_by_id(Some(t.id), moat_core::ids::UserId::parse(&ana_id).unwrap()).await.unwrap().unwrap();
    let sealed = ana_rec.mfa.clone().unwrap().sealed;
    assert_eq!(moat_core::keys::sealed_version(&sealed), Some(1));
    let raw = MfaSecret::from_setup_key(&app.setup_key().unwrap()).unwrap().encode();
    assert!(!sealed.windows(8).any(|w| raw[1..21].windows(8).any(|k| k == w)), "key bytes in the clear");
    assert!(!sealed.windows(6).any(|w| w == &app.setup_key().unwrap().as_bytes()[..6]));

    // The sealed factor copied onto another account (a database attacker) does not open:
    // sign-in fails closed, as unavailable, and lets nobody in.
    let bob_uid = moat_core::ids::UserId::parse(&bob_id).unwrap();
    assert!(s.state.stores.meta.set_mfa(Some(t.id), bob_uid, MfaChange::Enroll { sealed: &sealed }, 1).await.unwrap());
    let bob_code = code(&s, &app, 30);
    let r = login(&s, Some("acme"), "bob@acme.example", Some(&bob_code)).await;
    assert_eq!((r.status, r.code()), (StatusCode::SERVICE_UNAVAILABLE, "secret_unreadable"), "{:?}", r.body);
    assert!(!r.body.to_string().contains(&app.setup_key().unwrap()));

    // A stolen API key cannot remove or replace the factor.
    let key = s.post("/v1/api-keys", &ana, json!({"name": "ci", "scopes": ["query:execute"]})).await;
    assert_eq!(key.status, StatusCode::CREATED, "{:?}", key.body);
    let api_key = key.body["key"].as_str().unwrap().to_owned();
    let r = s.post("/v1/auth/mfa/disable", &api_key, json!({"code": code(&s, &app, 30)})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "session_required"));
    assert_eq!(s.send(Method::POST, "/v1/auth/mfa", Some(&api_key), None, None).await.code(), "session_required");
    assert_eq!(s.get("/v1/auth/mfa", &api_key).await.body["status"], "on", "reading the status is fine");

    // New recovery codes, given a current code; the old ones stop working.
    s.clock.advance_s(30);
    assert_eq!(s.post("/v1/auth/mfa/recovery-codes", &ana, json!({"code": "000000"})).await.code(), "invalid_mfa_code");
    let r = s.post("/v1/auth/mfa/recovery-codes", &ana, json!({"code": code(&s, &app, 0)})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let old = recovery;
    let recovery: Vec<String> = r.body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    assert_eq!(recovery.len(), 10);
    assert!(recovery.iter().all(|c| !old.contains(c)));
    assert_eq!(login(&s, Some("acme"), "ana@acme.example", Some(&old[0])).await.code(), "invalid_mfa_code");
    assert_eq!(s.get("/v1/auth/mfa", &ana).await.body["recovery_codes_left"], 10);

    // A stolen session cannot remove it without a code; a wrong code is refused.
    let r = s.post("/v1/auth/mfa/disable", &ana, json!({"code": "000000"})).await;
    assert_eq!(r.code(), "invalid_mfa_code");
    let r = s.post("/v1/auth/mfa/disable", &ana, json!({"code": ""})).await;
    assert_eq!(r.code(), "invalid_mfa_code");
    let r = s.post("/v1/auth/mfa/disable", &ana, json!({"cod": "1"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid_body"), "{:?}", r.body);
    // A recovery code turns it off; the password alone signs in again.
    let r = s.post("/v1/auth/mfa/disable", &ana, json!({"code": recovery[9]})).await;
    assert_eq!((r.status, r.body["status"].as_str()), (StatusCode::OK, Some("off")), "{:?}", r.body);
    assert_eq!(login(&s, Some("acme"), "ana@acme.example", None).await.status, StatusCode::OK);
    assert_eq!(s.post("/v1/auth/mfa/disable", &ana, json!({"code": "1"})).await.code(), "mfa_not_enrolled");
    // A code for an account without a factor is a clear refusal, not silently ignored.
    assert_eq!(login(&s, Some("acme"), "ana@acme.example", Some("123456")).await.code(), "mfa_not_enrolled");

    // An Admin resets a lost factor: it is gone and the account's sessions end.
    let ana = s.login(Some("acme"), "ana@acme.example", PASSWORD).await;
    enable(&s, &ana).await;
    let viewer = s.user(&admin, "acme", "vic@acme.example", "viewer").await.1;
    let r = s.send(Method::DELETE, &format!("/v1/users/{ana_id}/mfa"), Some(&viewer), None, None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "a Viewer may not: {:?}", r.body);
    let other = s.tenant_with_admin("globex").await;
    let r = s.send(Method::DELETE, &format!("/v1/users/{ana_id}/mfa"), Some(&other), None, None).await;
    assert_eq!(r.code(), "user_not_found", "another tenant's Admin sees no such user");
    let r = s.send(Method::DELETE, &format!("/v1/users/{ana_id}/mfa"), Some(&admin), None, None).await;
    assert_eq!((r.status, r.body["mfa"].as_str()), (StatusCode::OK, Some("off")), "{:?}", r.body);
    assert_eq!(s.get("/v1/auth/whoami", &ana).await.status, StatusCode::UNAUTHORIZED, "sessions ended");
    assert_eq!(login(&s, Some("acme"), "ana@acme.example", None).await.status, StatusCode::OK);
    let users = s.get("/v1/users", &admin).await.body;
    assert!(users["users"].as_array().unwrap().iter().all(|u| u["mfa"] != "on"), "{users}");
    let trail = s.audit_of(Some("acme")).await;
    for action in ["user.mfa_disable", "user.mfa_reset", "user.mfa_recovery_codes"] {
        assert!(trail.iter().any(|r| r.action == action), "{action}");
    }
}

#[tokio::test]
async fn a_tenant_policy_makes_accounts_enrol_before_they_sign_in() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    s.user(&admin, "acme", "vic@acme.example", "viewer").await;
    assert_eq!(s.get("/v1/policies/mfa", &admin).await.body, json!({"required_for": "optional"}));
    for bad in [json!({"required_for": "sometimes"}), json!({"required_for": "admins", "x": 1}), json!([])] {
        let r = s.send(Method::PUT, "/v1/policies/mfa", Some(&admin), Some(bad.clone()), None).await;
        assert!(r.status.is_client_error(), "{bad}: {:?}", r.body);
    }
    let r = s.send(Method::PUT, "/v1/policies/mfa", Some(&admin), Some(json!({"required_for": "admins"})), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // Admins only: the viewer signs in with a password, the admin is sent to enrol.
    assert_eq!(login(&s, Some("acme"), "vic@acme.example", None).await.status, StatusCode::OK);
    let r = login(&s, Some("acme"), "admin@acme.example", None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "mfa_enrollment_required"));
    assert!(s.get("/v1/auth/mfa", &admin).await.body["required"].as_bool().unwrap());

    s.send(Method::PUT, "/v1/policies/mfa", Some(&admin), Some(json!({"required_for": "everyone"})), None).await;
    assert_eq!(login(&s, Some("acme"), "vic@acme.example", None).await.code(), "mfa_enrollment_required");
    // Enrolment by password checks the password like a sign-in.
    let enroll = |password: &str| json!({"tenant": "acme", "email": "vic@acme.example", "password": password});
    let r = s.send(Method::POST, "/v1/auth/mfa/enroll", None, Some(enroll("wrong-password-1")), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNAUTHORIZED, "invalid_credentials"));
    let r = s.send(Method::POST, "/v1/auth/mfa/enroll", None, Some(enroll(PASSWORD)), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let app = MfaSecret::from_setup_key(r.body["secret"].as_str().unwrap()).unwrap();
    // Still pending: the password alone is sent back to enrol; the code confirms and signs in.
    assert_eq!(login(&s, Some("acme"), "vic@acme.example", None).await.code(), "mfa_enrollment_required");
    let r = login(&s, Some("acme"), "vic@acme.example", Some(&code(&s, &app, 0))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["recovery_codes"].as_array().unwrap().len(), 10, "shown once, at confirmation");
    // Enabled now: enrolment by password cannot replace it.
    let r = s.send(Method::POST, "/v1/auth/mfa/enroll", None, Some(enroll(PASSWORD)), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "mfa_already_enabled"));
    assert_eq!(login(&s, Some("acme"), "vic@acme.example", None).await.code(), "mfa_required");
    let trail = s.audit_of(Some("acme")).await;
    assert!(trail.iter().any(|r| r.action == "policy.mfa_update"));
    assert!(trail.iter().any(|r| r.action == "user.mfa_enable" && r.actor["email"] == "vic@acme.example"));
}

#[tokio::test]
async fn the_postgres_protocol_takes_api_keys_from_mfa_accounts_not_passwords() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (_, ana) = s.user(&admin, "acme", "ana@acme.example", "user").await;
    enable(&s, &ana).await;
    let connect = |password: String| {
        let cfg = format!("host=127.0.0.1 port={} dbname=acme user=ana@acme.example password={password}", s.pg.port());
        async move { tokio_postgres::connect(&cfg, tokio_postgres::NoTls).await }
    };
    let err = connect(PASSWORD.into()).await.err().expect("a password alone is refused");
    let msg = err.as_db_error().map(|e| e.message().to_owned()).unwrap_or_default();
    assert!(msg.contains("API key"), "{msg}");
    let key = s.post("/v1/api-keys", &ana, json!({"name": "bi", "scopes": ["query:execute", "table:read"]})).await;
    let (client, conn) = connect(key.body["key"].as_str().unwrap().to_owned()).await.expect("an API key signs in");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    let trail = s.audit_of(Some("acme")).await;
    assert!(trail.iter().any(|r| r.action == "auth.login" && details_reason(r) == Some("mfa_required") && r.details["via"] == "pgwire"));
}

#[tokio::test]
async fn rotation_reseals_factors_and_shredding_makes_sign_in_fail_closed() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (ana_id, ana) = s.user(&admin, "acme", "ana@acme.example", "user").await;
    let (app, _) = enable(&s, &ana).await;
    let t = s.state.stores.meta.tenant_by_slug("acme").await.unwrap().unwrap();
    let uid = moat_core::ids::UserId::parse(&ana_id).unwrap();
    let sealed = || async { s.state.stores.meta.user_by_id(Some(t.id), uid).await.unwrap().unwrap().mfa.unwrap().sealed };

    let r = s.post("/v1/keys/rotate", &admin, json!({})).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let mut resealed = false;
    for _ in 0..400 {
        if moat_core::keys::sealed_version(&sealed().await) == Some(2) {
            resealed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resealed, "the factor is sealed under DEK v2 after rotation");
    s.clock.advance_s(30);
    let r = login(&s, Some("acme"), "ana@acme.example", Some(&code(&s, &app, 0))).await;
    assert_eq!(r.status, StatusCode::OK, "the same app still works: {:?}", r.body);
    let mut found = None;
    for _ in 0..100 {
        found = s.audit_of(Some("acme")).await.into_iter().find(|r| r.action == "key.reencrypt");
        if found.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(found.expect("key.reencrypt").details["secrets_resealed"], 1);

    // Deleting the tenant destroys its keys: the factor cannot be opened by anyone, and the
    // server says so rather than guessing.
    let before = sealed().await;
    let sa = s.super_admin().await;
    let r = s.send(Method::DELETE, "/v1/tenants/acme?confirm=acme", Some(&sa), None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let user = s.state.stores.meta.user_by_id(Some(t.id), uid).await.unwrap().unwrap();
    let e = moat_server::mfa::open(&s.state, &user, &before).await.unwrap_err();
    assert_eq!(e.code, "tenant_keys_destroyed");
    assert_eq!(login(&s, Some("acme"), "ana@acme.example", Some(&code(&s, &app, 30))).await.code(), "invalid_credentials");
}

#[tokio::test]
async fn a_super_admin_factor_is_sealed_under_the_platform_key() {
    let s = TestServer::start().await;
    let sa = s.super_admin().await;
    let (app, _) = enable(&s, &sa).await;
    let r = login(&s, None, SUPER_ADMIN, None).await;
    assert_eq!(r.code(), "mfa_required");
    s.clock.advance_s(30);
    let r = login(&s, None, SUPER_ADMIN, Some(&code(&s, &app, 0))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let me = s.state.stores.meta.user_by_email(None, &moat_core::ids::Email::parse(SUPER_ADMIN).unwrap()).await.unwrap().unwrap();
    assert_eq!(moat_core::keys::sealed_version(&me.mfa.unwrap().sealed), Some(0), "the platform key, not a tenant's DEK");
    let platform = s.audit_of(None).await;
    assert!(platform.iter().any(|r| r.action == "user.mfa_enable" && r.actor["super_admin"] == true));
    let _: Value = r.body;
}
