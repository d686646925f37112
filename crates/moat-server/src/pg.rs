//! The PostgreSQL wire protocol endpoint (`server.pg`, default `127.0.0.1:6432`): `psql`, BI
//! tools and drivers reach the data through the *same* governed flow as `POST /v1/query`
//! ([`crate::governed`]): same tenant scope, masking, limits and audit. There is no second path.
//!
//! - **Startup**: `database` is the tenant slug, `user` the email; the password is the user's
//!   moat password (checked by [`password_login`], with the HTTP login's limiter, lockout and
//!   audit) or an API key of that tenant (then `user` may be anything). Passwords travel as
//!   cleartext password messages (the argon2id hash cannot answer SCRAM): see ARCHITECTURE.md.
//!   A password sign-in opens a session like an HTTP login; every statement re-checks it, so a
//!   revoked session, a disabled user or a suspended tenant ends access at the next statement.
//!   Signed-in connections count against `server.pg_max_connections_per_tenant`; one idle for
//!   `server.pg_idle_timeout_s` is closed.
//! - **Statements**, simple and extended protocol (Parse/Bind/Describe/Execute with portals
//!   and row limits, Close, Sync, Flush, cancel requests): read-only SQL goes to the engine in
//!   PostgreSQL's dialect, with `pg_catalog` for psql and BI introspection
//!   ([`moat_query::pgcompat`]); bound parameters become literals of the governed plan (so they
//!   meet masked values, like a literal would). Transaction control (`BEGIN`,
//!   `START TRANSACTION [READ ONLY]`, `COMMIT`, `ROLLBACK`, savepoints) is accepted with the
//!   right transaction status (moat stays read-only); `SET` of harmless session settings is
//!   accepted and `SHOW` of the settings drivers read is answered; anything else is refused
//!   with a SQLSTATE.
//! - **Errors** are PostgreSQL error responses: a SQLSTATE from [`sqlstate`] and the same
//!   scrubbed message as over HTTP.
//! - **Audit**: `pg.session.start` / `pg.session.end` (client address, application name, why
//!   it ended), and every statement as over HTTP (format `pgwire`, with its bound parameters);
//!   a statement cancelled before it answered is recorded as `query_canceled`.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::ParamValues;
use futures::{Sink, SinkExt, StreamExt};
use moat_core::MoatError;
use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::authz::Target;
use moat_core::ids::{Email, SessionId, TenantId, UserId};
use moat_core::principal::{Principal, Scope};
use moat_store::TenantStatus;
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::{CancelHandler, DefaultCancelHandler};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{DataRowEncoder, DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo as PgClientInfo, ClientPortalStore, DEFAULT_NAME, METADATA_APPLICATION_NAME, METADATA_DATABASE, METADATA_USER,
    PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::api::{ConnectionManager, Type};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::extendedquery::{Close, CloseComplete, Parse, ParseComplete, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use serde_json::json;
use tokio::net::TcpListener;

use crate::governed;
use crate::http::auth::{Second, invalid_credentials, open_session, password_login};
use crate::http::extract::{Action, ClientInfo, act, api_key_principal, live_session_role};
use crate::state::AppState;
use moat_query::Request;

/// What all connections share: cancel targets and the per-tenant connection counts.
struct Shared {
    cancels: Arc<ConnectionManager>,
    per_tenant: Mutex<HashMap<TenantId, usize>>,
    max_per_tenant: usize,
    idle_timeout: Option<Duration>,
}

impl Shared {
    /// Counts a signed-in connection against its tenant's limit.
    fn admit(&self, tenant: TenantId) -> Result<(), MoatError> {
        let mut counts = self.per_tenant.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(tenant).or_default();
        if self.max_per_tenant > 0 && *n >= self.max_per_tenant {
            return Err(MoatError::new(
                moat_core::ErrorKind::TooManyRequests { retry_after_s: None },
                "too_many_connections",
                format!("the tenant already holds {} PostgreSQL connections (server.pg_max_connections_per_tenant)", self.max_per_tenant),
            ));
        }
        *n += 1;
        Ok(())
    }

    fn release(&self, tenant: TenantId) {
        let mut counts = self.per_tenant.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&tenant);
            }
        }
    }
}

/// When a connection last did something, and how many answers it is streaming now.
struct Activity {
    last: Mutex<Instant>,
    busy: AtomicUsize,
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.last.lock().unwrap_or_else(|p| p.into_inner()).elapsed())
    }
}

