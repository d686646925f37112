//! What each command does: offline work through `moat_server::bootstrap`, serving through
//! `moat_server::http`, admin nouns through the API client.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use moat_core::MoatError;
use moat_core::clock::{Clock, SystemClock};
use moat_server::bootstrap::{self, InitOutcome};
use moat_server::config::{Config, DataDir, Overrides};
use moat_server::state::AppState;
use reqwest::Method;
use serde_json::{Value, json};

use crate::cli::*;
use crate::client::{self, Client};
use crate::output;

/// A failed command: printed as `error[CODE]: message`, exit code 1 (runtime) or 2 (usage).
#[derive(Debug)]
pub struct CliError {
    pub code: String,
    pub message: String,
    pub hints: Vec<String>,
    pub exit_code: u8,
}

impl CliError {
    pub fn runtime(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into(), hints: vec![], exit_code: 1 }
    }
    pub fn runtime_owned(code: String, message: String) -> Self {
        Self { code, message, hints: vec![], exit_code: 1 }
    }
    pub fn usage(code: &str, message: impl Into<String>) -> Self {
        Self { code: code.to_owned(), message: message.into(), hints: vec![], exit_code: 2 }
    }
    pub fn line(&self) -> String {
        format!("error[{}]: {}", self.code, self.message)
    }
}

impl From<MoatError> for CliError {
    fn from(e: MoatError) -> Self {
        // Invalid values given on the command line or in the config are usage errors.
        let exit_code = if matches!(e.kind, moat_core::ErrorKind::Unprocessable | moat_core::ErrorKind::BadRequest) { 2 } else { 1 };
        Self { code: e.code.to_owned(), message: e.message, hints: vec![], exit_code }
    }
}

type CliResult = Result<(), CliError>;

/// Reads a password: one line from standard input with `--password-stdin`, else a prompt on a
/// terminal. Never echoed, never logged.
fn read_password(from_stdin: bool, prompt: &str) -> Result<String, CliError> {
    let pw = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| CliError::runtime("io_error", format!("cannot read standard input: {e}")))?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password(prompt).map_err(|e| CliError::runtime("io_error", format!("cannot read the password: {e}")))?
    };
    if pw.is_empty() {
        return Err(CliError::usage("missing_password", "no password given (pipe it to --password-stdin)"));
    }
    Ok(pw)
}

pub async fn run(cli: Cli) -> CliResult {
    let json_out = cli.json;
    let justification = cli.justification.clone();
    let (server, in_tenant) = (cli.server.clone(), cli.in_tenant.clone());
    // A client of the chosen server; `scoped` ones act in --in-tenant.
    let client = |scoped: bool| Client::new(server.clone(), if scoped { in_tenant.clone() } else { None }, justification.as_deref());
    match cli.command {
        Command::Init { dir, self_signed } => init(&DataDir::new(dir.data_dir), self_signed, json_out).await,
        Command::Superadmin { cmd: SuperadminCmd::Create { email, password_stdin, dir } } => {
            let pw = read_password(password_stdin, "Password: ")?;
            let id = bootstrap::create_super_admin(&DataDir::new(dir.data_dir), &email, &pw, SystemClock.now_s()).await?;
            emit(json_out, &json!({"id": id, "email": email.trim().to_lowercase()}), |_| {
                println!("Super Admin {} created ({id})", email.trim().to_lowercase())
            });
            Ok(())
        }
        Command::SigningKey { cmd: SigningKeyCmd::Rotate { dir } } => {
            let d = DataDir::new(dir.data_dir);
            bootstrap::load_config(&d)?;
            let kid = bootstrap::rotate_signing_key(&d, SystemClock.now_s())?;
            emit(json_out, &json!({"kid": kid}), |_| {
                println!("new signing key {kid}; restart servers to sign with it (old tokens verify until they expire)")
            });
            Ok(())
        }
        Command::Backup { cmd } => backup(cmd, json_out).await,
        Command::Serve { dir, http, pg } => serve(DataDir::new(dir.data_dir), Overrides { http, pg }, None).await,
        Command::Demo { dir, http, pg } => demo(DataDir::new(dir.data_dir), Overrides { http, pg }).await,
        Command::Login { tenant, email, password_stdin, mfa_code } => {
            let pw = read_password(password_stdin, "Password: ")?;
            let mut c = client(false)?;
            let token = match c.login(tenant.as_deref(), &email, &pw, mfa_code.as_deref()).await {
                // Asked for a code we did not give: prompt for it where someone can answer.
                Err(e) if e.code == "mfa_required" && mfa_code.is_none() && std::io::stdin().is_terminal() => {
                    let code = rpassword::prompt_password("Authentication code: ")
                        .map_err(|e| CliError::runtime("io_error", format!("cannot read the code: {e}")))?;
                    c.login(tenant.as_deref(), &email, &pw, Some(code.trim())).await?
                }
                Err(mut e) if e.code == "mfa_enrollment_required" => {
                    let t = tenant.as_deref().map(|t| format!(" --tenant {t}")).unwrap_or_default();
                    e.hints.push(format!(
                        "enrol with `moat mfa enroll{t} --email {email}`, then `moat login{t} --email {email} --mfa-code CODE`"
                    ));
                    return Err(e);
                }
                other => other?,
            };
            show_recovery(&token);
            let me = c.call(Method::GET, "/v1/auth/whoami", None).await?;
            emit(json_out, &me, |v| {
                let t = v["tenant"]["slug"].as_str().unwrap_or("(platform)");
                println!(
                    "logged in to {} as {} ({}) in {t}",
                    c.server,
                    v["email"].as_str().unwrap_or(""),
                    v["role"].as_str().unwrap_or("")
                );
            });
            Ok(())
        }
        Command::Logout => {
            let mut c = client(false)?;
            if c.session().is_some() {
                // The server side may already be gone; the local session is removed regardless.
                let _ = c.call(Method::POST, "/v1/auth/logout", None).await;
            }
            client::clear_session();
            emit(json_out, &json!({"logged_out": true}), |_| println!("logged out"));
            Ok(())
        }
        Command::Whoami => {
            let mut c = client(false)?;
            let v = c.call(Method::GET, "/v1/auth/whoami", None).await?;
            emit(json_out, &v, |v| {
                let mut shown = v.clone();
                shown["tenant"] = v["tenant"]["slug"].clone();
                output::record(&shown, &["email", "role", "tenant", "user_id", "credential", "clearance", "permissions"]);
            });
            Ok(())
        }
        Command::Mfa { cmd } => mfa(client(true)?, cmd, json_out).await,
        Command::Tenant { cmd } => tenant(client(false)?, cmd, json_out).await,
        Command::User { cmd } => user(client(true)?, cmd, json_out).await,
        // A tenant's data keys: `--tenant` (or the global --in-tenant) names it for a Super Admin.
        Command::Key { cmd: cmd @ (KeyCmd::Status { .. } | KeyCmd::Rotate { .. }) } => {
            let named = match &cmd {
                KeyCmd::Status { tenant } | KeyCmd::Rotate { tenant, .. } => tenant.clone(),
                _ => None,
            };
            let scope = named.or_else(|| in_tenant.clone());
            key(Client::new(server.clone(), scope, justification.as_deref())?, cmd, json_out).await
        }
        Command::Key { cmd } => key(client(false)?, cmd, json_out).await,
        Command::Audit { cmd: AuditCmd::HmacKey { trail, dir } } => {
            let d = DataDir::new(dir.data_dir);
            let key = bootstrap::audit_keys(&d)?.trail_key(&trail);
            emit(json_out, &json!({"trail": trail, "hmac_key": hex::encode(key)}), |v| {
                println!("{}", v["hmac_key"].as_str().unwrap_or(""))
            });
            Ok(())
        }
        Command::Audit { cmd: AuditCmd::Verify(VerifyArgs { bundle: Some(bundle), key, checkpoints, hmac_key_file, .. }) } => {
            verify_bundle_file(bundle, key, checkpoints, hmac_key_file, json_out).await
        }
        Command::Audit { cmd: AuditCmd::Verify(VerifyArgs { data_dir: Some(d), trail, .. }) } => {
            verify_store(DataDir::new(d), trail, json_out).await
        }
        Command::Audit { cmd } => audit(client(true)?, cmd, json_out).await,
        Command::Query { sql, format } => query(client(true)?, &sql, if json_out { "json" } else { &format }).await,
        Command::Table { cmd } => table(client(true)?, cmd, json_out).await,
        Command::Scan { table, dry_run, sample_rows } => scan(client(true)?, table, dry_run, sample_rows, json_out).await,
        Command::View { cmd } => view(client(true)?, cmd, json_out).await,
        Command::Policy { cmd } => policy(client(true)?, cmd).await,
        Command::Classify { table, column, classification, pii, entity, mask } => {
            let mut c = client(true)?;
            let body = json!({"classification": classification, "pii": pii, "entity": entity, "mask": mask});
            let v = c.call(Method::PUT, &format!("/v1/tables/{}/columns/{}", urlencode(&table), urlencode(&column)), Some(body)).await?;
            emit(json_out, &v, |v| {
                println!(
                    "{table}.{column}: {} (pii {}, source {})",
                    v["classification"].as_str().unwrap_or(""),
                    v["pii"].as_str().unwrap_or(""),
                    v["source"].as_str().unwrap_or("")
                )
            });
            Ok(())
        }
    }
}

