//! The `moat` binary as an operator uses it: exit codes (0/1/2), one-line errors, file modes,
//! and a full flow against a real `moat serve` on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_moat");
const PW: &str = "Tr1cky-Gazelle";

fn moat(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).env_remove("MOAT_API_KEY");
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Asserts a failed command printed exactly one `error[CODE]: …` line (plus optional hints).
fn assert_error(o: &Output, exit: i32, code: &str) {
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(exit), "stderr: {err}");
    let first = err.lines().next().unwrap_or("");
    assert!(first.starts_with(&format!("error[{code}]: ")), "{err}");
    assert!(err.lines().skip(1).all(|l| l.starts_with("  hint: ")), "one line plus hints: {err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "{err}");
}

#[test]
fn init_is_idempotent_and_private() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let ds = d.to_str().unwrap();
    let o = moat(&["init", "--data-dir", ds], &[], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("initialised"));
    let toml_before = std::fs::read_to_string(d.join("moat.toml")).unwrap();
    let o = moat(&["init", "--data-dir", ds], &[], None);
    assert!(o.status.success());
    assert!(text(&o.stdout).contains("already initialised"));
    assert_eq!(std::fs::read_to_string(d.join("moat.toml")).unwrap(), toml_before);
    assert_eq!(mode(&d), 0o700);
    assert_eq!(mode(&d.join("master.key")), 0o600);
    assert_eq!(mode(&d.join("moat.db")), 0o600);
    for e in std::fs::read_dir(d.join("keys/signing")).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
    let o = moat(&["--json", "init", "--data-dir", ds], &[], None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["created"], false);
}