/// Marks a connection busy while one of its answers streams.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::SeqCst);
        Self(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Accepts connections until `shutdown` resolves; each connection runs on its own task.
pub async fn serve(
    listener: TcpListener,
    st: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    let shared = Arc::new(Shared {
        // Cancel requests arrive on connections of their own and find their target here.
        cancels: Arc::new(ConnectionManager::new()),
        per_tenant: Mutex::new(HashMap::new()),
        max_per_tenant: st.config.server.pg_max_connections_per_tenant,
        idle_timeout: Some(st.config.server.pg_idle_timeout_s).filter(|s| *s > 0).map(Duration::from_secs),
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, addr)) => {
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(connection(st.clone(), shared.clone(), socket, addr));
                }
                // A failed accept (out of descriptors, a reset before accept) ends one
                // connection, never the listener.
                Err(e) => {
                    tracing::warn!(error = %e, "pgwire accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => return Ok(()),
        }
    }
}

async fn connection(st: Arc<AppState>, shared: Arc<Shared>, socket: tokio::net::TcpStream, addr: SocketAddr) {
    let activity = Arc::new(Activity { last: Mutex::new(Instant::now()), busy: AtomicUsize::new(0) });
    let conn = Conn {
        st: st.clone(),
        shared: shared.clone(),
        activity: activity.clone(),
        addr,
        session: Arc::new(Mutex::new(None)),
        prepared: Arc::default(),
    };
    let tls = st.tls.as_ref().map(|t| t.pg.clone());
    let mut work = Box::pin(pgwire::tokio::process_socket(socket, tls, conn.clone()));
    let mut reason = "client";
    loop {
        let check =
            shared.idle_timeout.map_or(Duration::from_secs(3600), |t| (t / 4).clamp(Duration::from_millis(50), Duration::from_secs(30)));
        tokio::select! {
            ended = &mut work => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, %addr, "pgwire connection ended with an error");
                    reason = "error";
                }
                break;
            }
            () = tokio::time::sleep(check), if shared.idle_timeout.is_some() => {
                if let (Some(limit), Some(idle)) = (shared.idle_timeout, activity.idle_for())
                    && idle >= limit
                {
                    tracing::info!(%addr, idle_s = idle.as_secs(), "closing an idle pgwire connection");
                    reason = "idle_timeout";
                    break;
                }
            }
        }
    }
    // Closes the socket (an idle connection is dropped here).
    drop(work);
    let session = conn.session.lock().map(|mut s| s.take()).unwrap_or_default();
    if let Some(s) = session {
        shared.release(s.tenant);
        let e = AuditEvent::new(Some(s.tenant), Category::Auth, "pg.session.end", s.actor.clone(), Outcome::Success)
            .resource(format!("tenant:{}", s.slug))
            .details(json!({"protocol": "pgwire", "reason": reason}));
        if let Err(e) = st.record(&s.client, e).await {
            tracing::error!(code = e.code, "could not record the end of a pgwire session");
        }
    }
}

/// One connection's handlers and, once signed in, its session (cheap to clone: pgwire asks
/// for a handler per phase).
#[derive(Clone)]
struct Conn {
    st: Arc<AppState>,
    shared: Arc<Shared>,
    activity: Arc<Activity>,
    addr: SocketAddr,
    session: Arc<Mutex<Option<Arc<WireSession>>>>,
    /// The names of the connection's prepared statements (at most
    /// [`MAX_PREPARED_PER_CONNECTION`]), so that `DEALLOCATE ALL` frees them all.
    prepared: Arc<Mutex<HashSet<String>>>,
}

/// Named prepared statements one connection may hold (PostgreSQL sets no limit; drivers keep a
/// bounded cache: PgJDBC 256, psycopg 100). Beyond it `Parse` answers 53400.
const MAX_PREPARED_PER_CONNECTION: usize = 1_000;

/// Counts a named statement in (the unnamed one and a name already held replace themselves).
fn admit_statement(held: &mut HashSet<String>, name: &str) -> Result<(), MoatError> {
    if name.is_empty() || name == DEFAULT_NAME || held.contains(name) {
        return Ok(());
    }
    if held.len() >= MAX_PREPARED_PER_CONNECTION {
        return Err(MoatError::new(
            moat_core::ErrorKind::TooManyRequests { retry_after_s: None },
            "too_many_prepared_statements",
            format!("a connection holds at most {MAX_PREPARED_PER_CONNECTION} prepared statements; DEALLOCATE some"),
        ));
    }
    held.insert(name.to_owned());
    Ok(())
}

/// How a signed-in connection proves itself again at every statement.
enum WireCredential {
    Password { scope: Scope, user_id: UserId, email: Email, session: SessionId },
    ApiKey(String),
}

struct WireSession {
    tenant: TenantId,
    slug: String,
    client: ClientInfo,
    actor: Actor,
    credential: WireCredential,
}

impl WireSession {
    /// The principal as of now (a revoked session or key, a disabled user, a suspended tenant
    /// or a changed role count at once).
    async fn principal(&self, st: &AppState) -> Result<Principal, MoatError> {
        match &self.credential {
            WireCredential::ApiKey(key) => api_key_principal(st, key).await,
            WireCredential::Password { scope, user_id, email, session } => {
                let role = live_session_role(st, scope.tenant_id(), *session, *user_id).await?;
                Principal::for_session(*scope, *user_id, email.clone(), role, *session)
                    .ok_or_else(|| MoatError::unauthenticated("invalid_token", "the session is not valid"))
            }
        }
    }
}

