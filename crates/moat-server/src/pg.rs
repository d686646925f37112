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
//! - **Statements** (simple query protocol): read-only SQL goes to the engine; transaction
//!   control (`BEGIN`, `START TRANSACTION [READ ONLY]`, `COMMIT`, `ROLLBACK`, savepoints) is
//!   accepted with the right transaction status (moat stays read-only); `SET` of harmless
//!   session settings is accepted, anything else refused with a SQLSTATE.
//! - **Errors** are PostgreSQL error responses: a SQLSTATE from [`sqlstate`] and the same
//!   scrubbed message as over HTTP.
//! - **Audit**: `pg.session.start` / `pg.session.end` (client address, application name), and
//!   every statement as over HTTP (format `pgwire`).

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use async_trait::async_trait;
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
use pgwire::api::portal::Format;
use pgwire::api::query::SimpleQueryHandler;
use pgwire::api::results::{QueryResponse, Response, Tag};
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo as PgClientInfo, ClientPortalStore, METADATA_APPLICATION_NAME, METADATA_DATABASE, METADATA_USER, PgWireConnectionState,
    PgWireServerHandlers, PidSecretKeyGenerator, RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use serde_json::json;
use tokio::net::TcpListener;

use crate::governed;
use crate::http::auth::{invalid_credentials, open_session, password_login};
use crate::http::extract::{Action, ClientInfo, act, api_key_principal, live_session_role};
use crate::state::AppState;

