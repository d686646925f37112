//! TLS for HTTP and the PostgreSQL wire protocol, from the client's side: HTTPS with HSTS,
//! psql with `sslmode=verify-full`, the protocol floor (TLS 1.1 never, 1.2 unless turned off),
//! and client certificates when `tls.client_ca` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use moat_testkit::reqwest::StatusCode;
use moat_testkit::{CUSTOMERS_A, PASSWORD, TestServer};

/// A self-signed server certificate in a fresh directory: (dir, cert, key).
fn server_cert() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = moat_server::tls::write_self_signed(dir.path()).unwrap();
    let (cert, key) = (dir.path().join(cert), dir.path().join(key));
    (dir, cert, key)
}

async fn tls_server(cert: &Path, key: &Path, tweak: impl FnOnce(&mut moat_server::config::Config)) -> TestServer {
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    TestServer::start_with(move |c| {
        c.tls.cert = cert;
        c.tls.key = key;
        tweak(c);
    })
    .await
}

/// Whether `openssl s_client` completes a handshake with `addr` speaking only `version`
/// (run beside the server, which shares this test's runtime).
async fn openssl_handshake(addr: std::net::SocketAddr, version: &str) -> Option<bool> {
    let run = tokio::process::Command::new("openssl")
        .args(["s_client", "-brief", "-connect", &addr.to_string(), version, "-cipher", "DEFAULT:@SECLEVEL=0"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), run).await.expect("openssl hung").ok()?;
    // `-brief` says so on stderr once the handshake is done, whatever happens after.
    Some(String::from_utf8_lossy(&out.stderr).contains("CONNECTION ESTABLISHED"))
}

#[tokio::test]
async fn https_answers_with_hsts_and_the_protocol_floor_holds() {
    let (_certs, cert, key) = server_cert();
    let s = tls_server(&cert, &key, |_| {}).await;
    assert!(s.base.starts_with("https://"));
    let r = s.http.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    // The testkit helpers work over HTTPS: a tenant and a table.
    let admin = s.tenant_with_admin("acme").await;
    assert_eq!(s.put_csv("/v1/tables/customers", &admin, CUSTOMERS_A).await.status, StatusCode::CREATED);
    // Plain HTTP on the HTTPS port gets no answer.
    let plain = moat_testkit::reqwest::Client::new();
    assert!(plain.get(format!("{}/healthz", s.base.replace("https://", "http://"))).send().await.is_err());
    // A client that does not trust the certificate gets nowhere.
    assert!(plain.get(format!("{}/healthz", s.base)).send().await.is_err());
    let addr: std::net::SocketAddr = s.base.trim_start_matches("https://").parse().unwrap();
    match openssl_handshake(addr, "-tls1_1").await {
        None => eprintln!("openssl not installed; protocol versions not checked"),
        Some(ok) => {
            assert!(!ok, "a TLS 1.1 client was served");
            assert_eq!(openssl_handshake(addr, "-tls1_2").await, Some(true), "TLS 1.2 is the floor, not refused");
            assert_eq!(openssl_handshake(addr, "-tls1_3").await, Some(true));
        }
    }
    // With the floor at 1.3, a 1.2-only client is refused too.
    let strict = tls_server(&cert, &key, |c| c.tls.min_version = "1.3".into()).await;
    let addr: std::net::SocketAddr = strict.base.trim_start_matches("https://").parse().unwrap();
    if let Some(ok) = openssl_handshake(addr, "-tls1_2").await {
        assert!(!ok, "a TLS 1.2 client was served with tls.min_version = 1.3");
    }
}

#[tokio::test]
async fn psql_verifies_the_certificate_and_reads_masked_rows_over_tls() {
    if Command::new("psql").arg("--version").output().is_err() {
        eprintln!("psql not installed; skipped");
        return;
    }
    let (_certs, cert, key) = server_cert();
    let s = tls_server(&cert, &key, |_| {}).await;
    let admin = s.tenant_with_admin("acme").await;
    s.put_csv("/v1/tables/customers", &admin, CUSTOMERS_A).await;
    s.label_customers(&admin).await;
    s.user(&admin, "acme", "v@acme.example", "viewer").await;
    let psql = |sslmode: &str| {
        let conn = format!(
            "host=localhost hostaddr={} port={} dbname=acme user=v@acme.example sslmode={sslmode} sslrootcert={}",
            s.pg.ip(),
            s.pg.port(),
            cert.display()
        );
        // Beside the server, which shares this test's runtime.
        tokio::process::Command::new("psql")
            .args([conn.as_str(), "-X", "-A", "-t", "-c", "SELECT ssn FROM customers WHERE id = 1"])
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .kill_on_drop(true)
            .output()
    };
    let out = psql("verify-full").await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.trim(), "****");
    // Plaintext is still possible on loopback (moat's own host); over the network a sign-in
    // needs TLS (`pg::tls_needed`, tested there).
    let out = psql("disable").await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn client_certificates_are_required_when_a_client_ca_is_set() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let (certs, cert, key) = server_cert();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let ca_path = certs.path().join("clients-ca.pem");
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["reporting-service".to_owned()]).unwrap().signed_by(&client_key, &issuer).unwrap();

    let ca = ca_path.display().to_string();
    let s = tls_server(&cert, &key, move |c| c.tls.client_ca = ca).await;
    let root = moat_testkit::reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap();
    // Without a client certificate: no connection.
    let anonymous = moat_testkit::reqwest::Client::builder().tls_certs_only([root.clone()]).build().unwrap();
    assert!(anonymous.get(format!("{}/healthz", s.base)).send().await.is_err());
    // With one the CA signed: served.
    let identity =
        moat_testkit::reqwest::Identity::from_pem(format!("{}{}", client_cert.pem(), client_key.serialize_pem()).as_bytes()).unwrap();
    let service = moat_testkit::reqwest::Client::builder().tls_certs_only([root]).identity(identity).build().unwrap();
    let r = service.get(format!("{}/healthz", s.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[test]
fn a_broken_tls_configuration_is_refused_at_startup() {
    let (certs, cert, key) = server_cert();
    let root = certs.path();
    let cfg = |cert: &str, key: &str, ca: &str| moat_server::config::TlsConfig {
        cert: cert.into(),
        key: key.into(),
        client_ca: ca.into(),
        ..Default::default()
    };
    let (c, k) = (cert.display().to_string(), key.display().to_string());
    assert!(moat_server::tls::Tls::from_config(&cfg(&c, &k, ""), root).unwrap().is_some());
    assert!(moat_server::tls::Tls::from_config(&cfg("", "", ""), root).unwrap().is_none());
    for (bad, what) in [
        (cfg("missing.pem", &k, ""), "missing.pem"),
        (cfg(&c, "missing-key.pem", ""), "missing-key.pem"),
        (cfg(&k, &k, ""), "no PEM certificate"),
        (cfg(&c, &k, "missing-ca.pem"), "missing-ca.pem"),
    ] {
        let e = moat_server::tls::Tls::from_config(&bad, root).err().expect(what);
        assert_eq!(e.code, "tls_config");
        assert!(e.message.contains(what), "{what}: {}", e.message);
    }
    // A key that is not the certificate's.
    let (_other, _, other_key) = server_cert();
    let e = moat_server::tls::Tls::from_config(&cfg(&c, &other_key.display().to_string(), ""), root).err().expect("mismatch");
    assert!(e.message.contains("do not match"), "{}", e.message);
}