impl Conn {
    fn client_info(&self, application_name: Option<&str>) -> ClientInfo {
        ClientInfo {
            ip: Some(self.addr.ip().to_string()),
            user_agent: Some(match application_name {
                Some(a) if !a.is_empty() => format!("pgwire {}", a.chars().filter(|c| !c.is_control()).take(200).collect::<String>()),
                _ => "pgwire".to_owned(),
            }),
            request_id: None,
            justification: None,
        }
    }

    /// Signs a connection in: a tenant user's password, or an API key of that tenant.
    async fn sign_in(&self, slug: &str, user: &str, password: &str, client: ClientInfo) -> Result<WireSession, MoatError> {
        let slug = slug.trim().to_ascii_lowercase();
        if password.starts_with(moat_core::apikey::PREFIX) {
            let p = api_key_principal(&self.st, password).await?;
            let tenant = self.st.stores.meta.tenant_by_slug(&slug).await?.filter(|t| t.status == TenantStatus::Active);
            // A key signs in only to its own tenant; another tenant's name reads as a bad key.
            let tenant = match (tenant, p.tenant_id()) {
                (Some(t), Some(own)) if t.id == own => t,
                _ => return Err(moat_core::apikey::invalid_api_key()),
            };
            return Ok(WireSession {
                tenant: tenant.id,
                slug,
                actor: Actor::of(&p),
                client,
                credential: WireCredential::ApiKey(password.to_owned()),
            });
        }
        if slug.is_empty() {
            return Err(invalid_credentials());
        }
        let ok = password_login(&self.st, &client, Some(&slug), user, password, Second::Code(None), "pgwire").await?;
        let tenant = ok.trail.ok_or_else(invalid_credentials)?;
        let (session, _) = open_session(&self.st, &client, ok.scope, ok.user.id).await?;
        let e = AuditEvent::new(Some(tenant), Category::Auth, "auth.login", ok.actor(), Outcome::Success)
            .resource(format!("user:{}", ok.user.id))
            .details(json!({"via": "pgwire"}));
        self.st.record(&client, e).await?;
        Ok(WireSession {
            tenant,
            slug,
            actor: ok.actor(),
            client,
            credential: WireCredential::Password { scope: ok.scope, user_id: ok.user.id, email: ok.user.email, session },
        })
    }

    fn current(&self) -> Option<Arc<WireSession>> {
        self.session.lock().ok().and_then(|s| s.clone())
    }
}

/// A PostgreSQL error response for a moat error: a SQLSTATE and the same scrubbed message as
/// over HTTP, with moat's stable code as the detail.
fn pg_error(severity: &str, e: &MoatError) -> PgWireError {
    let mut info = ErrorInfo::new(severity.to_owned(), sqlstate(e).to_owned(), e.message.clone());
    info.detail = Some(format!("moat error code: {}", e.code));
    PgWireError::UserError(Box::new(info))
}

/// The SQLSTATE for a moat error (<https://www.postgresql.org/docs/current/errcodes-appendix.html>).
pub fn sqlstate(e: &MoatError) -> &'static str {
    use moat_core::ErrorKind as K;
    match e.code {
        "invalid_credentials" | "invalid_api_key" => "28P01",
        "syntax_error" | "multiple_statements" | "empty_query" => "42601",
        "statement_not_allowed" | "read_only" => "25006",
        "query_too_deep" | "view_too_deep" => "54001",
        "query_memory_limit" => "53200",
        "query_timeout" => "57014",
        "result_truncated" => "54000",
        "not_supported" | "setting_not_supported" => "0A000",
        "unknown_setting" => "42704",
        "invalid_parameter" => "22P02",
        "too_many_queries" => "53400",
        "too_many_connections" => "53300",
        "in_failed_transaction" => "25P02",
        "too_many_prepared_statements" => "53400",
        "query_error" => query_error_state(&e.message),
        _ => match e.kind {
            K::Unauthenticated => "28000",
            K::Forbidden => "42501",
            K::NotFound => "42P01",
            K::TooManyRequests { .. } => "53400",
            K::BadRequest | K::Unprocessable | K::PayloadTooLarge | K::Conflict => "22023",
            K::Unavailable => "58000",
            K::Internal => "XX000",
        },
    }
}

/// PostgreSQL's finer states for the engine's planning errors, read from the (scrubbed) message
/// DataFusion words them with; an omitted column reads exactly like one that does not exist.
fn query_error_state(message: &str) -> &'static str {
    if message.contains("No field named") || (message.starts_with("column ") && message.contains("not found")) {
        "42703"
    } else if message.contains("not found") && message.starts_with("table ") {
        "42P01"
    } else if message.contains("Invalid function") {
        "42883"
    } else {
        "42000"
    }
}

fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = format!("{PG_VERSION} (moat {})", env!("CARGO_PKG_VERSION"));
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p
}