#[test]
fn self_signed_init_serves_https_that_the_cli_trusts_with_moat_ca_cert() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let ds = d.to_str().unwrap();
    let o = moat(&["init", "--self-signed", "--data-dir", ds], &[], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("TLS is on"), "{}", text(&o.stdout));
    assert_eq!(mode(&d.join("tls/key.pem")), 0o600);
    let toml = std::fs::read_to_string(d.join("moat.toml")).unwrap();
    assert!(toml.contains("cert = \"tls/cert.pem\"") && toml.contains("key = \"tls/key.pem\""), "{toml}");
    // Run again: the same certificate, the same config.
    let cert_before = std::fs::read(d.join("tls/cert.pem")).unwrap();
    assert!(moat(&["init", "--self-signed", "--data-dir", ds], &[], None).status.success());
    assert_eq!(std::fs::read(d.join("tls/cert.pem")).unwrap(), cert_before);
    assert_eq!(std::fs::read_to_string(d.join("moat.toml")).unwrap(), toml);
    let o =
        moat(&["superadmin", "create", "--email", "root@x.example", "--password-stdin", "--data-dir", ds], &[], Some(&format!("{PW}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let srv = Server::start(&["serve", "--data-dir", ds, "--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"]);
    assert!(srv.url.starts_with("https://"), "{}", srv.url);
    let session = tmp.path().join("session.json");
    let login = ["login", "--server", srv.url.as_str(), "--email", "root@x.example", "--password-stdin"];
    // Without the CA the CLI refuses the certificate; with MOAT_CA_CERT it signs in.
    let o = moat(&login, &[("MOAT_CLI_SESSION", session.to_str().unwrap())], Some(&format!("{PW}\n")));
    assert_error(&o, 1, "server_unreachable");
    let ca = d.join("tls/cert.pem");
    let env = [("MOAT_CLI_SESSION", session.to_str().unwrap()), ("MOAT_CA_CERT", ca.to_str().unwrap())];
    let o = moat(&login, &env, Some(&format!("{PW}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = moat(&["whoami"], &env, None);
    assert!(o.status.success() && text(&o.stdout).contains("root@x.example"), "{}", text(&o.stderr));
    let bad = [("MOAT_CLI_SESSION", session.to_str().unwrap()), ("MOAT_CA_CERT", "/nonexistent/ca.pem")];
    assert_error(&moat(&["whoami"], &bad, None), 2, "invalid_ca_cert");
}

#[test]
fn usage_and_validation_errors_exit_2_with_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("d");
    let ds = ds.to_str().unwrap();
    assert!(moat(&["init", "--data-dir", ds], &[], None).status.success());
    let o = moat(&["superadmin", "create", "--email", "root@x.example", "--password-stdin", "--data-dir", ds], &[], Some("password\n"));
    assert_error(&o, 2, "weak_password");
    let o = moat(&["superadmin", "create", "--email", "not-an-email", "--password-stdin", "--data-dir", ds], &[], Some(&format!("{PW}\n")));
    assert_error(&o, 2, "invalid_email");
    let o = moat(&["serve", "--data-dir", ds], &[("MOAT_SERVER__HTTP", "nonsense")], None);
    assert_error(&o, 2, "invalid_config");
    assert!(text(&o.stderr).contains("server.http"), "names the key: {}", text(&o.stderr));
    let o = moat(&["serve", "--data-dir", ds], &[("MOAT_LIMITS__REQUEST_TIMEOUT_MS", "5")], None);
    assert_error(&o, 2, "invalid_config");
    let o = moat(&["serve", "--data-dir", tmp.path().join("nope").to_str().unwrap()], &[], None);
    assert_error(&o, 1, "not_initialised");
    let o = moat(&["frobnicate"], &[], None);
    assert_eq!(o.status.code(), Some(2));
    let o = moat(&["whoami", "--server", "http://127.0.0.1:9"], &[("MOAT_CLI_SESSION", tmp.path().join("s.json").to_str().unwrap())], None);
    assert_error(&o, 1, "not_logged_in");
    let o = moat(
        &["login", "--email", "a@b.example", "--password-stdin", "--server", "http://127.0.0.1:9"],
        &[("MOAT_CLI_SESSION", tmp.path().join("s.json").to_str().unwrap())],
        Some("x\n"),
    );
    assert_error(&o, 1, "server_unreachable");
}

/// A running `moat serve` (or `moat demo`); killed on drop.
struct Server {
    child: Child,
    url: String,
    stdout_lines: Vec<String>,
}

impl Server {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child =
            Command::new(BIN).args(args).envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let mut url = None;
        for line in stderr.lines() {
            let line = line.unwrap();
            if let Some(rest) = line.split("serving HTTP on ").nth(1) {
                url = Some(rest.split_whitespace().next().unwrap().to_owned());
                break;
            }
        }
        // The banner (demo) is printed before serving starts, so it is complete by now.
        let mut stdout_lines = Vec::new();
        let mut r = BufReader::new(stdout);
        if args[0] == "demo" {
            let mut l = String::new();
            while r.read_line(&mut l).unwrap() > 0 {
                let done = l.contains("moat whoami");
                stdout_lines.push(l.trim_end().to_owned());
                l.clear();
                if done {
                    break;
                }
            }
        }
        Self { child, url: url.expect("server did not start"), stdout_lines }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A data dir under `tmp` with a Super Admin (`root@x.example`) and a `moat serve` on it.
fn served(tmp: &Path) -> (String, Server) {
    let ds = tmp.join("d").to_str().unwrap().to_owned();
    assert!(moat(&["init", "--data-dir", &ds], &[], None).status.success());
    let o =
        moat(&["superadmin", "create", "--email", "root@x.example", "--password-stdin", "--data-dir", &ds], &[], Some(&format!("{PW}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let srv = Server::start(&["serve", "--data-dir", &ds, "--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"]);
    (ds, srv)
}

#[test]
fn admin_flow_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (ds, srv) = served(tmp.path());
    let ds = ds.as_str();
    let session = tmp.path().join("session.json");
    let env = [("MOAT_CLI_SESSION", session.to_str().unwrap())];
    let url = srv.url.as_str();

    let o = moat(&["login", "--server", url, "--email", "root@x.example", "--password-stdin"], &env, Some(&format!("{PW}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(mode(&session), 0o600);
    let o =
        moat(&["tenant", "create", "acme", "--name", "Acme", "--admin-email", "boss@acme.example"], &env, Some("Blue-Harbor-Anvil-7\n"));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = moat(&["--json", "tenant", "list"], &env, None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tenants"][0]["slug"], "acme");
    let o = moat(&["tenant", "list"], &env, None);
    assert!(text(&o.stdout).contains("SLUG") && text(&o.stdout).contains("acme"), "a table: {}", text(&o.stdout));
    let o = moat(&["tenant", "create", "acme", "--name", "Dup"], &env, None);
    assert_error(&o, 1, "tenant_exists");
    // Isolation validation: a table of checks, all passed, exit 0.
    let o = moat(&["tenant", "validate", "acme"], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("isolation enforced by") && out.contains("own_tenant_visible") && !out.contains("false"), "{out}");
    assert_error(&moat(&["tenant", "validate", "nosuch"], &env, None), 1, "tenant_not_found");
    // Retention: nothing is old enough yet.
    let o = moat(&["audit", "prune", "--dry-run"], &env, None);
    assert!(o.status.success() && text(&o.stdout).contains("nothing is due"), "{} {}", text(&o.stdout), text(&o.stderr));
    // Keys: the Super Admin rotates the master key and looks into a tenant's data keys.
    let o = moat(&["key", "rotate-master"], &env, None);
    assert!(o.status.success() && text(&o.stdout).contains("master key local:kek-0002 created"), "{} {}", text(&o.stdout), text(&o.stderr));
    let o = moat(&["key", "status", "--tenant", "acme"], &env, None);
    assert!(o.status.success() && text(&o.stdout).contains("tenant acme: data key v1 (master key local:kek-0002"), "{}", text(&o.stdout));
    assert_error(&moat(&["key", "status"], &env, None), 1, "tenant_required");
    assert_error(&moat(&["--in-tenant", "acme&tenant=x", "user", "list"], &env, None), 2, "invalid_slug");
    // The Super Admin acts inside acme.
    let o = moat(
        &["--in-tenant", "acme", "user", "create", "--email", "ana@acme.example", "--role", "editor", "--password-stdin"],
        &env,
        Some(&format!("{PW}\n")),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));

    let o = moat(
        &["login", "--server", url, "--tenant", "acme", "--email", "boss@acme.example", "--password-stdin"],
        &env,
        Some("Blue-Harbor-Anvil-7\n"),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // The tenant's Admin rotates its data key and follows the re-encryption; not the master key.
    let o = moat(&["--json", "key", "rotate", "--wait"], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["dek_version"].as_u64(), v["tables"]["pending"].as_u64()), (Some(2), Some(0)), "{v}");
    assert_error(&moat(&["key", "rotate-master"], &env, None), 1, "forbidden");
    let o = moat(&["user", "set-role", "ana@acme.example", "viewer", "--justification", "ticket OPS-7"], &env, None);
    assert!(text(&o.stdout).contains("viewer"), "{}", text(&o.stderr));
    // A tenant keeps its trail longer (HIPAA), never shorter; only the Super Admin prunes.
    let o = moat(&["policy", "set", "audit-retention", "-"], &env, Some("{\"min_days\": 2190}"));
    assert!(o.status.success() && text(&o.stdout).contains("2190"), "{}", text(&o.stderr));
    assert_error(&moat(&["policy", "set", "audit-retention", "-"], &env, Some("{\"days\": {\"auth\": 7}}")), 1, "retention_too_short");
    assert_error(&moat(&["audit", "prune"], &env, None), 1, "forbidden");
    // Reports: the justification shows in the admin report on the terminal and in every file.
    let o = moat(&["audit", "report", "admin"], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ticket OPS-7") && text(&o.stdout).contains("user.role_change"), "{}", text(&o.stdout));
    assert!(text(&o.stderr).contains("row(s)"), "{}", text(&o.stderr));
    let report_csv = tmp.path().join("admin.csv");
    let o = moat(&["audit", "report", "admin", "--format", "csv", "--out", report_csv.to_str().unwrap()], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let csv = std::fs::read_to_string(&report_csv).unwrap();
    assert!(csv.starts_with("seq,at,actor,") && csv.contains("ticket OPS-7"), "{csv}");
    let report_pq = tmp.path().join("failed.parquet");
    let o = moat(&["audit", "report", "failed", "--format", "parquet", "--out", report_pq.to_str().unwrap()], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(&std::fs::read(&report_pq).unwrap()[..4], b"PAR1");
    assert_error(&moat(&["audit", "report", "failed", "--format", "parquet"], &env, None), 2, "output_required");
    assert_error(&moat(&["audit", "report", "admin", "--format", "xml"], &env, None), 2, "invalid_format");
    assert_error(&moat(&["audit", "report", "salaries"], &env, None), 1, "unknown_report");
    // The trail as NDJSON for a forwarder, resumable by seq.
    let o = moat(&["--json", "audit", "tail", "--after", "1"], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let seqs: Vec<i64> =
        text(&o.stdout).lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs.first(), Some(&2));
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    let o = moat(&["audit", "tail", "--category", "admin"], &env, None);
    assert!(text(&o.stdout).contains("user.role_change"), "{}", text(&o.stdout));
    let o = moat(&["user", "disable", "ana@acme.example"], &env, None);
    assert!(text(&o.stdout).contains("disabled"));
    let o = moat(&["key", "create", "--name", "ci", "--scope", "user:read"], &env, None);
    let key = text(&o.stdout).trim().to_owned();
    assert!(key.starts_with("moat_sk_live_"), "{key}");
    let o = moat(&["--json", "user", "list"], &[("MOAT_API_KEY", &key), env[0]], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = moat(
        &["user", "create", "--email", "z@acme.example", "--role", "viewer", "--password-stdin"],
        &[("MOAT_API_KEY", &key), env[0]],
        Some(&format!("{PW}\n")),
    );
    assert_error(&o, 1, "forbidden");
    let o = moat(&["audit", "verify"], &env, None);
    assert!(text(&o.stdout).contains("intact"), "{}", text(&o.stdout));

    // Offline: export, then verify on this machine alone with the pinned key, the trail's
    // HMAC key (from the data dir) and the checkpoint published off the database.
    // The trail's first checkpoint is signed within a second or so of its first record.
    let mut o = moat(&["--json", "audit", "checkpoint"], &env, None);
    for _ in 0..50 {
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        o = moat(&["--json", "audit", "checkpoint"], &env, None);
    }
    assert!(o.status.success(), "{}", text(&o.stderr));
    let cp: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let vkey = cp["verifier_key"].as_str().unwrap();
    let trail = cp["trail"].as_str().unwrap();
    let bundle = tmp.path().join("acme.ndjson");
    let o = moat(&["audit", "export", "--out", bundle.to_str().unwrap()], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = moat(&["audit", "hmac-key", trail, "--data-dir", ds], &[], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let hmac_file = tmp.path().join("hmac.key");
    std::fs::write(&hmac_file, &o.stdout).unwrap();
    let published = Path::new(ds).join("checkpoints").join(trail).join("checkpoint");
    let offline = |file: &Path| {
        moat(
            &[
                "--json",
                "audit",
                "verify",
                "--bundle",
                file.to_str().unwrap(),
                "--key",
                vkey,
                "--hmac-key-file",
                hmac_file.to_str().unwrap(),
                "--checkpoint",
                published.to_str().unwrap(),
            ],
            &[],
            None,
        )
    };
    let o = offline(&bundle);
    assert!(o.status.success(), "{} {}", text(&o.stdout), text(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((r["ok"].as_bool(), r["key_pinned"].as_bool()), (Some(true), Some(true)), "{r}");
    assert_eq!(r["hmacs_checked"], r["checked"], "{r}");
    // A record edited in the file is named.
    let edited = std::fs::read_to_string(&bundle).unwrap().replacen("user.create", "user.cre4te", 1);
    let forged = tmp.path().join("forged.ndjson");
    std::fs::write(&forged, edited).unwrap();
    let o = offline(&forged);
    assert_error(&o, 1, "audit_log_broken");
    // Options without a bundle and an unreadable bundle are usage errors.
    assert_eq!(moat(&["audit", "verify", "--key", vkey], &env, None).status.code(), Some(2), "--key needs --bundle");
    assert_error(&moat(&["audit", "verify", "--bundle", "/nonexistent"], &[], None), 2, "unreadable_file");

    let o = moat(&["whoami"], &env, None);
    assert!(text(&o.stdout).contains("boss@acme.example"));
    assert!(moat(&["logout"], &env, None).status.success());
    assert!(!session.exists());
    assert_error(&moat(&["whoami"], &env, None), 1, "not_logged_in");
}

#[test]
fn demo_prints_working_logins() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("demo");
    let ds = ds.to_str().unwrap();
    let session = tmp.path().join("session.json");
    let env = [("MOAT_CLI_SESSION", session.to_str().unwrap())];
    let srv = Server::start(&["demo", "--data-dir", ds, "--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"]);
    let banner = srv.stdout_lines.join("\n");
    let pw = srv.stdout_lines.iter().find_map(|l| l.trim().strip_prefix("password: ")).expect("password line").to_owned();
    for who in ["admin@acme.example", "analyst@acme.example", "viewer@acme.example", "admin@globex.example", "superadmin@moat.example"] {
        assert!(banner.contains(who), "{banner}");
    }
    for (tenant, email, role) in
        [("acme", "admin@acme.example", "admin"), ("globex", "analyst@globex.example", "editor"), ("acme", "viewer@acme.example", "viewer")]
    {
        let o = moat(
            &["--json", "login", "--server", &srv.url, "--tenant", tenant, "--email", email, "--password-stdin"],
            &env,
            Some(&format!("{pw}\n")),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["role"], role);
    }
    // Three roles, three views of the same demo table.
    let mut views = Vec::new();
    for email in ["admin@acme.example", "analyst@acme.example", "viewer@acme.example"] {
        let o = moat(
            &["login", "--server", &srv.url, "--tenant", "acme", "--email", email, "--password-stdin"],
            &env,
            Some(&format!("{pw}\n")),
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        let o =
            moat(&["--json", "query", "SELECT id, name, email, ssn, credit_score, plan FROM customers ORDER BY id LIMIT 3"], &env, None);
        assert!(o.status.success(), "{}", text(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["row_count"], 3);
        views.push(v["rows"].clone());
        let o = moat(&["query", "SELECT count(*) AS n FROM customers"], &env, None);
        assert!(text(&o.stdout).contains("1000"), "{}", text(&o.stdout));
    }
    let ssn = |v: &serde_json::Value| v[0][3].as_str().unwrap().to_owned();
    assert!(ssn(&views[0]).chars().filter(|c| c.is_ascii_digit()).count() == 9, "admin sees raw: {}", views[0]);
    assert_eq!(ssn(&views[1]), "****", "analyst: RESTRICTED is masked");
    assert_eq!(views[0][0][2], views[1][0][2], "analyst sees emails");
    assert!(views[2][0][2].as_str().unwrap().contains("***@***."), "viewer: partial email {}", views[2]);
    assert_ne!(views[0], views[1]);
    assert_ne!(views[1], views[2]);
    let o = moat(&["--json", "table", "list"], &env, None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tables"][0]["row_count"], 1000);
    // PII scans, policies and views, as the Admin.
    let o = moat(
        &["login", "--server", &srv.url, "--tenant", "acme", "--email", "admin@acme.example", "--password-stdin"],
        &env,
        Some(&format!("{pw}\n")),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = moat(&["--json", "scan", "--dry-run"], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["scans"][0]["rows_seen"].as_u64(), v["scans"][0]["dry_run"].as_bool()), (Some(1000), Some(true)));
    assert_error(&moat(&["policy", "show", "nope"], &env, None), 2, "unknown_policy");
    let o = moat(&["policy", "set", "classification", "-"], &env, Some(r#"{"labels": {"zip": "RESTRICTED"}}"#));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = moat(&["--json", "scan", "--table", "customers"], &env, None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let zip = v["scans"][0]["columns"].as_array().unwrap().iter().find(|c| c["name"] == "zip").unwrap().clone();
    assert_eq!(zip["catalog"]["classification"], "RESTRICTED", "{zip}");
    let o = moat(&["--json", "view", "save", "contacts", "--sql", "SELECT id, email FROM customers"], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["classification"], "CONFIDENTIAL");
    drop(srv);
    // A second start keeps the same logins.
    let again = Server::start(&["demo", "--data-dir", ds, "--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"]);
    assert!(again.stdout_lines.iter().any(|l| l.trim() == format!("password: {pw}")));
}

/// `kill -9` under load loses nothing acknowledged: every failed login the server answered
/// (each is audited before its answer) is in the trail after a restart, and the trail verifies.
#[test]
fn a_killed_server_loses_no_acknowledged_audit_record() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("d");
    let ds = ds.to_str().unwrap();
    let root = tmp.path().join("root.json");
    let boss = tmp.path().join("boss.json");
    let (root_env, boss_env) = ([("MOAT_CLI_SESSION", root.to_str().unwrap())], [("MOAT_CLI_SESSION", boss.to_str().unwrap())]);
    assert!(moat(&["init", "--data-dir", ds], &[], None).status.success());
    let o =
        moat(&["superadmin", "create", "--email", "root@x.example", "--password-stdin", "--data-dir", ds], &[], Some(&format!("{PW}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Every attempt below fails from one address: lift the per-address limit so that all of
    // them are answered by the tenant (rate-limited attempts are recorded on the platform trail).
    let no_ip_limit = [("MOAT_AUTH__IP_FAILURE_LIMIT", "1000000")];
    let mut srv = Server::start_with_env(&["serve", "--data-dir", ds, "--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"], &no_ip_limit);
    let url = srv.url.clone();
    assert!(
        moat(&["login", "--server", &url, "--email", "root@x.example", "--password-stdin"], &root_env, Some(&format!("{PW}\n")))
            .status
            .success()
    );
    let o =
        moat(&["tenant", "create", "acme", "--name", "Acme", "--admin-email", "boss@acme.example"], &root_env, Some(&format!("{PW}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = moat(
        &["login", "--server", &url, "--tenant", "acme", "--email", "boss@acme.example", "--password-stdin"],
        &boss_env,
        Some(&format!("{PW}\n")),
    );
    assert!(o.status.success(), "{}", text(&o.stderr));

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let (stop, acked, url) = (stop.clone(), acked.clone(), url.clone());
            let session = tmp.path().join(format!("ghost{t}.json"));
            std::thread::spawn(move || {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let email = format!("ghost-{t}-{i}@acme.example");
                    let env = [("MOAT_CLI_SESSION", session.to_str().unwrap())];
                    let o = moat(
                        &["login", "--server", &url, "--tenant", "acme", "--email", &email, "--password-stdin"],
                        &env,
                        Some("wrong\n"),
                    );
                    let err = text(&o.stderr);
                    // An answer at all means the attempt's record was durable.
                    if err.starts_with("error[invalid_credentials]") {
                        acked.lock().unwrap().push(email);
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(2_000));
    srv.child.kill().unwrap(); // SIGKILL
    srv.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 5, "the load did not run: {} acknowledged", acked.len());
    // Verified in place while the server is down: every trail intact.
    let o = moat(&["--json", "audit", "verify", "--data-dir", ds], &[], None);
    assert!(o.status.success(), "{} {}", text(&o.stdout), text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["trails"].as_array().unwrap().len(), 2, "platform and acme: {v}");
    let o = moat(&["audit", "verify", "--data-dir", ds, "--trail", "acme"], &[], None);
    assert!(text(&o.stdout).contains("intact"), "{}", text(&o.stdout));
    assert_error(&moat(&["audit", "verify", "--data-dir", ds, "--trail", "nope"], &[], None), 2, "unknown_trail");

    let srv = Server::start(&["serve", "--data-dir", ds, "--http", "127.0.0.1:0", "--pg", "127.0.0.1:0"]);
    let o = moat(&["--json", "--server", &srv.url, "audit", "events", "--action", "auth.login", "--limit", "1000"], &boss_env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let logged: std::collections::HashSet<&str> =
        v["events"].as_array().unwrap().iter().filter_map(|e| e["actor"]["email"].as_str()).collect();
    let lost: Vec<&String> = acked.iter().filter(|e| !logged.contains(e.as_str())).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged attempts missing after kill -9: {lost:?}", lost.len(), acked.len());
    let o = moat(&["--server", &srv.url, "audit", "verify"], &boss_env, None);
    assert!(text(&o.stdout).contains("intact"), "{} {}", text(&o.stdout), text(&o.stderr));
}

#[test]
fn backup_commands_round_trip_and_refuse_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("data");
    let ds = d.to_str().unwrap();
    assert!(moat(&["init", "--data-dir", ds], &[], None).status.success());
    let o = moat(&["superadmin", "create", "--email", "root@x.example", "--password-stdin", "--data-dir", ds], &[], Some(PW));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key = tmp.path().join("backup.key");
    let ks = key.to_str().unwrap();
    let o = moat(&["backup", "keygen", "--out", ks], &[], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(mode(&key), 0o600);
    assert_error(&moat(&["backup", "keygen", "--out", ks], &[], None), 1, "backup_key_exists");

    let archive = tmp.path().join("one.backup");
    let a = archive.to_str().unwrap();
    let o = moat(&["--json", "backup", "create", "--out", a, "--key-file", ks, "--data-dir", ds], &[], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let made: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(made["bytes"].as_u64(), Some(std::fs::metadata(&archive).unwrap().len()));
    assert_eq!(made["sha256"].as_str().map(str::len), Some(64));
    // The key may come from the environment.
    let o = moat(&["backup", "verify", a], &[("MOAT_BACKUP_KEY_FILE", ks)], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("ok, every byte authenticated"), "{}", text(&o.stdout));

    let target = tmp.path().join("restored");
    let t = target.to_str().unwrap();
    let o = moat(&["backup", "restore", a, "--key-file", ks, "--data-dir", t], &[], None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(mode(&target), 0o700);
    assert_eq!(mode(&target.join("moat.db")), 0o600);
    assert_eq!(mode(&target.join("keys/master/kek-0001.key")), 0o600);

    // Refusals: one line each, nothing written.
    assert_error(&moat(&["backup", "restore", a, "--key-file", ks, "--data-dir", t], &[], None), 1, "backup_target_not_empty");
    assert_error(&moat(&["backup", "create", "--out", a, "--key-file", ks, "--data-dir", ds], &[], None), 1, "backup_exists");
    let other = tmp.path().join("other.key");
    assert!(moat(&["backup", "keygen", "--out", other.to_str().unwrap()], &[], None).status.success());
    let o = moat(&["backup", "verify", a, "--key-file", other.to_str().unwrap()], &[], None);
    assert_error(&o, 2, "backup_wrong_key");
    let mut bytes = std::fs::read(&archive).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 1;
    let bad = tmp.path().join("bad.backup");
    std::fs::write(&bad, &bytes).unwrap();
    let fresh = tmp.path().join("fresh");
    assert_error(
        &moat(&["backup", "restore", bad.to_str().unwrap(), "--key-file", ks, "--data-dir", fresh.to_str().unwrap()], &[], None),
        2,
        "backup_corrupt",
    );
    assert!(!fresh.exists(), "a failed restore leaves nothing");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_error(&moat(&["backup", "verify", a, "--key-file", ks], &[], None), 2, "backup_key_exposed");
    let o = moat(&["backup", "verify", a], &[], None);
    assert_eq!(o.status.code(), Some(2), "no key file named: {}", text(&o.stderr));
    assert!(text(&o.stderr).contains("--key-file"), "{}", text(&o.stderr));
}

/// The code an authenticator app shows `offset_s` from now (the server runs on the real clock).
fn totp_now(app: &moat_core::mfa::MfaSecret, offset_s: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    app.code_at(now.saturating_add_signed(offset_s)).unwrap()
}

#[test]
fn a_second_factor_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, srv) = served(tmp.path());
    let session = tmp.path().join("session.json");
    let env = [("MOAT_CLI_SESSION", session.to_str().unwrap())];
    let url = srv.url.as_str();
    assert!(
        moat(&["login", "--server", url, "--email", "root@x.example", "--password-stdin"], &env, Some(&format!("{PW}\n"))).status.success()
    );
    let o = moat(&["tenant", "create", "acme", "--name", "Acme", "--admin-email", "boss@acme.example"], &env, Some(&format!("{PW}-9\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let boss_login = |code: Option<&str>| {
        let mut args = vec!["login", "--server", url, "--tenant", "acme", "--email", "boss@acme.example", "--password-stdin"];
        if let Some(c) = code {
            args.extend(["--mfa-code", c]);
        }
        moat(&args, &env, Some(&format!("{PW}-9\n")))
    };
    assert!(boss_login(None).status.success());

    assert_error(&moat(&["mfa", "enroll", "--tenant", "acme"], &env, None), 2, "missing_email");
    let o = moat(&["mfa", "enroll"], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let key = out.lines().find_map(|l| l.trim().strip_prefix("key: ")).expect("the key is printed").to_owned();
    assert!(out.contains("uri: otpauth://totp/moat%20%28acme%29:boss%40acme.example?secret="), "{out}");
    let app = moat_core::mfa::MfaSecret::from_setup_key(&key).unwrap();
    assert_error(&moat(&["mfa", "confirm", "12345"], &env, None), 1, "invalid_mfa_code");
    let o = moat(&["mfa", "confirm", &totp_now(&app, 0)], &env, None);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("Recovery codes"), "{err}");
    let recovery: Vec<String> =
        err.lines().map(str::trim).filter(|l| l.len() == 19 && l.matches('-').count() == 3).map(str::to_owned).collect();
    assert_eq!(recovery.len(), 10, "{err}");

    // Without a terminal the CLI cannot prompt: the server's refusal, with its code.
    assert_error(&boss_login(None), 1, "mfa_required");
    let o = boss_login(Some(&totp_now(&app, 30)));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let o = boss_login(Some(&recovery[0]));
    assert!(o.status.success() && text(&o.stderr).contains("9 left"), "{}", text(&o.stderr));
    let o = moat(&["--json", "mfa", "status"], &env, None);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["status"].as_str(), v["recovery_codes_left"].as_u64()), (Some("on"), Some(9)), "{v}");
    let o = moat(&["user", "list"], &env, None);
    assert!(text(&o.stdout).contains("MFA") || text(&o.stdout).contains("mfa"), "{}", text(&o.stdout));
    assert_error(&moat(&["mfa", "disable", "--code", "000000"], &env, None), 1, "invalid_mfa_code");
    // The step of the last code is used: a recovery code vouches instead.
    let o = moat(&["mfa", "recovery-codes", "--code", &recovery[2]], &env, None);
    assert!(o.status.success() && text(&o.stderr).contains("Recovery codes"), "{}", text(&o.stderr));
    assert_error(&boss_login(Some(&recovery[1])), 1, "invalid_mfa_code");

    // The policy, set from the CLI, sends a new account to enrol before it can sign in.
    let o = moat(&["policy", "set", "mfa", "-"], &env, Some(r#"{"required_for": "everyone"}"#));
    assert!(o.status.success() && text(&o.stdout).contains("everyone"), "{} {}", text(&o.stdout), text(&o.stderr));
    let o =
        moat(&["user", "create", "--email", "vic@acme.example", "--role", "viewer", "--password-stdin"], &env, Some(&format!("{PW}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let vic = ["login", "--server", url, "--tenant", "acme", "--email", "vic@acme.example", "--password-stdin"];
    let o = moat(&vic, &env, Some(&format!("{PW}\n")));
    assert_error(&o, 1, "mfa_enrollment_required");
    assert!(text(&o.stderr).contains("moat mfa enroll --tenant acme --email vic@acme.example"), "{}", text(&o.stderr));
    let o = moat(&["mfa", "enroll", "--tenant", "acme", "--email", "vic@acme.example", "--password-stdin"], &env, Some(&format!("{PW}\n")));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key = text(&o.stdout).lines().find_map(|l| l.trim().strip_prefix("key: ").map(str::to_owned)).unwrap();
    let vic_app = moat_core::mfa::MfaSecret::from_setup_key(&key).unwrap();
    let code = totp_now(&vic_app, 0);
    let o = moat(&[&vic[..], &["--mfa-code", &code]].concat(), &env, Some(&format!("{PW}\n")));
    assert!(o.status.success() && text(&o.stderr).contains("Recovery codes"), "{}", text(&o.stderr));
    drop(srv);
}
