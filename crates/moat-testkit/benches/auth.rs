//! Authentication benchmarks. Prints p50/p99 and the ratio to a baseline measured in the same
//! run; asserts nothing about time (machines are noisy).
//!
//! `cargo bench -p moat-testkit --profile bench-fast --bench auth`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use moat_core::authz::{Authorizer, RoleAuthorizer, Target};
use moat_core::ids::{Email, SessionId, TenantId, UserId};
use moat_core::permission::Permission;
use moat_core::principal::{Principal, Scope};
use moat_core::role::Role;
use moat_core::token::{AccessGrant, KeySet, SigningKey};
use moat_testkit::bench::{Stats, measure, row};
use moat_testkit::{PASSWORD, TestServer};

fn main() {
    println!("moat auth benchmarks (single thread; ratios are p50 / baseline p50)");
    // --- token verification vs the bare RSA signature check it contains
    let (key, pem) = SigningKey::generate().unwrap();
    let kid = key.kid().to_owned();
    let ks = KeySet::new(vec![SigningKey::from_pem(&kid, &pem).unwrap()], "moat", "moat-api", 30).unwrap();
    let grant = AccessGrant {
        scope: Scope::Tenant(TenantId::new()),
        user_id: UserId::new(),
        email: Email::parse("a@acme.example").unwrap(),
        role: Role::Editor,
        session_id: SessionId::new(),
    };
    let now = 1_800_000_000;
    let (token, _) = ks.issue(&grant, now).unwrap();
    let jwk = &ks.jwks().keys[0];
    let (n, e) = match &jwk.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::RSA(p) => (B64.decode(&p.n).unwrap(), B64.decode(&p.e).unwrap()),
        _ => panic!("not RSA"),
    };
    let (signing_input, sig) = token.rsplit_once('.').unwrap();
    let sig = B64.decode(sig).unwrap();
    let public = aws_lc_rs::signature::RsaPublicKeyComponents { n: &n, e: &e };
    let raw = measure(20_000, || {
        public.verify(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, black_box(signing_input.as_bytes()), &sig).unwrap();
    });
    let full = measure(20_000, || {
        black_box(ks.verify(black_box(&token), now).unwrap());
    });
    row("token verify (RS256 + claims)", &full, &raw, "raw RSA verify");

    // --- authorization decision vs a hash-set membership test
    let t = TenantId::new();
    let p = Principal::for_tests(Scope::Tenant(t), UserId::new(), Email::parse("a@acme.example").unwrap(), Role::Editor);
    let allowed = Permission::QUERY_EXECUTE;
    let denied = Permission::new("user", "create");
    let set: HashSet<&str> =
        ["table:read", "table:write", "table:delete", "query:execute", "key:create", "key:read", "key:revoke"].into_iter().collect();
    let base = measure(200_000, || {
        black_box(set.contains(black_box("query:execute")));
    });
    let allow = measure(200_000, || {
        black_box(RoleAuthorizer.authorize(black_box(&p), &allowed, Target::Tenant(t)).is_ok());
    });
    row("authorize (allowed)", &allow, &base, "HashSet lookup");
    let deny = measure(200_000, || {
        black_box(RoleAuthorizer.authorize(black_box(&p), &denied, Target::Tenant(t)).is_err());
    });
    row("authorize (denied, builds error)", &deny, &base, "HashSet lookup");
    let other = TenantId::new();
    let cross = measure(200_000, || {
        black_box(RoleAuthorizer.authorize(black_box(&p), &allowed, Target::Tenant(other)).is_err());
    });
    row("authorize (other tenant -> 404)", &cross, &base, "HashSet lookup");
    println!(
        "  goal: authorization decision p99 <= 10 us -> {}",
        if allow.p99.max(deny.p99).max(cross.p99) <= Duration::from_micros(10) { "met" } else { "NOT met" }
    );

    // --- login end to end over HTTP vs the argon2id verification it must do
    let hash = moat_core::password::hash_password(PASSWORD).unwrap();
    let argon = measure(30, || {
        assert!(moat_core::password::verify_password(black_box(PASSWORD), &hash));
    });
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let login = rt.block_on(async {
        let s = TestServer::start().await;
        s.tenant_with_admin("acme").await;
        let mut v = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            let r = s.login_raw(Some("acme"), "admin@acme.example", PASSWORD).await;
            v.push(t.elapsed());
            assert_eq!(r.status.as_u16(), 200);
        }
        Stats::of(v)
    });
    row("login over HTTP (loopback)", &login, &argon, "argon2id verify");
    let authed = rt.block_on(async {
        let s = TestServer::start().await;
        let token = s.tenant_with_admin("acme").await;
        let mut v = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let r = s.get("/v1/auth/whoami", &token).await;
            v.push(t.elapsed());
            assert_eq!(r.status.as_u16(), 200);
        }
        Stats::of(v)
    });
    let healthz = rt.block_on(async {
        let s = TestServer::start().await;
        let mut v = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            s.send(moat_testkit::reqwest::Method::GET, "/healthz", None, None, None).await;
            v.push(t.elapsed());
        }
        Stats::of(v)
    });
    row("authenticated GET whoami", &authed, &healthz, "GET /healthz (no auth)");
}