/// Accepts connections until `shutdown` resolves; each connection runs on its own task.
pub async fn serve(
    listener: TcpListener,
    st: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, addr)) => {
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(connection(st.clone(), socket, addr));
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

async fn connection(st: Arc<AppState>, socket: tokio::net::TcpStream, addr: SocketAddr) {
    let conn = Conn { st: st.clone(), addr, session: Arc::new(Mutex::new(None)) };
    if let Err(e) = pgwire::tokio::process_socket(socket, None, conn.clone()).await {
        tracing::debug!(error = %e, %addr, "pgwire connection ended with an error");
    }
    let session = conn.session.lock().map(|mut s| s.take()).unwrap_or_default();
    if let Some(s) = session {
        let e = AuditEvent::new(Some(s.tenant), Category::Auth, "pg.session.end", s.actor.clone(), Outcome::Success)
            .resource(format!("tenant:{}", s.slug))
            .details(json!({"protocol": "pgwire"}));
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
    addr: SocketAddr,
    session: Arc<Mutex<Option<Arc<WireSession>>>>,
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
                let role = live_session_role(st, *session, *user_id).await?;
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
        let ok = password_login(&self.st, &client, Some(&slug), user, password, "pgwire").await?;
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
        "too_many_queries" => "53400",
        "query_error" => "42000",
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

fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = format!("16.6 (moat {})", env!("CARGO_PKG_VERSION"));
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
                self.st.record(&session.client, start).await.map_err(|e| pg_error("FATAL", &e))?;
                if let Ok(mut s) = self.session.lock() {
                    *s = Some(Arc::new(session));
                }
                let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
                client.set_pid_and_secret_key(pid, secret);
                finish_authentication(client, &server_parameters()).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// What a statement is, before the engine sees it.
#[derive(Debug, PartialEq, Eq)]
enum Statement {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE, ROLLBACK TO: inside a read-only transaction, nothing to undo.
    Savepoint(&'static str),
    Set,
    Query,
}

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
fn classify(sql: &str) -> Result<Statement, MoatError> {
    let text = sql.trim().trim_end_matches(';').trim();
    let words: Vec<String> = text.split_whitespace().take(6).map(str::to_ascii_lowercase).collect();
    let w = |i: usize| words.get(i).map_or("", String::as_str);
    let read_write = || text.to_ascii_lowercase().contains("read write");
    Ok(match w(0) {
        "begin" | "start" if w(0) == "begin" || w(1) == "transaction" => {
            if read_write() {
                return Err(MoatError::forbidden("read_only", "moat is read-only: a READ WRITE transaction cannot be started"));
            }
            Statement::Begin
        }
        "commit" | "end" => Statement::Commit,
        "abort" => Statement::Rollback,
        "rollback" if w(1) == "to" || w(2) == "to" => Statement::Savepoint("ROLLBACK"),
        "rollback" => Statement::Rollback,
        "savepoint" => Statement::Savepoint("SAVEPOINT"),
        "release" => Statement::Savepoint("RELEASE"),
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
            Statement::Set
        }
        _ => Statement::Query,
    })
}

#[async_trait]
impl SimpleQueryHandler for Conn {
    async fn do_query<C>(&self, _client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: PgClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(session) = self.current() else {
            return Err(pg_error("FATAL", &MoatError::unauthenticated("missing_credentials", "the connection is not signed in")));
        };
        let one = |r: Response| Ok(vec![r]);
        match classify(query) {
            Err(e) => one(Response::Error(Box::new(error_info(&e)))),
            Ok(Statement::Begin) => one(Response::TransactionStart(Tag::new("BEGIN"))),
            Ok(Statement::Commit) => one(Response::TransactionEnd(Tag::new("COMMIT"))),
            Ok(Statement::Rollback) => one(Response::TransactionEnd(Tag::new("ROLLBACK"))),
            Ok(Statement::Savepoint(tag)) => one(Response::Execution(Tag::new(tag))),
            Ok(Statement::Set) => one(Response::Execution(Tag::new("SET"))),
            Ok(Statement::Query) => match self.run(&session, query).await {
                Ok(r) => one(Response::Query(r)),
                // A revoked session or suspended tenant ends the connection.
                Err(e) if matches!(e.kind, moat_core::ErrorKind::Unauthenticated) || e.code == "tenant_suspended" => {
                    Err(pg_error("FATAL", &e))
                }
                Err(e) => one(Response::Error(Box::new(error_info(&e)))),
            },
        }
    }
}

fn error_info(e: &MoatError) -> ErrorInfo {
    match pg_error("ERROR", e) {
        PgWireError::UserError(info) => *info,
        _ => ErrorInfo::new("ERROR".into(), "XX000".into(), "internal error".into()),
    }
}

impl Conn {
    /// One read-only statement through the governed flow; rows flow after the access is
    /// recorded, and a result cut at the row limit ends in an error, never passes as whole.
    async fn run(&self, session: &WireSession, sql: &str) -> Result<QueryResponse, MoatError> {
        let principal = session.principal(&self.st).await?;
        let wanted = <act::QueryExecute as Action>::PERMISSION;
        if let Err(denial) = self.st.authorizer.authorize(&principal, &wanted, Target::Tenant(session.tenant)) {
            let event = AuditEvent::new(Some(session.tenant), Category::Authz, "authz.denied", Actor::of(&principal), Outcome::Denied)
                .resource("pgwire query")
                .details(json!({"permission": wanted.to_string(), "code": denial.code}));
            self.st.record(&session.client, event).await?;
            return Err(denial);
        }
        let planned = governed::plan(&self.st, &session.client, &principal, session.tenant, sql, "pgwire").await?;
        let fields = arrow_schema_to_pg_fields(&planned.stream.schema, &Format::UnifiedText, None).map_err(|e| {
            tracing::error!(error = %e, "a result type has no PostgreSQL mapping");
            MoatError::internal("pgwire_type")
        })?;
        let fields = Arc::new(fields);
        let streaming = planned.stream().await?;
        let max_rows = self.st.engine.limits().max_rows;
        let row_fields = fields.clone();
        let rows = futures::stream::unfold(Some(streaming), move |state| {
            let fields = row_fields.clone();
            async move {
                let mut s = state?;
                match s.next_batch().await {
                    Some(Ok(batch)) => {
                        let rows: Vec<_> = encode_recordbatch(fields, batch).collect();
                        Some((futures::stream::iter(rows), Some(s)))
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

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(self.clone())
    }
}