#[async_trait]
impl StartupHandler for Conn {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: PgClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client.send(PgWireBackendMessage::Authentication(Authentication::CleartextPassword)).await?;
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                // With TLS on, credentials cross the network only encrypted (loopback aside).
                if tls_needed(self.st.tls.is_some(), client.is_secure(), self.addr.ip()) {
                    let e = MoatError::unauthenticated("tls_required", "this server accepts sign-ins over TLS only (sslmode=require)");
                    return Err(pg_error("FATAL", &e));
                }
                let pwd = pwd.into_password()?;
                let meta = client.metadata();
                let user = meta.get(METADATA_USER).cloned().unwrap_or_default();
                // libpq defaults the database to the user name; an email is never a slug.
                let db = meta.get(METADATA_DATABASE).cloned().unwrap_or_default();
                let app = meta.get(METADATA_APPLICATION_NAME).cloned();
                let info = self.client_info(app.as_deref());
                let session = self.sign_in(&db, &user, &pwd.password, info).await.map_err(|e| pg_error("FATAL", &e))?;
                let start =
                    AuditEvent::new(Some(session.tenant), Category::Auth, "pg.session.start", session.actor.clone(), Outcome::Success)
                        .resource(format!("tenant:{}", session.slug))
                        .details(json!({"protocol": "pgwire", "application_name": app}));
                self.shared.admit(session.tenant).map_err(|e| pg_error("FATAL", &e))?;
                if let Err(e) = self.st.record(&session.client, start).await {
                    self.shared.release(session.tenant);
                    return Err(pg_error("FATAL", &e));
                }
                if let Ok(mut s) = self.session.lock() {
                    *s = Some(Arc::new(session));
                }
                let (pid, secret) = pid_and_secret(client);
                client.set_pid_and_secret_key(pid, secret.clone());
                // A cancel request naming this key interrupts the statement in progress.
                let (handle, guard) = self.shared.cancels.register(pid, secret);
                client.session_extensions().insert(handle);
                client.session_extensions().insert(guard);
                finish_authentication(client, &server_parameters()).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether a sign-in must be refused for want of TLS: with TLS on, credentials cross the
/// network only encrypted; plaintext stays possible from the server's own host (loopback).
fn tls_needed(tls_on: bool, secure: bool, peer: std::net::IpAddr) -> bool {
    tls_on && !secure && !peer.is_loopback()
}

/// A process id and secret key for cancel requests: the secret is random (32 bytes from
/// protocol 3.2 on); the id only needs to differ between live connections.
fn pid_and_secret(client: &dyn PgClientInfo) -> (i32, pgwire::messages::startup::SecretKey) {
    static PIDS: std::sync::OnceLock<RandomPidSecretKeyGenerator> = std::sync::OnceLock::new();
    PIDS.get_or_init(RandomPidSecretKeyGenerator::default).generate(client)
}

/// What a statement is, before the engine sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO: inside a read-only transaction, nothing to undo.
    Savepoint(&'static str),
    Set,
    /// `DEALLOCATE [PREPARE] name | ALL`: drivers free their prepared statements (`None`: all
    /// of the connection's).
    Deallocate(Option<String>),
    /// `SHOW` of a setting moat answers itself ([`moat_query::pgcompat::SETTINGS`]): its name
    /// as PostgreSQL spells it (the column) and its value.
    Show(&'static str, &'static str),
    Query,
}

use moat_query::pgcompat::PG_VERSION;

/// Settings a client may set: they change nothing moat does (output is always UTF-8, ISO dates,
/// shortest floats; the search path is the tenant's one schema).
const HARMLESS_SETTINGS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "extra_float_digits",
    "search_path",
    "intervalstyle",
    "timezone",
    "time zone",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "client_min_messages",
    "bytea_output",
    "standard_conforming_strings",
    "default_transaction_read_only",
    "transaction_read_only",
    "session characteristics as transaction read only",
    "transaction isolation level",
    "transaction read only",
];

