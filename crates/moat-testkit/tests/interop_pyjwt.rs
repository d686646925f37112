//! An independent JWT implementation (Python's PyJWT) verifies moat's tokens against the
//! published JWKS. Runs when `MOAT_TEST_PYTHON` is set (CI sets it and installs PyJWT).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use moat_testkit::reqwest::Method;
use moat_testkit::serde_json::{self, Value};
use moat_testkit::{PASSWORD, TestServer};

#[tokio::test]
async fn pyjwt_verifies_moat_tokens() {
    let Ok(python) = std::env::var("MOAT_TEST_PYTHON") else {
        eprintln!("skipped: set MOAT_TEST_PYTHON=python3 (with PyJWT[crypto] installed) to run");
        return;
    };
    let s = TestServer::start().await;
    s.tenant_with_admin("acme").await;
    let token = s.login(Some("acme"), "admin@acme.example", PASSWORD).await;
    let jwks = s.send(Method::GET, "/.well-known/jwks.json", None, None, None).await.body;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks.to_string()).unwrap();
    std::fs::write(dir.path().join("token"), &token).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/interop/verify_jwt.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(dir.path().join("jwks.json"))
        .arg(dir.path().join("token"))
        .args(["moat", "moat-api"])
        .output()
        .unwrap();
    assert!(out.status.success(), "PyJWT refused the token: {}", String::from_utf8_lossy(&out.stderr));
    let claims: Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = s.get("/v1/auth/whoami", &token).await.body;
    assert_eq!(claims["sub"], me["user_id"]);
    assert_eq!(claims["tid"], me["tenant"]["id"]);
    assert_eq!(claims["roles"][0], "admin");
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 900);
}