fn emit(json_out: bool, v: &Value, human: impl FnOnce(&Value)) {
    if json_out { output::print_json(v) } else { human(v) }
}

async fn init(dir: &DataDir, self_signed: bool, json_out: bool) -> CliResult {
    let outcome = bootstrap::init(dir, SystemClock.now_s()).await?;
    let created = outcome == InitOutcome::Created;
    let cert = if self_signed { Some(bootstrap::enable_self_signed_tls(dir)?) } else { None };
    emit(json_out, &json!({"data_dir": dir.root, "created": created, "tls_cert": cert}), |_| {
        if created {
            println!("initialised {}", dir.root.display());
        } else if cert.is_none() {
            println!("{} is already initialised; nothing was changed", dir.root.display());
        }
        if let Some(c) = &cert {
            println!("TLS is on (HTTPS and pgwire) with a self-signed certificate for localhost: {}", c.display());
            println!(
                "  clients trust it with: export MOAT_CA_CERT={}   psql \"sslmode=verify-full sslrootcert={} …\"",
                c.display(),
                c.display()
            );
        }
        if created {
            println!("next: moat superadmin create --email you@example.com --password-stdin --data-dir {}", dir.root.display());
        }
    });
    Ok(())
}

/// A progress callback drawing `bar` (bytes done of total).
fn byte_progress(bar: &indicatif::ProgressBar) -> moat_server::backup::Progress {
    let bar = bar.clone();
    Box::new(move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
}

fn manifest_lines(m: &moat_server::backup::Manifest) {
    println!("  made {} by moat {} with backup key {}", output::time_cell(&json!(m.created_at)), m.moat_version, m.key_fingerprint);
    println!(
        "  {} tenants, {} tables ({} files), {} audit records in {} trails, {} bytes",
        m.tenants.len(),
        m.tables(),
        m.data_files(),
        m.trails.values().sum::<u64>(),
        m.trails.len(),
        m.bytes()
    );
    if m.store == "postgres" {
        let tables: usize = m.databases.iter().map(|d| d.dump.tables.len()).sum();
        println!("  PostgreSQL store: {} database(s), {tables} tables of schema moat", m.databases.len());
    }
    for n in &m.not_carried {
        println!("  not carried: {n}");
    }
}

async fn backup(cmd: BackupCmd, json_out: bool) -> CliResult {
    use moat_server::backup as b;
    let template = "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}";
    match cmd {
        BackupCmd::Keygen { out } => {
            let key = b::write_key_file(&out)?;
            emit(json_out, &json!({"key_file": out, "fingerprint": key.fingerprint()}), |_| {
                println!("backup key {} written to {} (0600)", key.fingerprint(), out.display());
                println!("  keep it off this host, apart from the archives: a backup and its key together open its data");
            });
        }
        BackupCmd::Create { out, key, dir } => {
            let k = b::read_key_file(&key.key_file)?;
            let bar = output::progress_bar(!json_out, 0, template);
            bar.set_message("archiving");
            let made = b::create(&DataDir::new(dir.data_dir), &out, &k, SystemClock.now_s(), byte_progress(&bar)).await;
            bar.finish_and_clear();
            let made = made?;
            emit(json_out, &json!(made), |_| {
                println!("backup written to {} ({} bytes, sha256 {})", made.archive.display(), made.bytes, made.sha256);
                manifest_lines(&made.manifest);
            });
        }
        BackupCmd::Verify { archive, key } => {
            let k = b::read_key_file(&key.key_file)?;
            let bar = output::progress_bar(!json_out, 0, template);
            bar.set_message("verifying");
            let m = b::verify(&archive, &k, byte_progress(&bar)).await;
            bar.finish_and_clear();
            let m = m?;
            emit(json_out, &json!({"ok": true, "manifest": m}), |_| {
                println!("{}: ok, every byte authenticated", archive.display());
                manifest_lines(&m);
            });
        }
        BackupCmd::Restore { archive, key, dir, store_url, store_admin_url } => {
            let k = b::read_key_file(&key.key_file)?;
            let target = DataDir::new(dir.data_dir);
            let bar = output::progress_bar(!json_out, 0, template);
            bar.set_message("restoring");
            let opts = b::RestoreOptions { store_url, store_admin_url };
            let m = b::restore_with(&archive, &k, &target, &opts, SystemClock.now_s(), byte_progress(&bar)).await;
            bar.finish_and_clear();
            let m = m?;
            emit(json_out, &json!({"data_dir": target.root, "manifest": m}), |_| {
                println!("restored {} into {}", archive.display(), target.root.display());
                manifest_lines(&m);
                println!("next: moat serve --data-dir {}", target.root.display());
            });
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

async fn serve(dir: DataDir, o: Overrides, banner: Option<String>) -> CliResult {
    bootstrap::load_config(&dir)?;
    let cfg = Config::load(Some(&dir.config_file()), std::env::vars(), &o)?;
    moat_server::telemetry::init(&cfg.log);
    let addr = cfg.server.http;
    let state = Arc::new(AppState::open(&dir, cfg).await?);
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| CliError::runtime("bind_failed", format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(|e| CliError::runtime("bind_failed", e.to_string()))?;
    let pg_addr = state.config.server.pg;
    let pg_listener = tokio::net::TcpListener::bind(pg_addr)
        .await
        .map_err(|e| CliError::runtime("bind_failed", format!("cannot listen on {pg_addr} (PostgreSQL wire protocol): {e}")))?;
    let pg_local = pg_listener.local_addr().map_err(|e| CliError::runtime("bind_failed", e.to_string()))?;
    tokio::spawn(moat_server::pg::serve(pg_listener, state.clone(), state.closing.clone().cancelled_owned()));
    if let Some(b) = banner {
        println!("{b}");
    }
    let (scheme, pg_tls) = if state.tls.is_some() { ("https", " (TLS)") } else { ("http", "") };
    eprintln!(
        "moat {} serving HTTP on {scheme}://{local} and the PostgreSQL wire protocol on {pg_local}{pg_tls} (data dir {})",
        env!("CARGO_PKG_VERSION"),
        dir.root.display()
    );
    moat_server::http::serve(listener, state, shutdown_signal()).await.map_err(|e| CliError::runtime("serve_failed", e.to_string()))?;
    eprintln!("moat stopped");
    Ok(())
}

async fn demo(dir: DataDir, o: Overrides) -> CliResult {
    bootstrap::init(&dir, SystemClock.now_s()).await?;
    let creds = moat_server::demo::seed(&dir, SystemClock.now_s()).await?;
    let cfg = Config::load(Some(&dir.config_file()), std::env::vars(), &o)?;
    let server = format!("http://{}", cfg.server.http);
    let mut banner = String::from("moat demo — logins (password for all demo users below)\n");
    banner.push_str(&format!("  password: {}\n", creds.password));
    banner.push_str(&format!("  Super Admin: {} (no tenant)\n", creds.super_admin));
    for (tenant, users) in &creds.tenants {
        for (email, role) in users {
            banner.push_str(&format!("  {tenant:<7} {email:<26} {role}\n"));
        }
    }
    banner.push_str(&format!(
        "try:\n  echo '{}' | moat login --server {server} --tenant acme --email admin@acme.example --password-stdin\n  moat whoami\n  \
         psql \"host={} port={} dbname=acme user=viewer@acme.example\"   (the password above)",
        creds.password,
        cfg.server.pg.ip(),
        cfg.server.pg.port()
    ));
    serve(dir, o, Some(banner)).await
}

async fn tenant(mut c: Client, cmd: TenantCmd, json_out: bool) -> CliResult {
    match cmd {
        TenantCmd::Create { slug, name, admin_email, database_url, database_admin_url } => {
            let admin = match admin_email {
                Some(email) => Some(json!({"email": email, "password": read_password(true, "Admin password: ")?})),
                None => None,
            };
            let database = database_url.map(|url| json!({"url": url, "admin_url": database_admin_url}));
            let body = json!({"slug": slug, "name": name, "admin": admin, "database": database});
            let v = c.call(Method::POST, "/v1/tenants", Some(body)).await?;
            emit(json_out, &v, |v| println!("tenant {} created ({})", v["slug"].as_str().unwrap_or(""), v["id"].as_str().unwrap_or("")));
        }
        TenantCmd::List => {
            let v = c.call(Method::GET, "/v1/tenants", None).await?;
            emit(json_out, &v, |v| {
                // Where each tenant lives: the platform's database, or the URL of its own.
                let rows: Vec<Value> = v["tenants"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .map(|t| {
                        let mut t = t.clone();
                        t["database"] = t["database"]["url"].as_str().map_or_else(|| json!("platform"), |u| json!(u));
                        t
                    })
                    .collect();
                output::table(&rows, &["slug", "name", "status", "database", "id", "created_at"])
            });
        }
        TenantCmd::Suspend { slug } | TenantCmd::Resume { slug } | TenantCmd::Validate { slug } | TenantCmd::Delete { slug, .. }
            if slug.contains('/') || slug.contains('?') || slug.contains('&') =>
        {
            return Err(CliError::usage("invalid_slug", format!("slug {slug:?} is not valid")));
        }
        TenantCmd::Suspend { slug } => {
            let v = c.call(Method::POST, &format!("/v1/tenants/{slug}/suspend"), None).await?;
            emit(json_out, &v, |v| println!("tenant {} suspended", v["slug"].as_str().unwrap_or("")));
        }
        TenantCmd::Delete { slug, confirm } => {
            if confirm != slug {
                return Err(CliError::usage("confirmation_required", format!("--confirm must repeat the slug {slug:?}")));
            }
            let v = c.call(Method::DELETE, &format!("/v1/tenants/{slug}?confirm={confirm}"), None).await?;
            emit(json_out, &v, |v| {
                println!(
                    "tenant {} deleted: {} data key(s) destroyed, {} table(s) and {} file(s) removed",
                    v["slug"].as_str().unwrap_or(""),
                    v["keys_destroyed"],
                    v["tables_deleted"],
                    v["files_removed"]
                );
            });
        }
        TenantCmd::Resume { slug } => {
            let v = c.call(Method::POST, &format!("/v1/tenants/{slug}/resume"), None).await?;
            emit(json_out, &v, |v| println!("tenant {} resumed", v["slug"].as_str().unwrap_or("")));
        }
        TenantCmd::Validate { slug } => {
            let v = c.call(Method::POST, &format!("/v1/tenants/{slug}/validate"), None).await?;
            emit(json_out, &v, |v| {
                println!(
                    "tenant {} on {}: isolation enforced by {}",
                    slug,
                    v["backend"].as_str().unwrap_or(""),
                    v["enforced_by"].as_str().unwrap_or("")
                );
                output::table(v["checks"].as_array().map_or(&[], Vec::as_slice), &["name", "passed", "detail"]);
            });
            if v["passed"] != Value::Bool(true) {
                let failed: Vec<&str> = v["checks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["passed"] != Value::Bool(true))
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                return Err(CliError::runtime(
                    "isolation_failed",
                    format!("tenant {slug}: isolation validation failed: {}", failed.join(", ")),
                ));
            }
        }
    }
    Ok(())
}

/// A user given by id or e-mail.
async fn user_id(c: &mut Client, who: &str) -> Result<String, CliError> {
    if !who.contains('@') {
        return Ok(who.to_owned());
    }
    let v = c.call(Method::GET, "/v1/users", None).await?;
    let want = who.trim().to_lowercase();
    v["users"]
        .as_array()
        .and_then(|us| us.iter().find(|u| u["email"].as_str() == Some(want.as_str())))
        .and_then(|u| u["id"].as_str().map(str::to_owned))
        .ok_or_else(|| CliError::runtime("user_not_found", format!("no user {want} in this tenant")))
}

async fn user(mut c: Client, cmd: UserCmd, json_out: bool) -> CliResult {
    let show = |v: &Value| {
        println!("{} {} ({})", v["email"].as_str().unwrap_or(""), v["status"].as_str().unwrap_or(""), v["role"].as_str().unwrap_or(""))
    };
    match cmd {
        UserCmd::Create { email, role, password_stdin } => {
            let pw = read_password(password_stdin, "Password for the new user: ")?;
            let v = c.call(Method::POST, "/v1/users", Some(json!({"email": email, "password": pw, "role": role}))).await?;
            emit(json_out, &v, |v| println!("user {} created ({})", email.trim().to_lowercase(), v["id"].as_str().unwrap_or("")));
        }
        UserCmd::List => {
            let v = c.call(Method::GET, "/v1/users", None).await?;
            emit(json_out, &v, |v| {
                output::table(v["users"].as_array().map_or(&[], Vec::as_slice), &["email", "role", "status", "mfa", "id", "created_at"])
            });
        }
        UserCmd::Disable { user } => {
            let id = user_id(&mut c, &user).await?;
            let v = c.call(Method::POST, &format!("/v1/users/{id}/disable"), None).await?;
            emit(json_out, &v, show);
        }
        UserCmd::Enable { user } => {
            let id = user_id(&mut c, &user).await?;
            let v = c.call(Method::POST, &format!("/v1/users/{id}/enable"), None).await?;
            emit(json_out, &v, show);
        }
        UserCmd::Unlock { user } => {
            let id = user_id(&mut c, &user).await?;
            let v = c.call(Method::POST, &format!("/v1/users/{id}/unlock"), None).await?;
            emit(json_out, &v, |v| println!("{} unlocked", v["email"].as_str().unwrap_or("")));
        }
        UserCmd::SetRole { user, role } => {
            let id = user_id(&mut c, &user).await?;
            let v = c.call(Method::PUT, &format!("/v1/users/{id}/role"), Some(json!({"role": role}))).await?;
            emit(json_out, &v, show);
        }
    }
    Ok(())
}

/// Recovery codes a sign-in or confirmation handed out (shown once), and a warning when a sign-in
/// used one; on standard error, so that `--json` output stays one document.
fn show_recovery(v: &Value) {
    if let Some(codes) = v["recovery_codes"].as_array() {
        eprintln!("Second factor on. Recovery codes (each works once in place of a code; store them safely, they are not shown again):");
        for c in codes {
            eprintln!("  {}", c.as_str().unwrap_or(""));
        }
    }
    if let Some(left) = v["recovery_codes_left"].as_u64() {
        eprintln!("A recovery code was used; {left} left. Enrol a new device or ask an administrator to reset your factor.");
    }
}

async fn mfa(mut c: Client, cmd: MfaCmd, json_out: bool) -> CliResult {
    let enrolled = |v: &Value| {
        println!("Add this account to your authenticator app, by QR code from the URI or by entering the key:");
        println!("  key: {}", v["secret"].as_str().unwrap_or(""));
        println!("  uri: {}", v["otpauth_uri"].as_str().unwrap_or(""));
        println!("Then confirm with the code it shows: `moat mfa confirm CODE` (or sign in with `moat login --mfa-code CODE`).");
    };
    match cmd {
        MfaCmd::Status => {
            let v = c.call(Method::GET, "/v1/auth/mfa", None).await?;
            emit(json_out, &v, |v| output::record(v, &["status", "enabled_at", "recovery_codes_left", "required"]));
        }
        MfaCmd::Enroll { tenant, email: Some(email), password_stdin } => {
            let pw = read_password(password_stdin, "Password: ")?;
            let body = json!({"tenant": tenant, "email": email, "password": pw});
            let v = c.post_unauthenticated("/v1/auth/mfa/enroll", &body).await?;
            emit(json_out, &v, enrolled);
        }
        MfaCmd::Enroll { tenant: Some(_), email: None, .. } => {
            return Err(CliError::usage("missing_email", "--tenant goes with --email (enrolment by password)"));
        }
        MfaCmd::Enroll { email: None, .. } => {
            let v = c.call(Method::POST, "/v1/auth/mfa", None).await?;
            emit(json_out, &v, enrolled);
        }
        MfaCmd::Confirm { code } => {
            let v = c.call(Method::POST, "/v1/auth/mfa/confirm", Some(json!({"code": code}))).await?;
            emit(json_out, &v, show_recovery);
        }
        MfaCmd::RecoveryCodes { code } => {
            let v = c.call(Method::POST, "/v1/auth/mfa/recovery-codes", Some(json!({"code": code}))).await?;
            emit(json_out, &v, show_recovery);
        }
        MfaCmd::Disable { code } => {
            let v = c.call(Method::POST, "/v1/auth/mfa/disable", Some(json!({"code": code}))).await?;
            emit(json_out, &v, |_| println!("second factor off"));
        }
        MfaCmd::Reset { user } => {
            let id = user_id(&mut c, &user).await?;
            let v = c.call(Method::DELETE, &format!("/v1/users/{id}/mfa"), None).await?;
            emit(json_out, &v, |v| println!("second factor of {} removed; its sessions ended", v["email"].as_str().unwrap_or("")));
        }
    }
    Ok(())
}

async fn key(mut c: Client, cmd: KeyCmd, json_out: bool) -> CliResult {
    match cmd {
        KeyCmd::Create { name, scopes, expires_in_days } => {
            let v = c
                .call(Method::POST, "/v1/api-keys", Some(json!({"name": name, "scopes": scopes, "expires_in_days": expires_in_days})))
                .await?;
            emit(json_out, &v, |v| {
                println!("{}", v["key"].as_str().unwrap_or(""));
                eprintln!(
                    "API key {} created; it is shown only once. Expires {}.",
                    v["id"].as_str().unwrap_or(""),
                    output::time_cell(&v["expires_at"])
                );
            });
        }
        KeyCmd::List { all } => {
            let v = c.call(Method::GET, if all { "/v1/api-keys?all=true" } else { "/v1/api-keys" }, None).await?;
            emit(json_out, &v, |v| {
                output::table(
                    v["keys"].as_array().map_or(&[], Vec::as_slice),
                    &["id", "name", "display_hint", "scopes", "expires_at", "last_used_at", "revoked_at"],
                )
            });
        }
        KeyCmd::Revoke { id } => {
            c.call(Method::DELETE, &format!("/v1/api-keys/{id}"), None).await?;
            emit(json_out, &json!({"revoked": id}), |_| println!("API key {id} revoked"));
        }
        KeyCmd::Status { .. } => {
            let v = c.call(Method::GET, "/v1/keys", None).await?;
            emit(json_out, &v, show_data_keys);
        }
        KeyCmd::Rotate { wait, .. } => {
            let v = c.call(Method::POST, "/v1/keys/rotate", None).await?;
            if !json_out {
                println!(
                    "tenant {}: data key v{} is current (was v{}); {} table(s) to re-encrypt in the background",
                    v["tenant"].as_str().unwrap_or(""),
                    v["dek_version"],
                    v["previous_version"],
                    v["tables_pending"]
                );
            }
            if wait {
                let version = v["dek_version"].as_u64();
                let status = follow_reencryption(&mut c, version, json_out).await?;
                emit(json_out, &status, show_data_keys);
            } else if json_out {
                emit(json_out, &v, |_| {});
            }
        }
        KeyCmd::RotateMaster => {
            let v = c.call(Method::POST, "/v1/keys/rotate-master", None).await?;
            emit(json_out, &v, |v| {
                println!(
                    "master key {} created; {} data key(s) of {} tenant(s) re-wrapped under it",
                    v["kek"].as_str().unwrap_or(""),
                    v["keys_rewrapped"],
                    v["tenants"]
                );
            });
        }
    }
    Ok(())
}

fn show_data_keys(v: &Value) {
    println!(
        "tenant {}: data key v{} (master key {}, provider {}); tables {} under it, {} pending; next scheduled rotation {}",
        v["tenant"].as_str().unwrap_or(""),
        v["dek_version"],
        v["master_key"].as_str().unwrap_or(""),
        v["provider"].as_str().unwrap_or(""),
        v["tables"]["current"],
        v["tables"]["pending"],
        output::time_cell(&v["next_rotation_at"]),
    );
    output::table(v["versions"].as_array().map_or(&[], Vec::as_slice), &["version", "master_key", "current", "created_at", "destroyed_at"]);
    let r = &v["reencryption"];
    if r.is_object() {
        println!(
            "re-encryption to v{}: {} ({}/{} tables, {} skipped, {} rows, {} bytes, {} MB/s){}",
            r["dek_version"],
            r["state"].as_str().unwrap_or(""),
            r["tables_done"],
            r["tables_total"],
            r["tables_skipped"],
            r["rows"],
            r["bytes_written"],
            r["mb_per_s"],
            r["error"].as_str().map(|e| format!(" error {e}")).unwrap_or_default()
        );
    }
}

/// Polls the key status until no table is left under an older key (or the job failed).
async fn follow_reencryption(c: &mut Client, version: Option<u64>, json_out: bool) -> Result<Value, CliError> {
    let bar = output::progress_bar(!json_out, 0, "{spinner} re-encrypting [{bar:30}] {pos}/{len} tables {msg}");
    loop {
        let v = c.call(Method::GET, "/v1/keys", None).await?;
        let r = &v["reencryption"];
        let ours = r["dek_version"].as_u64() == version;
        if ours {
            bar.set_length(r["tables_total"].as_u64().unwrap_or(0));
            bar.set_position(r["tables_done"].as_u64().unwrap_or(0));
            bar.set_message(format!("{} MB/s", r["mb_per_s"]));
        }
        // The last table is swapped in a moment before the job says it is done.
        if v["tables"]["pending"].as_u64() == Some(0) && !(ours && r["state"] == "running") {
            bar.finish_and_clear();
            return Ok(v);
        }
        if ours && r["state"].as_str() == Some("failed") {
            bar.abandon();
            let code = r["error"].as_str().unwrap_or("reencryption_failed").to_owned();
            return Err(CliError::runtime_owned(
                code,
                "re-encryption stopped; the server resumes it at its next check (see moat key status)".into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// The line a failed verification prints, whichever way it ran.
fn broken(first_bad_seq: Option<i64>, problem: Option<&str>) -> String {
    let seq = first_bad_seq.map_or_else(|| "-".to_owned(), |s| s.to_string());
    format!("AUDIT TRAIL BROKEN at sequence {seq}: {}", problem.unwrap_or(""))
}

/// `moat audit verify --data-dir`: the store verified in place, every trail or one.
async fn verify_store(dir: DataDir, trail: Option<String>, json_out: bool) -> CliResult {
    use moat_store::audit_log::{CheckpointSink, DirSink, verify_trail};
    let cfg = bootstrap::load_config(&dir)?;
    let stores = moat_store::open_with(&cfg.store_url(&dir.root), cfg.store.admin_url.as_deref()).await?;
    let keys = bootstrap::audit_keys(&dir)?;
    let checkpoint_key = bootstrap::checkpoint_key(&dir, &cfg)?;
    let sink = cfg.publish_dir(&dir.root).map(DirSink::new);
    let trails = match trail.as_deref() {
        None => stores.audit.trail_heads().await?.into_iter().map(|(t, _)| t).collect(),
        Some(t) if moat_core::audit::trail_tenant(t).is_some() => vec![t.to_owned()],
        Some(slug) => match stores.meta.tenant_by_slug(slug).await? {
            Some(t) => vec![t.id.to_string()],
            None => return Err(CliError::usage("unknown_trail", format!("--trail: no tenant {slug:?} (a slug, a tenant id or platform)"))),
        },
    };
    let mut reports = Vec::new();
    for t in &trails {
        let bar = output::progress_bar(!json_out, 0, "{spinner} verifying {msg} [{bar:30}] {pos}/{len} records {per_sec}");
        bar.set_message(t.clone());
        let r = verify_trail(&*stores.audit, &keys, &checkpoint_key, sink.as_ref().map(|s| s as &dyn CheckpointSink), t, |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await;
        bar.finish_and_clear();
        reports.push(json!({"trail": t, "report": r?}));
    }
    let ok = reports.iter().all(|r| r["report"]["ok"].as_bool() == Some(true));
    emit(json_out, &json!({"ok": ok, "trails": reports}), |v| {
        for r in v["trails"].as_array().map_or(&[][..], Vec::as_slice) {
            let (t, rep) = (r["trail"].as_str().unwrap_or(""), &r["report"]);
            if rep["ok"].as_bool() == Some(true) {
                println!(
                    "{t}: intact, {} records ({} HMACs, {} signed checkpoints{})",
                    rep["checked"],
                    rep["hmacs_checked"],
                    rep["checkpoints_checked"],
                    pruned_note(&rep["pruned"])
                );
            } else {
                println!("{t}: {}", broken(rep["first_bad_seq"].as_i64(), rep["problem"].as_str()));
            }
        }
    });
    if !ok {
        return Err(CliError::runtime("audit_log_broken", "the audit trail failed verification"));
    }
    Ok(())
}

/// `moat audit verify --bundle`: an export checked on this machine alone.
async fn verify_bundle_file(
    bundle: std::path::PathBuf,
    key: Option<String>,
    checkpoints: Vec<std::path::PathBuf>,
    hmac_key_file: Option<std::path::PathBuf>,
    json_out: bool,
) -> CliResult {
    use moat_core::audit_bundle::{BundleOptions, verify_bundle};
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| CliError::usage("unreadable_file", format!("cannot read {}: {e}", p.display())))
    };
    let pinned_key = key
        .map(|k| moat_core::checkpoint::NoteVerifier::parse(k.trim()))
        .transpose()
        .map_err(|e| CliError::usage("invalid_key", format!("--key: {e}")))?;
    let hmac_key = match &hmac_key_file {
        None => None,
        Some(p) => Some(
            hex::decode(read(p)?.trim())
                .ok()
                .and_then(|k| <[u8; 32]>::try_from(k).ok())
                .ok_or_else(|| CliError::usage("invalid_key", format!("{}: expected 64 hex digits", p.display())))?,
        ),
    };
    let extra_checkpoints = checkpoints.iter().map(|p| read(p)).collect::<Result<Vec<_>, _>>()?;
    let opts = BundleOptions { pinned_key, hmac_key, extra_checkpoints };
    let file =
        std::fs::File::open(&bundle).map_err(|e| CliError::usage("unreadable_file", format!("cannot read {}: {e}", bundle.display())))?;
    let bar = output::progress_bar(!json_out, 0, "{spinner} verifying [{bar:30}] {pos}/{len} records {per_sec} eta {eta}");
    let b = bar.clone();
    let r = tokio::task::spawn_blocking(move || {
        verify_bundle(std::io::BufReader::with_capacity(1 << 20, file), &opts, |done, total| {
            b.set_length(total);
            b.set_position(done);
        })
    })
    .await
    .map_err(|_| CliError::runtime("internal", "the verifier stopped"))?;
    bar.finish_and_clear();
    let r = r.map_err(|e| CliError::usage("invalid_bundle", format!("{}: {e}", bundle.display())))?;
    let v = serde_json::to_value(&r).unwrap_or(Value::Null);
    emit(json_out, &v, |_| {
        if r.ok {
            println!(
                "bundle intact: {} records of trail {} ({} HMACs, {} signed checkpoints, signed up to record {}{}), root {}",
                r.checked,
                r.trail,
                r.hmacs_checked,
                r.checkpoints_checked,
                r.checkpointed,
                pruned_note(&json!(r.pruned)),
                r.root.as_deref().unwrap_or("-")
            );
        } else {
            println!("{}", broken(r.first_bad_seq, r.problem.as_deref()));
        }
        if !r.key_pinned {
            eprintln!("warning: checked against the bundle's own key; pin the deployment's key with --key for a real audit");
        }
        if r.hmacs_checked == 0 {
            eprintln!("note: HMACs not checked (no --hmac-key-file)");
        }
    });
    if !r.ok {
        return Err(CliError::runtime("audit_log_broken", "the audit trail failed verification"));
    }
    Ok(())
}

async fn audit(mut c: Client, cmd: AuditCmd, json_out: bool) -> CliResult {
    match cmd {
        AuditCmd::Events { actor, category, action, outcome, resource, from, to, q, limit } => {
            let mut params = vec![format!("limit={limit}")];
            let filters = [
                ("actor", actor),
                ("category", category),
                ("action", action),
                ("outcome", outcome),
                ("resource", resource),
                ("from", from),
                ("to", to),
                ("q", q),
            ];
            for (k, v) in filters {
                if let Some(v) = v {
                    params.push(format!("{k}={}", urlencode(&v)));
                }
            }
            let v = c.call(Method::GET, &format!("/v1/audit/events?{}", params.join("&")), None).await?;
            emit(json_out, &v, |v| {
                let rows: Vec<Value> = v["events"]
                    .as_array()
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .map(|e| {
                        let mut r = e.clone();
                        r["actor"] = e["actor"]["email"].clone();
                        r["time_at"] = json!(e["ts_ms"].as_i64().unwrap_or(0) / 1000);
                        r
                    })
                    .collect();
                output::table(&rows, &["seq", "time_at", "action", "outcome", "actor", "resource", "source_ip"]);
            });
        }
        // Offline forms are answered in `run` without a server.
        AuditCmd::HmacKey { .. }
        | AuditCmd::Verify(VerifyArgs { bundle: Some(_), .. })
        | AuditCmd::Verify(VerifyArgs { data_dir: Some(_), .. }) => {}
        AuditCmd::Export { out } => {
            let bar = output::progress_bar(!json_out, 0, "{spinner} exporting {bytes} {bytes_per_sec}");
            let bytes = c.download("/v1/audit/export", &out, |n| bar.set_position(n)).await;
            bar.finish_and_clear();
            let bytes = bytes?;
            emit(json_out, &json!({"file": out, "bytes": bytes}), |_| {
                println!("audit trail exported to {} ({bytes} bytes); verify with `moat audit verify --bundle`", out.display())
            });
        }
        AuditCmd::Verify(_) => {
            let bar = output::progress_bar(!json_out, 0, "{spinner} verifying [{bar:30}] {pos}/{len} records {per_sec} eta {eta}");
            let result = c
                .call_ndjson(Method::GET, "/v1/audit/verify", |p| {
                    bar.set_length(p["records_total"].as_u64().unwrap_or(0));
                    bar.set_position(p["records_verified"].as_u64().unwrap_or(0));
                })
                .await;
            bar.finish_and_clear();
            let v = result?;
            let ok = v["ok"].as_bool().unwrap_or(false);
            emit(json_out, &v, |v| {
                if ok {
                    println!(
                        "audit trail intact: {} records ({} HMACs, {} signed checkpoints{}{}), root {}",
                        v["checked"],
                        v["hmacs_checked"],
                        v["checkpoints_checked"],
                        v["published_size"].as_u64().map(|s| format!(", published checkpoint at {s}")).unwrap_or_default(),
                        pruned_note(&v["pruned"]),
                        v["head"].as_str().unwrap_or("-")
                    );
                } else {
                    println!("{}", broken(v["first_bad_seq"].as_i64(), v["problem"].as_str()));
                }
            });
            if !ok {
                return Err(CliError::runtime("audit_log_broken", "the audit trail failed verification"));
            }
        }
        AuditCmd::Report { kind, from, to, format, out } => report(&mut c, &kind, from, to, &format, out, json_out).await?,
        AuditCmd::Tail { after, category, follow } => {
            let mut path = format!("/v1/audit/stream?after={after}&follow={follow}");
            if let Some(c) = category {
                path.push_str(&format!("&category={}", urlencode(&c)));
            }
            c.stream_lines(&path, |v| {
                if v.get("heartbeat").is_some() {
                    return;
                }
                if json_out {
                    println!("{v}");
                } else {
                    println!(
                        "{:>8}  {}  {:<22} {:<8} {:<28} {}",
                        v["seq"].as_i64().unwrap_or(0),
                        moat_server::report::rfc3339_ms(v["ts_ms"].as_i64().unwrap_or(0)),
                        v["action"].as_str().unwrap_or("-"),
                        v["outcome"].as_str().unwrap_or("-"),
                        v["actor"]["email"].as_str().or_else(|| v["actor"]["via"].as_str()).unwrap_or("-"),
                        v["resource"].as_str().unwrap_or("-"),
                    );
                }
            })
            .await?;
        }
        AuditCmd::Prune { dry_run } => {
            let v = c.call(Method::POST, &format!("/v1/audit/prune?dry_run={dry_run}"), None).await?;
            emit(json_out, &v, print_prune);
        }
        AuditCmd::Checkpoint => {
            let v = c.call(Method::GET, "/v1/audit/checkpoint", None).await?;
            emit(json_out, &v, |v| {
                println!("verifier key: {}", v["verifier_key"].as_str().unwrap_or("-"));
                print!("{}", v["note"].as_str().unwrap_or(""));
            });
        }
        AuditCmd::Proof { cmd } => {
            let path = match cmd {
                ProofCmd::Inclusion { seq } => format!("/v1/audit/proof/inclusion?seq={seq}"),
                ProofCmd::Consistency { from, to } => {
                    format!("/v1/audit/proof/consistency?from={from}{}", to.map(|t| format!("&to={t}")).unwrap_or_default())
                }
            };
            let v = c.call(Method::GET, &path, None).await?;
            emit(json_out, &v, |v| {
                if let Some(seq) = v["seq"].as_i64() {
                    println!("record {seq} (leaf {}, hash {})", v["leaf_index"], v["leaf_hash"].as_str().unwrap_or("-"));
                } else {
                    println!("log of {} records is a prefix of the log of {}", v["from"], v["to"]);
                }
                println!("proof ({} hashes):", v["proof"].as_array().map_or(0, Vec::len));
                for h in v["proof"].as_array().map_or(&[][..], Vec::as_slice) {
                    println!("  {}", h.as_str().unwrap_or(""));
                }
                println!("against checkpoint (verifier key {}):", v["checkpoint"]["verifier_key"].as_str().unwrap_or("-"));
                print!("{}", v["checkpoint"]["note"].as_str().unwrap_or(""));
            });
        }
    }
    Ok(())
}

/// The columns of a report shown on a terminal (the files have every column).
fn report_columns(kind: &str) -> &'static [&'static str] {
    match kind {
        "access" => &["actor", "role", "object", "reads", "writes", "denied", "rows_returned", "masked_columns", "last_at"],
        "admin" => &["seq", "at", "actor", "action", "resource", "outcome", "justification"],
        "failed" => &["actor", "source_ip", "attempts", "lockouts", "peak_10min", "pattern", "codes", "last_at"],
        _ => &["seq", "at", "actor", "object", "format", "rows", "status", "justification"],
    }
}

/// `moat audit report KIND`: a table on the terminal, or the server's CSV, JSON or Parquet on
/// standard output or in a file.
async fn report(
    c: &mut Client,
    kind: &str,
    from: Option<String>,
    to: Option<String>,
    format: &str,
    out: Option<std::path::PathBuf>,
    json_out: bool,
) -> CliResult {
    let wire = match format {
        "table" => "json",
        "csv" | "json" | "parquet" => format,
        other => return Err(CliError::usage("invalid_format", format!("--format {other:?}: use table, csv, json or parquet"))),
    };
    if wire == "parquet" && out.is_none() {
        return Err(CliError::usage("output_required", "--format parquet writes a file: add --out FILE"));
    }
    let mut params = vec![format!("format={wire}")];
    for (k, v) in [("from", from), ("to", to)] {
        if let Some(v) = v {
            params.push(format!("{k}={}", urlencode(&v)));
        }
    }
    let path = format!("/v1/audit/reports/{}?{}", urlencode(kind), params.join("&"));
    if let Some(out) = out {
        let bytes = c.download(&path, &out, |_| {}).await?;
        emit(json_out, &json!({"file": out, "bytes": bytes, "format": wire}), |_| {
            println!("{kind} report written to {} ({bytes} bytes, {wire})", out.display())
        });
        return Ok(());
    }
    if wire == "csv" {
        print!("{}", c.call_text(Method::GET, &path, None, "text/csv").await?);
        return Ok(());
    }
    let v = c.call(Method::GET, &path, None).await?;
    if json_out || format == "json" {
        output::print_json(&v);
        return Ok(());
    }
    let rows = v["rows"].as_array().map_or(&[][..], Vec::as_slice);
    output::table(rows, report_columns(kind));
    eprintln!(
        "{} row(s) from {} records, {} to {}, trail through record {}; every column with --format csv, json or parquet",
        rows.len(),
        v["records_read"],
        v["from"].as_str().unwrap_or("-"),
        v["to"].as_str().unwrap_or("-"),
        v["through_seq"]
    );
    Ok(())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn query(mut c: Client, sql: &str, format: &str) -> CliResult {
    match format {
        "table" | "json" | "csv" => {}
        other => return Err(CliError::usage("invalid_format", format!("--format {other:?}: use table, csv or json"))),
    }
    if format == "csv" {
        let text = c.call_text(Method::POST, "/v1/query", Some(json!({"sql": sql})), "text/csv").await?;
        print!("{text}");
        return Ok(());
    }
    let v = c.call(Method::POST, "/v1/query", Some(json!({"sql": sql}))).await?;
    if format == "json" {
        output::print_json(&v);
        return Ok(());
    }
    let names: Vec<String> =
        v["columns"].as_array().map_or(&[][..], Vec::as_slice).iter().map(|c| c["name"].as_str().unwrap_or("").to_owned()).collect();
    let rows: Vec<Value> = v["rows"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|r| Value::Object(names.iter().cloned().zip(r.as_array().cloned().unwrap_or_default()).collect()))
        .collect();
    let cols: Vec<&str> = names.iter().map(String::as_str).collect();
    output::table_raw(&rows, &cols);
    let masked: Vec<String> = v["columns"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|c| c["masking"] != "none")
        .map(|c| format!("{} ({})", c["name"].as_str().unwrap_or(""), c["masking"].as_str().unwrap_or("")))
        .collect();
    eprintln!(
        "{} row(s){}{}",
        v["row_count"],
        if v["truncated"] == true { " (truncated at the row limit)" } else { "" },
        if masked.is_empty() { String::new() } else { format!("; masked: {}", masked.join(", ")) }
    );
    Ok(())
}

async fn table(mut c: Client, cmd: TableCmd, json_out: bool) -> CliResult {
    match cmd {
        TableCmd::Import { file, table, domain, product, types } => {
            let types = (!types.is_empty()).then(|| types.join(","));
            let path = table_path(&table, domain, product, types);
            let v = c.upload_table(&path, &file, !json_out).await?;
            emit(json_out, &v, |v| {
                println!(
                    "table {} version {}: {} rows, {} bytes",
                    v["name"].as_str().unwrap_or(""),
                    v["version"],
                    v["row_count"],
                    v["bytes"]
                );
                for r in v["renamed"].as_array().map_or(&[][..], Vec::as_slice) {
                    println!("  column {:?} stored as {}", r["from"].as_str().unwrap_or(""), r["to"].as_str().unwrap_or(""));
                }
            });
        }
        TableCmd::Link { table, postgres, domain, product } => {
            let path = table_path(&table, domain, product, None);
            let v = c.call(Method::PUT, &path, Some(json!({"postgres": {"relation": postgres}}))).await?;
            emit(json_out, &v, |v| {
                println!(
                    "table {} version {}: relation {postgres:?} of the tenant's schema, {} columns (about {} rows)",
                    v["name"].as_str().unwrap_or(""),
                    v["version"],
                    v["columns"].as_array().map_or(0, Vec::len),
                    v["row_count"]
                );
            });
        }
        TableCmd::List => {
            let v = c.call(Method::GET, "/v1/tables", None).await?;
            emit(json_out, &v, |v| {
                output::table(
                    v["tables"].as_array().map_or(&[], Vec::as_slice),
                    &["name", "domain", "product", "version", "row_count", "updated_at"],
                )
            });
        }
        TableCmd::Show { table } => {
            let v = c.call(Method::GET, &format!("/v1/tables/{}", urlencode(&table)), None).await?;
            emit(json_out, &v, |v| {
                output::table(
                    v["columns"].as_array().map_or(&[], Vec::as_slice),
                    &["name", "type", "classification", "pii", "entity", "source", "mask"],
                )
            });
        }
        TableCmd::Delete { table } => {
            c.call(Method::DELETE, &format!("/v1/tables/{}", urlencode(&table)), None).await?;
            emit(json_out, &json!({"deleted": table}), |_| println!("table {table} deleted"));
        }
    }
    Ok(())
}

/// `/v1/tables/{table}` with the optional domain, product and type overrides.
fn table_path(table: &str, domain: Option<String>, product: Option<String>, types: Option<String>) -> String {
    let params: Vec<String> = [("domain", domain), ("product", product), ("types", types)]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", urlencode(&v))))
        .collect();
    format!("/v1/tables/{}{}{}", urlencode(table), if params.is_empty() { "" } else { "?" }, params.join("&"))
}

/// Scans one table or every table, one progress bar per table on a terminal.
async fn scan(mut c: Client, table: Option<String>, dry_run: bool, sample_rows: Option<usize>, json_out: bool) -> CliResult {
    let tables: Vec<String> = match table {
        Some(t) => vec![t],
        None => {
            let v = c.call(Method::GET, "/v1/tables", None).await?;
            v["tables"].as_array().map_or(&[][..], Vec::as_slice).iter().filter_map(|t| t["name"].as_str().map(str::to_owned)).collect()
        }
    };
    let mut results = Vec::new();
    for name in &tables {
        let mut params = vec![format!("dry_run={dry_run}")];
        if let Some(n) = sample_rows {
            params.push(format!("sample_rows={n}"));
        }
        let bar = output::progress_bar(!json_out, 0, "{spinner} scanning {msg} [{bar:30}] {pos}/{len} rows {per_sec} eta {eta}");
        bar.set_message(name.clone());
        let path = format!("/v1/tables/{}/scan?{}", urlencode(name), params.join("&"));
        let result = c
            .call_ndjson(Method::POST, &path, |p| {
                bar.set_length(p["rows_total"].as_u64().unwrap_or(0));
                bar.set_position(p["rows_read"].as_u64().unwrap_or(0));
            })
            .await;
        bar.finish_and_clear();
        let v = result?;
        if !json_out {
            print_scan(&v);
        }
        results.push(v);
    }
    if json_out {
        output::print_json(&json!({"scans": results}));
    } else if tables.is_empty() {
        println!("no tables to scan");
    }
    Ok(())
}

fn print_scan(v: &Value) {
    let rows: Vec<Value> = v["columns"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|c| {
            let mut r = c.clone();
            r["label now"] = json!(format!(
                "{} ({})",
                c["catalog"]["classification"].as_str().unwrap_or("-"),
                c["catalog"]["source"].as_str().unwrap_or("-")
            ));
            r
        })
        .collect();
    println!(
        "{} v{}: {} of {} rows sampled{}",
        v["table"].as_str().unwrap_or(""),
        v["version"],
        v["rows_sampled"],
        v["rows_seen"],
        if v["dry_run"].as_bool() == Some(true) { " (dry run: nothing changed)" } else { "" }
    );
    output::table_raw(&rows, &["name", "pii", "entity", "classification", "confidence", "review", "label now", "reason"]);
    if let Some(q) = v["quasi_identifiers"].as_array().filter(|q| !q.is_empty()) {
        let names: Vec<&str> = q.iter().filter_map(Value::as_str).collect();
        println!("quasi-identifiers {}: k-anonymity {} in the sample", names.join(", "), v["k_anonymity"]);
    }
    let changes = v["changes"].as_array().map_or(0, Vec::len);
    println!("{changes} label(s) changed; manual labels are never changed by a scan");
}

const POLICIES: &[&str] = &["password", "mfa", "masking", "classification", "audit-retention"];

/// ", N removed by retention" when a verification met pruned records.
fn pruned_note(n: &Value) -> String {
    match n.as_u64() {
        Some(n) if n > 0 => format!(", {n} removed by retention"),
        _ => String::new(),
    }
}

/// A retention run: one line per segment and category removed or due.
fn print_prune(v: &Value) {
    let dry = v["dry_run"].as_bool() == Some(true);
    let mut rows = Vec::new();
    for t in v["trails"].as_array().map_or(&[][..], Vec::as_slice) {
        let trail = t["tenant"].as_str().or(t["trail"].as_str()).unwrap_or("platform");
        for (state, list) in [("removed", &t["pruned"]), (if dry { "due" } else { "waiting for a checkpoint" }, &t["due"])] {
            for p in list.as_array().map_or(&[][..], Vec::as_slice) {
                rows.push(json!({
                    "trail": trail,
                    "segment": format!("{} ({}-{})", p["segment"], p["first_seq"], p["last_seq"]),
                    "category": p["category"],
                    "records": p["records"],
                    "kept_days": p["retention_days"],
                    "older_than": p["cutoff"],
                    "state": state,
                }));
            }
        }
    }
    if rows.is_empty() {
        println!(
            "nothing is due for removal (sealed segments of {} records; run at {})",
            v["segment_records"],
            v["at"].as_str().unwrap_or("-")
        );
        return;
    }
    output::table(&rows, &["trail", "segment", "category", "records", "kept_days", "older_than", "state"]);
    if !dry {
        println!(
            "{} records removed; each removal is named by an audit.retention record covered by a signed checkpoint",
            v["records_pruned"]
        );
    }
}

/// Policies are JSON documents: shown and set as JSON whatever `--json` says.
async fn policy(mut c: Client, cmd: PolicyCmd) -> CliResult {
    let check = |name: &str| {
        if POLICIES.contains(&name) {
            Ok(format!("/v1/policies/{name}"))
        } else {
            Err(CliError::usage("unknown_policy", format!("{name:?} is not a policy; use one of {}", POLICIES.join(", "))))
        }
    };
    let v = match cmd {
        PolicyCmd::Show { name } => c.call(Method::GET, &check(&name)?, None).await?,
        PolicyCmd::Set { name, file } => {
            let path = check(&name)?;
            let text = if file.as_os_str() == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| CliError::usage("read_failed", format!("cannot read standard input: {e}")))?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| CliError::usage("file_not_found", format!("cannot read {}: {e}", file.display())))?
            };
            let body: Value = serde_json::from_str(&text)
                .map_err(|e| CliError::usage("malformed_json", format!("{} is not JSON: {e}", file.display())))?;
            c.call(Method::PUT, &path, Some(body)).await?
        }
    };
    output::print_json(&v);
    Ok(())
}

async fn view(mut c: Client, cmd: ViewCmd, json_out: bool) -> CliResult {
    let show = |v: &Value| {
        println!(
            "{} (v{}, {}): {}",
            v["name"].as_str().unwrap_or(""),
            v["version"],
            v["classification"].as_str().unwrap_or("-"),
            v["sql"].as_str().unwrap_or("")
        );
        if let Some(e) = v["error"]["message"].as_str() {
            println!("  cannot be planned now: {e}");
        }
        output::table(v["columns"].as_array().map_or(&[], Vec::as_slice), &["name", "type", "classification", "masking"]);
    };
    match cmd {
        ViewCmd::List => {
            let v = c.call(Method::GET, "/v1/views", None).await?;
            emit(json_out, &v, |v| {
                output::table(
                    v["views"].as_array().map_or(&[], Vec::as_slice),
                    &["name", "classification", "version", "updated_at", "description"],
                )
            });
        }
        ViewCmd::Show { name } => {
            let v = c.call(Method::GET, &format!("/v1/views/{}", urlencode(&name)), None).await?;
            emit(json_out, &v, show);
        }
        ViewCmd::Save { name, sql, description } => {
            let body = json!({"sql": sql, "description": description});
            let v = c.call(Method::PUT, &format!("/v1/views/{}", urlencode(&name)), Some(body)).await?;
            emit(json_out, &v, show);
        }
        ViewCmd::Delete { name } => {
            c.call(Method::DELETE, &format!("/v1/views/{}", urlencode(&name)), None).await?;
            emit(json_out, &json!({"deleted": name}), |_| println!("view {name} deleted"));
        }
    }
    Ok(())
}