/// Classifies a statement by its leading words; anything that is not transaction control or
/// `SET` goes to the engine, which allows only read-only queries.
fn classify(sql: &str) -> Result<Command, MoatError> {
    let text = sql.trim().trim_end_matches(';').trim();
    let words: Vec<String> = text.split_whitespace().take(6).map(str::to_ascii_lowercase).collect();
    let w = |i: usize| words.get(i).map_or("", String::as_str);
    let read_write = || text.to_ascii_lowercase().contains("read write");
    Ok(match w(0) {
        "begin" | "start" if w(0) == "begin" || w(1) == "transaction" => {
            if read_write() {
                return Err(MoatError::forbidden("read_only", "moat is read-only: a READ WRITE transaction cannot be started"));
            }
            Command::Begin
        }
        "commit" | "end" => Command::Commit,
        "abort" => Command::Rollback,
        "rollback" if w(1) == "to" || w(2) == "to" => Command::Savepoint("ROLLBACK"),
        "rollback" => Command::Rollback,
        "savepoint" => Command::Savepoint("SAVEPOINT"),
        "deallocate" => {
            let name = if w(1) == "prepare" { w(2) } else { w(1) };
            match name {
                "" => return Err(MoatError::bad_request("syntax_error", "DEALLOCATE needs a statement name or ALL")),
                "all" => Command::Deallocate(None),
                // The name as sent (statement names are case-sensitive when quoted).
                _ => {
                    let raw = text.split_whitespace().nth(if w(1) == "prepare" { 2 } else { 1 }).unwrap_or_default();
                    Command::Deallocate(Some(raw.trim_matches('"').to_owned()))
                }
            }
        }
        "release" => Command::Savepoint("RELEASE"),
        "show" => {
            let name = text[4..].trim().to_ascii_lowercase();
            match moat_query::pgcompat::setting(&name) {
                Some((column, value)) => Command::Show(column, value),
                None => {
                    let name: String = name.chars().take(64).collect();
                    return Err(MoatError::new(
                        moat_core::ErrorKind::BadRequest,
                        "unknown_setting",
                        format!("moat does not show the setting {name:?}"),
                    ));
                }
            }
        }
        "set" => {
            let rest = text[3..].trim().to_ascii_lowercase();
            let rest = rest.strip_prefix("session ").or_else(|| rest.strip_prefix("local ")).unwrap_or(&rest).trim_start();
            let harmless = HARMLESS_SETTINGS.iter().any(|s| {
                rest.strip_prefix(s).is_some_and(|after| after.is_empty() || after.starts_with([' ', '=', '\t']) || *s == "time zone")
            });
            if !harmless || read_write() {
                let name: String = rest.split([' ', '=', '\t']).next().unwrap_or("").chars().take(64).collect();
                return Err(MoatError::new(
                    moat_core::ErrorKind::BadRequest,
                    "setting_not_supported",
                    format!("the setting {name:?} cannot be changed through moat"),
                ));
            }
            Command::Set
        }
        _ => Command::Query,
    })
}

/// PostgreSQL's rule after an error inside a transaction block: every statement is refused
/// until the block ends, and `COMMIT` then rolls back (its tag says `ROLLBACK`). Rolling back to
/// a savepoint is refused too: the protocol library keeps the failed status until the block
/// ends, so moat asks for the whole `ROLLBACK` (a read-only transaction loses nothing by it).
fn after_failure(command: &Command) -> Result<Command, MoatError> {
    match command {
        Command::Rollback | Command::Commit => Ok(Command::Rollback),
        Command::Savepoint("ROLLBACK") => Err(MoatError::new(
            moat_core::ErrorKind::BadRequest,
            "not_supported",
            "after an error moat rolls back the whole transaction only: send ROLLBACK (nothing was written)",
        )),
        _ => Err(MoatError::new(
            moat_core::ErrorKind::BadRequest,
            "in_failed_transaction",
            "current transaction is aborted, commands ignored until end of transaction block",
        )),
    }
}

/// The command to carry out given the connection's transaction status.
fn in_status(status: TransactionStatus, command: &Command) -> Result<Command, MoatError> {
    match status {
        TransactionStatus::Error => after_failure(command),
        _ => Ok(command.clone()),
    }
}

#[async_trait]
impl SimpleQueryHandler for Conn {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: PgClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.signed_in()?;
        let command = match classify(query).and_then(|c| in_status(client.transaction_status(), &c)) {
            Ok(c) => c,
            Err(e) => return Ok(vec![Response::Error(Box::new(error_info(&e)))]),
        };
        if let Command::Deallocate(name) = &command {
            self.deallocate(client.portal_store(), name.as_deref());
        }
        let request = Request { sql: query, postgres: Some(&session.slug), bind: None };
        match self.respond(&session, &command, request, &Format::UnifiedText).await {
            Ok(r) => Ok(vec![r]),
            Err(e) if ends_connection(&e) => Err(pg_error("FATAL", &e)),
            Err(e) => Ok(vec![Response::Error(Box::new(error_info(&e)))]),
        }
    }
}

/// A revoked session or key, a disabled user or a suspended tenant ends the connection.
fn ends_connection(e: &MoatError) -> bool {
    matches!(e.kind, moat_core::ErrorKind::Unauthenticated) || e.code == "tenant_suspended"
}

/// A statement a client parsed (extended query protocol): its text and what it is.
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    sql: String,
    command: Command,
}

/// Parses by classifying: planning waits for Describe or Execute, when the statement's
/// parameters and the caller's catalog are known.
#[derive(Debug, Default)]
pub struct StatementParser;

#[async_trait]
impl QueryParser for StatementParser {
    type Statement = ParsedStatement;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<ParsedStatement>>
    where
        C: PgClientInfo + Unpin + Send + Sync,
    {
        let command = classify(sql).map_err(|e| pg_error("ERROR", &e))?;
        Ok(Some(ParsedStatement { sql: sql.to_owned(), command }))
    }

    fn get_parameter_types(&self, _stmt: &ParsedStatement) -> PgWireResult<Vec<Type>> {
        Ok(Vec::new())
    }

    fn get_result_schema(&self, _stmt: &ParsedStatement, _format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        Ok(Vec::new())
    }
}

