//! Administration and authorization over HTTP, from the attacker's side: another tenant's
//! objects (404), role escalation, suspension, API-key scopes/expiry/revocation, the Super
//! Admin's cross-tenant actions, and the completeness of the audit trail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use moat_testkit::reqwest::{Method, StatusCode};
use moat_testkit::serde_json::{Value, json};
use moat_testkit::{PASSWORD, TestServer};

#[tokio::test]
async fn tenant_creation_rules() {
    let s = TestServer::start().await;
    let sa = s.super_admin().await;
    let r = s.post("/v1/tenants", &sa, json!({"slug": "acme", "name": "Acme"})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.body["slug"], "acme");
    assert_eq!(s.post("/v1/tenants", &sa, json!({"slug": "acme", "name": "Again"})).await.code(), "tenant_exists");
    for bad in ["Acme", "a", "admin", "x_y", "-ab", "ab-", "a/b", "public"] {
        let r = s.post("/v1/tenants", &sa, json!({"slug": bad, "name": "x"})).await;
        assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_slug"), "{bad}");
    }
    assert_eq!(s.post("/v1/tenants", &sa, json!({"slug": "okay", "name": ""})).await.code(), "invalid_name");
    // A weak first-admin password leaves no tenant behind.
    let r =
        s.post("/v1/tenants", &sa, json!({"slug": "half", "name": "Half", "admin": {"email": "a@half.example", "password": "weak"}})).await;
    assert_eq!(r.code(), "weak_password");
    assert_eq!(s.get("/v1/tenants/half", &sa).await.status, StatusCode::NOT_FOUND);
    let list = s.get("/v1/tenants", &sa).await;
    assert_eq!(list.body["tenants"].as_array().unwrap().len(), 1);
    // Nobody but the Super Admin manages tenants.
    let admin = s.tenant_with_admin("globex").await;
    let r = s.post("/v1/tenants", &admin, json!({"slug": "evil", "name": "x"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));
    assert_eq!(s.get("/v1/tenants", &admin).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn another_tenants_objects_are_404() {
    let s = TestServer::start().await;
    let a = s.tenant_with_admin("acme").await;
    let b = s.tenant_with_admin("globex").await;
    let (victim, _) = s.user(&b, "globex", "victim@globex.example", "editor").await;
    let (mine, _) = s.user(&a, "acme", "mine@acme.example", "viewer").await;
    for (m, path) in [
        (Method::GET, format!("/v1/users/{victim}")),
        (Method::POST, format!("/v1/users/{victim}/disable")),
        (Method::POST, format!("/v1/users/{victim}/unlock")),
        (Method::PUT, format!("/v1/users/{victim}/role")),
        (Method::GET, format!("/v1/users/{mine}?tenant=globex")),
        (Method::GET, "/v1/users?tenant=globex".to_owned()),
        (Method::GET, "/v1/audit/events?tenant=globex".to_owned()),
    ] {
        let body = (m == Method::PUT).then(|| json!({"role": "viewer"}));
        let r = s.send(m.clone(), &path, Some(&a), body, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{m} {path}: {:?}", r.body);
        assert!(!r.body.to_string().contains("victim"), "nothing of B leaks");
    }
    let users = s.get("/v1/users", &a).await;
    let emails: Vec<&str> = users.body["users"].as_array().unwrap().iter().map(|u| u["email"].as_str().unwrap()).collect();
    assert_eq!(emails, ["admin@acme.example", "mine@acme.example"]);
    assert!(users.body.to_string().find("password").is_none(), "no hashes in listings");
    // B's victim is untouched.
    assert_eq!(s.get(&format!("/v1/users/{victim}"), &b).await.body["status"], "active");
}

#[tokio::test]
async fn role_escalation_is_refused() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (_, viewer) = s.user(&admin, "acme", "v@acme.example", "viewer").await;
    let (editor_id, editor) = s.user(&admin, "acme", "e@acme.example", "editor").await;
    let (_, auditor) = s.user(&admin, "acme", "aud@acme.example", "auditor").await;
    for (who, tok) in [("viewer", &viewer), ("editor", &editor), ("auditor", &auditor)] {
        let r = s.post("/v1/users", tok, json!({"email": "x@acme.example", "password": PASSWORD, "role": "admin"})).await;
        assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"), "{who}");
        assert_eq!(s.get("/v1/users", tok).await.status, StatusCode::FORBIDDEN, "{who}");
        let r = s.send(Method::PUT, &format!("/v1/users/{editor_id}/role"), Some(tok), Some(json!({"role": "admin"})), None).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{who}");
    }
    let r = s.post("/v1/users", &admin, json!({"email": "x@acme.example", "password": PASSWORD, "role": "super_admin"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_role"));
    let r = s.post("/v1/users", &admin, json!({"email": "x@acme.example", "password": PASSWORD, "role": "root"})).await;
    assert_eq!(r.code(), "invalid_role");
    let me = s.get("/v1/auth/whoami", &admin).await.body["user_id"].as_str().unwrap().to_owned();
    let r = s.send(Method::PUT, &format!("/v1/users/{me}/role"), Some(&admin), Some(json!({"role": "viewer"})), None).await;
    assert_eq!(r.code(), "cannot_change_own_role");
    assert_eq!(s.post(&format!("/v1/users/{me}/disable"), &admin, json!({})).await.code(), "cannot_disable_self");
    // Every denial is in the trail.
    let denials = s.audit_of(Some("acme")).await.into_iter().filter(|e| e.action == "authz.denied").count();
    assert!(denials >= 9, "{denials}");
}

#[tokio::test]
async fn demotion_and_disabling_take_effect_at_once() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (id, other_admin) = s.user(&admin, "acme", "a2@acme.example", "admin").await;
    assert_eq!(s.get("/v1/users", &other_admin).await.status, StatusCode::OK);
    let r = s.send(Method::PUT, &format!("/v1/users/{id}/role"), Some(&admin), Some(json!({"role": "viewer"})), None).await;
    assert_eq!(r.body["role"], "viewer");
    assert_eq!(s.get("/v1/users", &other_admin).await.status, StatusCode::FORBIDDEN, "the old token carries the new role");
    s.post(&format!("/v1/users/{id}/disable"), &admin, json!({})).await;
    assert_eq!(s.get("/v1/auth/whoami", &other_admin).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(s.login_raw(Some("acme"), "a2@acme.example", PASSWORD).await.code(), "invalid_credentials");
    s.post(&format!("/v1/users/{id}/enable"), &admin, json!({})).await;
    s.login(Some("acme"), "a2@acme.example", PASSWORD).await;
}

#[tokio::test]
async fn suspended_tenants_are_refused_everywhere() {
    let s = TestServer::start().await;
    let sa = s.super_admin().await;
    let admin = s.tenant_with_admin("acme").await;
    let key = s.post("/v1/api-keys", &admin, json!({"name": "ci", "scopes": ["user:read"]})).await.body["key"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/v1/users", &key).await.status, StatusCode::OK);
    assert_eq!(s.post("/v1/tenants/acme/suspend", &sa, json!({})).await.body["status"], "suspended");
    let r = s.get("/v1/users", &admin).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "tenant_suspended"));
    assert_eq!(s.get("/v1/users", &key).await.code(), "invalid_api_key");
    assert_eq!(s.login_raw(Some("acme"), "admin@acme.example", PASSWORD).await.code(), "invalid_credentials");
    assert_eq!(s.post("/v1/tenants/acme/resume", &sa, json!({})).await.body["status"], "active");
    assert_eq!(s.get("/v1/users", &admin).await.status, StatusCode::OK);
    assert_eq!(s.get("/v1/users", &key).await.status, StatusCode::OK);
    assert_eq!(s.post("/v1/tenants/nosuch/suspend", &sa, json!({})).await.status, StatusCode::NOT_FOUND);
    let platform = s.audit_of(None).await;
    assert!(platform.iter().any(|e| e.action == "tenant.suspend") && platform.iter().any(|e| e.action == "tenant.resume"));
}

#[tokio::test]
async fn tenant_isolation_is_validated_at_provisioning_and_on_demand() {
    let s = TestServer::start().await;
    let sa = s.super_admin().await;
    let a = s.tenant_with_admin("acme").await;
    let b = s.tenant_with_admin("globex").await;
    for (admin, slug) in [(&a, "acme"), (&b, "globex")] {
        s.user(admin, slug, &format!("canary@{slug}.example"), "viewer").await;
        assert!(s.put_csv("/v1/tables/customers", admin, moat_testkit::customers_csv(5)).await.status.is_success());
    }
    let r = s.post("/v1/tenants/acme/validate", &sa, json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!((r.body["slug"].as_str(), r.body["passed"].as_bool()), (Some("acme"), Some(true)), "{:#}", r.body);
    let want = if s.postgres().is_some() { "postgres" } else { "sqlite" };
    assert_eq!(r.body["backend"], want);
    let checks = r.body["checks"].as_array().unwrap();
    assert!(checks.len() >= 5 && checks.iter().all(|c| c["passed"] == true), "{checks:#?}");
    // Provisioning validated each tenant; each run is audited in both trails.
    for trail in [None, Some("acme")] {
        let runs = s.audit_of(trail).await.into_iter().filter(|e| e.action == "tenant.validate" && e.outcome == "success").count();
        assert!(runs >= 2, "{trail:?}: {runs} validations recorded");
    }
    // Only the Super Admin validates; an unknown tenant is 404.
    assert_eq!(s.post("/v1/tenants/acme/validate", &a, json!({})).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.post("/v1/tenants/nosuch/validate", &sa, json!({})).await.code(), "tenant_not_found");

    // On PostgreSQL, a database that lost a policy is caught: a new tenant is created
    // suspended, validation names the break, and nobody resumes it until it is fixed.
    let Some(db) = s.postgres() else { return };
    db.attack(&["ALTER POLICY tenant_scope ON moat.users USING (true)".to_owned()]).await;
    let r = s.post("/v1/tenants", &sa, json!({"slug": "initech", "name": "Initech"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::INTERNAL_SERVER_ERROR, "isolation_failed"), "{:?}", r.body);
    let msg = r.body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("suspended") && msg.contains("rows:users"), "{msg}");
    assert_eq!(s.get("/v1/tenants/initech", &sa).await.body["status"], "suspended");
    let r = s.post("/v1/tenants/acme/validate", &sa, json!({})).await;
    assert_eq!(r.body["passed"], false);
    assert!(s.audit_of(Some("acme")).await.iter().any(|e| e.action == "tenant.validate" && e.outcome == "failure"));
    assert_eq!(s.post("/v1/tenants/initech/resume", &sa, json!({})).await.code(), "isolation_failed");
    db.attack(&["ALTER POLICY tenant_scope ON moat.users USING (moat.platform_scope() OR tenant_id = moat.current_tenant())".to_owned()])
        .await;
    assert_eq!(s.post("/v1/tenants/initech/resume", &sa, json!({})).await.body["status"], "active");
}

#[tokio::test]
async fn super_admin_acts_inside_a_tenant_and_is_audited_there() {
    let s = TestServer::start().await;
    let sa = s.super_admin().await;
    s.tenant_with_admin("acme").await;
    let r = s.post("/v1/users", &sa, json!({"email": "new@acme.example", "password": PASSWORD, "role": "editor"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "tenant_required"));
    let r = s.post("/v1/users?tenant=acme", &sa, json!({"email": "new@acme.example", "password": PASSWORD, "role": "editor"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(s.get("/v1/users?tenant=nosuch", &sa).await.code(), "tenant_not_found");
    let rec =
        s.audit_of(Some("acme")).await.into_iter().find(|e| e.action == "user.create" && e.details["email"] == "new@acme.example").unwrap();
    assert_eq!(rec.actor["super_admin"], true);
    assert_eq!(rec.actor["role"], "super_admin");
    s.login(Some("acme"), "new@acme.example", PASSWORD).await;
}

#[tokio::test]
async fn api_keys_scopes_expiry_revocation() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let (_, viewer) = s.user(&admin, "acme", "v@acme.example", "viewer").await;
    let r = s.post("/v1/api-keys", &viewer, json!({"name": "mine", "scopes": ["user:read"]})).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "scope_exceeds_creator"));
    assert_eq!(s.post("/v1/api-keys", &viewer, json!({"name": "x", "scopes": ["nope:read"]})).await.code(), "invalid_scope");
    assert_eq!(
        s.post("/v1/api-keys", &viewer, json!({"name": "x", "scopes": ["query:execute"], "expires_in_days": 366})).await.code(),
        "invalid_expiry"
    );
    assert_eq!(s.post("/v1/api-keys", &viewer, json!({"name": "x", "scopes": []})).await.code(), "invalid_scope");

    let r = s.post("/v1/api-keys", &admin, json!({"name": "reader", "scopes": ["user:read"], "expires_in_days": 30})).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let key = r.body["key"].as_str().unwrap().to_owned();
    let key_id = r.body["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("moat_sk_live_") && key.len() == 62, "{key}");
    assert_eq!(s.get("/v1/users", &key).await.status, StatusCode::OK);
    let r = s.post("/v1/users", &key, json!({"email": "k@acme.example", "password": PASSWORD, "role": "viewer"})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "scope limits the admin's key");
    assert_eq!(s.send(Method::POST, "/v1/auth/logout", Some(&key), None, None).await.code(), "not_a_session");
    let listed = s.get("/v1/api-keys", &admin).await;
    let listed = listed.body["keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].to_string().contains(&key[13..]), "the secret is never listed");
    assert!(listed[0]["last_used_at"].is_i64());
    // The viewer cannot revoke the admin's key, and cannot see it.
    assert_eq!(s.get("/v1/api-keys", &viewer).await.body["keys"].as_array().unwrap().len(), 0);
    assert_eq!(s.get("/v1/api-keys?all=true", &viewer).await.status, StatusCode::FORBIDDEN);
    assert_eq!(s.send(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&viewer), None, None).await.status, StatusCode::NOT_FOUND);
    // Another tenant's admin cannot either.
    let other = s.tenant_with_admin("globex").await;
    assert_eq!(s.send(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&other), None, None).await.status, StatusCode::NOT_FOUND);
    assert_eq!(s.get("/v1/users", &key).await.status, StatusCode::OK);
    // Expiry.
    s.clock.advance_s(31 * 86_400);
    assert_eq!(s.get("/v1/users", &key).await.code(), "invalid_api_key");
    s.clock.advance_s(-31 * 86_400);
    assert_eq!(s.send(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&admin), None, None).await.status, StatusCode::NO_CONTENT);
    assert_eq!(s.get("/v1/users", &key).await.code(), "invalid_api_key");
    // A key with a flipped character never reaches the store.
    let mut bad = key.clone().into_bytes();
    bad[20] = if bad[20] == b'A' { b'B' } else { b'A' };
    assert_eq!(s.get("/v1/users", &String::from_utf8(bad).unwrap()).await.code(), "invalid_api_key");
}

#[tokio::test]
async fn the_audit_trail_is_complete_and_verifies() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    s.login_raw(Some("acme"), "admin@acme.example", "Wrong-Passw0rd!").await;
    let (uid, viewer) = s.user(&admin, "acme", "v@acme.example", "viewer").await;
    s.get("/v1/users", &viewer).await;
    s.send(Method::PUT, &format!("/v1/users/{uid}/role"), Some(&admin), Some(json!({"role": "user"})), None).await;
    let k = s.post("/v1/api-keys", &admin, json!({"name": "k", "scopes": ["user:read"]})).await;
    s.send(Method::DELETE, &format!("/v1/api-keys/{}", k.body["id"].as_str().unwrap()), Some(&admin), None, None).await;
    s.post(&format!("/v1/users/{uid}/disable"), &admin, json!({})).await;
    s.post(&format!("/v1/users/{uid}/unlock"), &admin, json!({})).await;

    let page = s.get("/v1/audit/events?limit=1000", &admin).await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    let events = page.body["events"].as_array().unwrap();
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for want in [
        "tenant.create",
        "user.create",
        "auth.login",
        "authz.denied",
        "user.role_change",
        "key.create",
        "key.revoke",
        "user.disable",
        "user.unlock",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let failed: Vec<&Value> = events.iter().filter(|e| e["action"] == "auth.login" && e["outcome"] == "failure").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["source_ip"], "127.0.0.1");
    assert_eq!(failed[0]["user_agent"], "moat-testkit");
    assert!(failed[0]["request_id"].is_string());
    assert!(!page.body.to_string().contains("Wrong-Passw0rd!"), "no secret in the trail");
    // Filters.
    let only = s.get("/v1/audit/events?action=user.create", &admin).await;
    assert!(only.body["events"].as_array().unwrap().iter().all(|e| e["action"] == "user.create"));
    let q = s.get("/v1/audit/events?q=v%40acme.example", &admin).await;
    assert!(!q.body["events"].as_array().unwrap().is_empty());
    assert_eq!(s.get("/v1/audit/events?from=yesterday", &admin).await.code(), "invalid_query");
    assert_eq!(s.get("/v1/audit/events?limit=0", &admin).await.code(), "invalid_query");
    // Auditors read the trail; viewers do not.
    let (_, auditor) = s.user(&admin, "acme", "aud@acme.example", "auditor").await;
    let v = s.get("/v1/audit/verify", &auditor).await;
    assert_eq!(v.body["ok"], true, "{:?}", v.body);
    assert!(v.body["checked"].as_u64().unwrap() > 10);
    assert_eq!(s.get("/v1/audit/events", &viewer).await.status, StatusCode::UNAUTHORIZED, "disabled viewer");
}

#[tokio::test]
async fn meta_endpoints_and_openapi_match_the_router() {
    let s = TestServer::start().await;
    let r = s.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(s.send(Method::GET, "/readyz", None, None, None).await.body["status"], "ready");
    let jwks = s.send(Method::GET, "/.well-known/jwks.json", None, None, None).await;
    let k = &jwks.body["keys"][0];
    assert_eq!((k["kty"].as_str(), k["alg"].as_str(), k["use"].as_str()), (Some("RSA"), Some("RS256"), Some("sig")));
    assert!(k["kid"].is_string() && k["n"].is_string() && k["e"].is_string());
    assert!(k.get("d").is_none(), "no private parts");
    let doc = s.send(Method::GET, "/v1/openapi.json", None, None, None).await.body;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20);
    assert_eq!(doc["paths"]["/v1/users"]["post"]["x-moat-permission"], "user:create");
    // Every documented operation is routed (an unknown route answers route_not_found).
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{slug}", "acme").replace("{id}", "00000000-0000-0000-0000-000000000000");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = s.send(m, &concrete, None, None, None).await;
            assert_ne!(r.code(), "route_not_found", "{method} {path}");
            assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        }
    }
    let r = s.send(Method::GET, "/v1/nope", None, None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "route_not_found"));
    let r = s.send(Method::DELETE, "/v1/users", None, None, None).await;
    assert_eq!((r.status, r.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"));
}

#[tokio::test]
async fn each_tenant_has_its_own_password_policy() {
    let s = TestServer::start().await;
    let admin = s.tenant_with_admin("acme").await;
    let other = s.tenant_with_admin("globex").await;
    assert_eq!(s.get("/v1/policies/password", &admin).await.body["min_chars"], 8);
    let r = s.send(Method::PUT, "/v1/policies/password", Some(&admin), Some(json!({"min_chars": 16, "history": 10})), None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["require_special"], true, "unspecified fields keep the default");
    let r = s.post("/v1/users", &admin, json!({"email": "x@acme.example", "password": PASSWORD, "role": "viewer"})).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNPROCESSABLE_ENTITY, "weak_password"));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("16"));
    assert_eq!(
        s.post("/v1/users", &admin, json!({"email": "x@acme.example", "password": "Tr1cky-Gazelle-Herd", "role": "viewer"})).await.status,
        StatusCode::CREATED
    );
    // globex is unaffected.
    assert_eq!(
        s.post("/v1/users", &other, json!({"email": "x@globex.example", "password": PASSWORD, "role": "viewer"})).await.status,
        StatusCode::CREATED
    );
    // Bounds, unknown fields, and who may touch it.
    assert_eq!(
        s.send(Method::PUT, "/v1/policies/password", Some(&admin), Some(json!({"min_chars": 4})), None).await.code(),
        "invalid_policy"
    );
    assert_eq!(s.send(Method::PUT, "/v1/policies/password", Some(&admin), Some(json!({"min_len": 4})), None).await.code(), "invalid_body");
    let (_, viewer) = s.user(&other, "globex", "v@globex.example", "viewer").await;
    assert_eq!(s.get("/v1/policies/password", &viewer).await.status, StatusCode::FORBIDDEN);
    let rec = s.audit_of(Some("acme")).await.into_iter().find(|e| e.action == "policy.password_update").unwrap();
    assert_eq!(rec.details["to"]["min_chars"], 16);
    assert_eq!(rec.details["from"]["min_chars"], 8);
}

/// Membership is per tenant: one e-mail, an Admin in one tenant and a Viewer in another.
#[tokio::test]
async fn one_email_different_roles_per_tenant() {
    let s = TestServer::start().await;
    let acme = s.tenant_with_admin("acme").await;
    let globex = s.tenant_with_admin("globex").await;
    s.user(&acme, "acme", "pat@corp.example", "admin").await;
    s.user(&globex, "globex", "pat@corp.example", "viewer").await;
    let in_acme = s.login(Some("acme"), "pat@corp.example", PASSWORD).await;
    let in_globex = s.login(Some("globex"), "pat@corp.example", PASSWORD).await;
    assert_eq!(s.get("/v1/auth/whoami", &in_acme).await.body["role"], "admin");
    assert_eq!(s.get("/v1/auth/whoami", &in_globex).await.body["role"], "viewer");
    assert_eq!(s.get("/v1/users", &in_acme).await.status, StatusCode::OK);
    assert_eq!(s.get("/v1/users", &in_globex).await.status, StatusCode::FORBIDDEN);
    // The acme admin token gives nothing in globex.
    assert_eq!(s.get("/v1/users?tenant=globex", &in_acme).await.status, StatusCode::NOT_FOUND);
}