/// Decodes a portal's parameters (text or binary, as the client sent them) into the types the
/// client declared or, where it declared none, the plan inferred.
fn binder(portal: &Portal<ParsedStatement>) -> impl Fn(&[Option<DataType>]) -> Result<ParamValues, MoatError> + Send + Sync + '_ {
    move |inferred: &[Option<DataType>]| {
        let inferred: Vec<Option<&DataType>> = inferred.iter().map(Option::as_ref).collect();
        deserialize_parameters(portal, &inferred).map_err(|e| {
            let msg = match e {
                PgWireError::UserError(info) => info.message,
                other => other.to_string(),
            };
            MoatError::bad_request("invalid_parameter", moat_query::scrub::scrub(&msg))
        })
    }
}

#[async_trait]
impl ExtendedQueryHandler for Conn {
    type Statement = ParsedStatement;
    type QueryParser = StatementParser;

    fn query_parser(&self) -> Arc<StatementParser> {
        Arc::new(StatementParser)
    }

    /// pgwire's own, with the connection's prepared statements counted and bounded.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: PgClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = ParsedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_owned());
        self.prepared(|held| admit_statement(held, &name)).map_err(|e| self.failure(&e))?;
        match StoredStatement::parse(client, &message, self.query_parser()).await? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        client.send(PgWireBackendMessage::ParseComplete(ParseComplete::new())).await?;
        Ok(())
    }

    /// pgwire's own, with a closed statement no longer counted.
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: PgClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = ParsedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => self.deallocate(client.portal_store(), Some(name)),
            TARGET_TYPE_BYTE_PORTAL => client.portal_store().rm_portal(name),
            _ => {}
        }
        client.send(PgWireBackendMessage::CloseComplete(CloseComplete::new())).await?;
        Ok(())
    }

    async fn do_describe_statement<C>(
        &self,
        client: &mut C,
        target: &StoredStatement<ParsedStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: PgClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = ParsedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let declared = &target.parameter_types;
        in_status(client.transaction_status(), &target.statement.command).map_err(|e| self.failure(&e))?;
        if target.statement.command != Command::Query {
            let params = declared.iter().map(|t| t.clone().unwrap_or(Type::TEXT)).collect();
            return Ok(DescribeStatementResponse::new(params, answered_here(&target.statement.command, &Format::UnifiedText)));
        }
        let session = self.signed_in()?;
        let request = Request { sql: &target.statement.sql, postgres: Some(&session.slug), bind: None };
        let described = self.describe(&session, request).await.map_err(|e| self.failure(&e))?;
        // The client's declared types first; then what the plan infers; text where neither
        // tells (PostgreSQL's `unknown` literal).
        let params = (0..declared.len().max(described.params.len()))
            .map(|i| {
                declared
                    .get(i)
                    .cloned()
                    .flatten()
                    .or_else(|| described.params.get(i).cloned().flatten().and_then(|t| into_pg_type(&t).ok()))
                    .unwrap_or(Type::TEXT)
            })
            .collect();
        let fields = pg_fields(&described.schema, &Format::UnifiedText).map_err(|e| self.failure(&e))?;
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(&self, client: &mut C, portal: &Portal<ParsedStatement>) -> PgWireResult<DescribePortalResponse>
    where
        C: PgClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = ParsedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let command = &portal.statement.statement.command;
        in_status(client.transaction_status(), command).map_err(|e| self.failure(&e))?;
        if *command != Command::Query {
            return Ok(DescribePortalResponse::new(answered_here(command, &portal.result_column_format)));
        }
        let session = self.signed_in()?;
        let bind = binder(portal);
        let request = Request { sql: &portal.statement.statement.sql, postgres: Some(&session.slug), bind: Some(&bind) };
        let described = self.describe(&session, request).await.map_err(|e| self.failure(&e))?;
        let fields = pg_fields(&described.schema, &portal.result_column_format).map_err(|e| self.failure(&e))?;
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<ParsedStatement>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: PgClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = ParsedStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let session = self.signed_in()?;
        let statement = &portal.statement.statement;
        let command = in_status(client.transaction_status(), &statement.command).map_err(|e| self.failure(&e))?;
        if let Command::Deallocate(name) = &command {
            self.deallocate(client.portal_store(), name.as_deref());
        }
        let bind = binder(portal);
        let request = Request { sql: &statement.sql, postgres: Some(&session.slug), bind: Some(&bind) };
        // Rows beyond a portal's row limit wait in the portal (pgwire suspends and resumes it).
        self.respond(&session, &command, request, &portal.result_column_format).await.map_err(|e| self.failure(&e))
    }
}

fn error_info(e: &MoatError) -> ErrorInfo {
    match pg_error("ERROR", e) {
        PgWireError::UserError(info) => *info,
        _ => ErrorInfo::new("ERROR".into(), "XX000".into(), "internal error".into()),
    }
}

/// The columns of a statement moat answers itself: `SHOW`'s one; none for the others.
fn answered_here(command: &Command, format: &Format) -> Vec<FieldInfo> {
    match command {
        Command::Show(column, _) => vec![FieldInfo::new((*column).to_owned(), None, None, Type::TEXT, format.format_for(0))],
        _ => Vec::new(),
    }
}

/// A one-column, one-row text answer (`SHOW`).
fn one_text_row(column: &'static str, value: &'static str, format: &Format) -> Result<QueryResponse, MoatError> {
    let fields = Arc::new(answered_here(&Command::Show(column, value), format));
    let mut row = DataRowEncoder::new(fields.clone());
    row.encode_field(&value).map_err(|e| {
        tracing::error!(error = %e, "could not encode a setting");
        MoatError::internal("pgwire_encoding")
    })?;
    let row = row.take_row();
    Ok(QueryResponse::new(fields, futures::stream::iter(vec![Ok(row)])))
}

/// PostgreSQL fields for a result schema, each in the format the client asked for.
fn pg_fields(schema: &datafusion::arrow::datatypes::Schema, format: &Format) -> Result<Vec<FieldInfo>, MoatError> {
    arrow_schema_to_pg_fields(schema, format, None).map_err(|e| {
        tracing::error!(error = %e, "a result type has no PostgreSQL mapping");
        MoatError::internal("pgwire_type")
    })
}

impl Conn {
    fn prepared<T>(&self, f: impl FnOnce(&mut HashSet<String>) -> T) -> T {
        f(&mut self.prepared.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Frees one prepared statement, or all of them (`DEALLOCATE ALL`).
    fn deallocate(&self, store: &impl PortalStore, name: Option<&str>) {
        let names: Vec<String> = self.prepared(|held| match name {
            Some(n) => {
                held.remove(n);
                vec![n.to_owned()]
            }
            None => held.drain().collect(),
        });
        for n in names {
            store.rm_statement(&n);
        }
    }

    fn signed_in(&self) -> PgWireResult<Arc<WireSession>> {
        self.activity.touch();
        self.current()
            .ok_or_else(|| pg_error("FATAL", &MoatError::unauthenticated("missing_credentials", "the connection is not signed in")))
    }

    /// The error response for `e`; fatal where the connection must end.
    fn failure(&self, e: &MoatError) -> PgWireError {
        pg_error(if ends_connection(e) { "FATAL" } else { "ERROR" }, e)
    }

    /// The caller as of now, allowed to run queries (a denial is audited).
    async fn querier(&self, session: &WireSession) -> Result<Principal, MoatError> {
        let principal = session.principal(&self.st).await?;
        let wanted = <act::QueryExecute as Action>::PERMISSION;
        if let Err(denial) = self.st.authorizer.authorize(&principal, &wanted, Target::Tenant(session.tenant)) {
            let event = AuditEvent::new(Some(session.tenant), Category::Authz, "authz.denied", Actor::of(&principal), Outcome::Denied)
                .resource("pgwire query")
                .details(json!({"permission": wanted.to_string(), "code": denial.code}));
            self.st.record(&session.client, event).await?;
            return Err(denial);
        }
        Ok(principal)
    }

    async fn describe(&self, session: &WireSession, request: Request<'_>) -> Result<moat_query::Described, MoatError> {
        let principal = self.querier(session).await?;
        governed::describe(&self.st, &session.client, &principal, session.tenant, request).await
    }

    /// One statement: transaction control and harmless settings answered here, queries through
    /// the governed flow.
    async fn respond(
        &self,
        session: &WireSession,
        command: &Command,
        request: Request<'_>,
        format: &Format,
    ) -> Result<Response, MoatError> {
        Ok(match command {
            Command::Begin => Response::TransactionStart(Tag::new("BEGIN")),
            Command::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            Command::Rollback => Response::TransactionEnd(Tag::new("ROLLBACK")),
            Command::Savepoint(tag) => Response::Execution(Tag::new(tag)),
            Command::Set => Response::Execution(Tag::new("SET")),
            Command::Deallocate(_) => Response::Execution(Tag::new("DEALLOCATE")),
            Command::Show(column, value) => Response::Query(one_text_row(column, value, format)?),
            Command::Query => Response::Query(self.run(session, request, format).await?),
        })
    }

    /// One read-only statement through the governed flow; rows flow after the access is
    /// recorded, and a result cut at the row limit ends in an error, never passes as whole.
    async fn run(&self, session: &WireSession, request: Request<'_>, format: &Format) -> Result<QueryResponse, MoatError> {
        let principal = self.querier(session).await?;
        let planned = governed::plan(&self.st, &session.client, &principal, session.tenant, request, "pgwire").await?;
        let fields = Arc::new(pg_fields(&planned.stream.schema, format)?);
        let streaming = planned.stream().await?;
        let max_rows = self.st.engine.limits().max_rows;
        let row_fields = fields.clone();
        // Busy until the answer is sent or dropped: an answer streaming is not idleness.
        let rows = futures::stream::unfold(Some((streaming, Busy::new(&self.activity))), move |state| {
            let fields = row_fields.clone();
            async move {
                let (mut s, busy) = state?;
                match s.next_batch().await {
                    Some(Ok(batch)) => {
                        let rows: Vec<_> = encode_recordbatch(fields, batch).collect();
                        Some((futures::stream::iter(rows), Some((s, busy))))
                    }
                    Some(Err(e)) => Some((futures::stream::iter(vec![Err(pg_error("ERROR", &e))]), None)),
                    None if s.stream.truncated() => {
                        let e = MoatError::new(
                            moat_core::ErrorKind::Unprocessable,
                            "result_truncated",
                            format!("the result has more than {max_rows} rows; add a LIMIT or narrow the query"),
                        );
                        Some((futures::stream::iter(vec![Err(pg_error("ERROR", &e))]), None))
                    }
                    None => None,
                }
            }
        })
        .flatten();
        Ok(QueryResponse::new(fields, rows))
    }
}

impl PgWireServerHandlers for Conn {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::new(self.clone())
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::new(self.clone())
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(DefaultCancelHandler::new(self.shared.cancels.clone()))
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_tls_on_only_loopback_may_sign_in_in_plaintext() {
        let remote: std::net::IpAddr = "10.1.2.3".parse().unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let local = std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
        assert!(tls_needed(true, false, remote), "plaintext from the network");
        assert!(!tls_needed(true, true, remote));
        assert!(!tls_needed(true, false, local));
        assert!(!tls_needed(false, false, remote), "TLS off: nothing to require");
    }

    #[test]
    fn statements_are_classified_before_the_engine() {
        assert_eq!(classify("DEALLOCATE PREPARE \"_pg3_1\"").ok(), Some(Command::Deallocate(Some("_pg3_1".to_owned()))));
        assert_eq!(classify("deallocate all").ok(), Some(Command::Deallocate(None)));
        assert_eq!(classify("SHOW transaction isolation level").ok(), Some(Command::Show("transaction_isolation", "read committed")));
        assert_eq!(classify("SHOW data_directory").map_err(|e| e.code).err(), Some("unknown_setting"));
        assert_eq!(classify("SET role = 'postgres'").map_err(|e| e.code).err(), Some("setting_not_supported"));
        assert_eq!(classify("BEGIN READ WRITE").map_err(|e| e.code).err(), Some("read_only"));
        assert_eq!(classify("SELECT 1").ok(), Some(Command::Query));
    }

    #[test]
    fn after_an_error_in_a_transaction_only_its_end_is_accepted() {
        let failed = TransactionStatus::Error;
        for sql in ["SELECT 1", "SET application_name = 'x'", "SHOW search_path", "BEGIN", "SAVEPOINT a", "DEALLOCATE x"] {
            let command = classify(sql).unwrap_or(Command::Query);
            let refused = in_status(failed, &command).map_err(|e| (e.code, sqlstate(&e))).err();
            assert_eq!(refused, Some(("in_failed_transaction", "25P02")), "{sql}");
        }
        assert_eq!(in_status(failed, &Command::Rollback).ok(), Some(Command::Rollback));
        assert_eq!(in_status(failed, &Command::Commit).ok(), Some(Command::Rollback), "COMMIT of a failed block rolls back");
        assert_eq!(in_status(failed, &Command::Savepoint("ROLLBACK")).map_err(|e| e.code).err(), Some("not_supported"));
        for status in [TransactionStatus::Idle, TransactionStatus::Transaction] {
            assert_eq!(in_status(status, &Command::Query).ok(), Some(Command::Query));
            assert_eq!(in_status(status, &Command::Commit).ok(), Some(Command::Commit));
        }
    }

    #[test]
    fn prepared_statements_are_bounded_per_connection() {
        let mut held = HashSet::new();
        for i in 0..MAX_PREPARED_PER_CONNECTION {
            assert!(admit_statement(&mut held, &format!("s{i}")).is_ok());
        }
        assert!(admit_statement(&mut held, "s0").is_ok(), "re-preparing a held name replaces it");
        assert!(admit_statement(&mut held, "").is_ok() && admit_statement(&mut held, DEFAULT_NAME).is_ok(), "the unnamed one");
        let e = admit_statement(&mut held, "one_more").map_err(|e| (e.code, sqlstate(&e))).err();
        assert_eq!(e, Some(("too_many_prepared_statements", "53400")));
        assert_eq!(held.len(), MAX_PREPARED_PER_CONNECTION);
    }

    #[test]
    fn planning_errors_get_postgresql_states() {
        let state = |m: &str| sqlstate(&MoatError::bad_request("query_error", m.to_owned()));
        assert_eq!(state("column 'nothing_here' not found"), "42703");
        assert_eq!(state("Schema error: No field named nothing_here."), "42703");
        assert_eq!(state("table 'acme.public.nope' not found"), "42P01");
        assert_eq!(state("Invalid function 'nope'"), "42883");
        assert_eq!(state("Cannot cast string to Int64"), "42000");
    }
}
