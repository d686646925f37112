//! Configuration: defaults → `moat.toml` → `MOAT_<SECTION>__<KEY>` environment → flags,
//! merged as TOML values and deserialised once into a typed [`Config`]. Unknown keys are
//! errors; a bad value stops start-up with one line naming the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use moat_core::MoatError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    /// Shared security state for many replicas (Redis); in-process when `url` is empty.
    pub cache: CacheConfig,
    /// Audit and domain events to NATS JetStream; the in-process bus alone when `url` is empty.
    pub events: EventsConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    /// Query limits (the engine's own type: one definition, one set of defaults).
    pub query: moat_query::EngineLimits,
    pub ingest: IngestConfig,
    /// PII discovery (`moat_pii`): on ingest and on demand.
    pub scan: crate::scan::ScanConfig,
    pub audit: AuditConfig,
    /// TLS for HTTP and the PostgreSQL wire protocol (off until `cert` and `key` are set).
    pub tls: TlsConfig,
    /// Where the master key lives and how often tenant keys rotate.
    pub keys: KeysConfig,
    pub log: LogConfig,
}

/// The key hierarchy's outside: the master-key provider and the rotation schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// `"local"`: key files in `keys/master/` of the data dir. `"pkcs11"`: an HSM; the master
    /// key is made inside it, never leaves it, and wraps and unwraps tenant keys itself.
    pub provider: String,
    /// The vendor's PKCS#11 module (e.g. `/usr/lib/softhsm/libsofthsm2.so`).
    pub pkcs11_module: String,
    /// Label of the token that holds the master keys.
    pub pkcs11_token: String,
    /// Name of the environment variable holding the token's user PIN (never in `moat.toml`).
    pub pkcs11_pin_env: String,
    /// Label prefix of the master keys in the token: `{prefix}-0001`, `{prefix}-0002`, ….
    pub pkcs11_key_label: String,
    /// A tenant's data key is rotated when its current version is this old (0: only on demand).
    pub rotation_days: u32,
    /// How often a replica looks for due rotations and unfinished re-encryption.
    pub rotation_check_interval_s: u64,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            provider: "local".into(),
            pkcs11_module: String::new(),
            pkcs11_token: String::new(),
            pkcs11_pin_env: "MOAT_PKCS11_PIN".into(),
            pkcs11_key_label: "moat-kek".into(),
            rotation_days: 90,
            rotation_check_interval_s: 3_600,
        }
    }
}

impl KeysConfig {
    fn validate(&self) -> Result<(), MoatError> {
        match self.provider.as_str() {
            "local" => {}
            "pkcs11" => {
                if self.pkcs11_module.is_empty() || self.pkcs11_token.is_empty() {
                    return Err(config_error("keys.pkcs11_module: the pkcs11 provider needs keys.pkcs11_module and keys.pkcs11_token"));
                }
            }
            other => return Err(config_error(format!("keys.provider: {other:?} is not a key provider; use \"local\" or \"pkcs11\""))),
        }
        let label = &self.pkcs11_key_label;
        if label.is_empty() || label.len() > 48 || !label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(config_error("keys.pkcs11_key_label: 1 to 48 letters, digits, '_' or '-'"));
        }
        if self.pkcs11_pin_env.is_empty() {
            return Err(config_error("keys.pkcs11_pin_env: names the environment variable holding the PIN; may not be empty"));
        }
        if self.rotation_days > 3_650 {
            return Err(config_error("keys.rotation_days: 0 (on demand only) to 3650"));
        }
        if !(10..=86_400).contains(&self.rotation_check_interval_s) {
            return Err(config_error("keys.rotation_check_interval_s: between 10 and 86400"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first); relative paths are inside the data dir. Empty: no TLS.
    pub cert: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the certificate.
    pub key: String,
    /// PEM CA certificates: when set, clients must present a certificate they signed (mTLS).
    pub client_ca: String,
    /// Oldest protocol accepted: "1.2" or "1.3" (TLS 1.1 and older never are).
    pub min_version: String,
    /// `Strict-Transport-Security: max-age=…` on every HTTPS answer (0: not sent).
    pub hsts_max_age_s: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { cert: String::new(), key: String::new(), client_ca: String::new(), min_version: "1.2".into(), hsts_max_age_s: 31_536_000 }
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Name of this deployment in checkpoint origins: trail `t` is the log
    /// `{origin}/audit/{t}` (no spaces, no `+`; a host name is customary).
    pub origin: String,
    /// Where signed checkpoints are published (`{dir}/{trail}/checkpoint`; relative paths are
    /// inside the data dir; empty = not published). Point it at storage that leaves the host.
    pub publish_dir: String,
    /// A trail that grew gets a signed checkpoint at most this often.
    pub checkpoint_interval_ms: u64,
    /// Events waiting for a commit before callers wait for room.
    pub queue: usize,
    /// Most events committed in one transaction.
    pub max_batch: usize,
    /// Most rows one audit report may have; a larger one is refused (`report_too_large`, narrow
    /// the period) rather than cut.
    pub report_max_rows: usize,
    /// Live audit streams (`/v1/audit/stream?follow=true`) one tenant may hold open.
    pub max_streams_per_tenant: usize,
    /// Days each category is kept before retention removes it (0 = forever). A tenant's
    /// `audit-retention` policy can lengthen these, never shorten them.
    pub retention_auth_days: u32,
    pub retention_authz_days: u32,
    pub retention_data_access_days: u32,
    pub retention_admin_days: u32,
    pub retention_agent_days: u32,
    pub retention_system_days: u32,
    /// How often the retention job runs (0 = only on demand, `moat audit prune`).
    pub retention_interval_s: u64,
    /// Records per segment: retention removes whole sealed segments of a category.
    pub retention_segment_records: u64,
    /// A transparency-log witness (C2SP tlog-witness submission prefix, `http://…`) that
    /// cosigns every checkpoint; empty = none.
    pub witness_url: String,
    /// The witness's cosignature key, `name+keyid+base64(0x04 ‖ Ed25519 key)`.
    pub witness_key: String,
}

impl AuditConfig {
    /// The configured retention of a category in days (0 = forever); `None` for a name that
    /// is not a category.
    pub fn retention_days(&self, category: &str) -> Option<u32> {
        Some(match category {
            "auth" => self.retention_auth_days,
            "authz" => self.retention_authz_days,
            "data_access" => self.retention_data_access_days,
            "admin" => self.retention_admin_days,
            "agent" => self.retention_agent_days,
            "system" => self.retention_system_days,
            _ => return None,
        })
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            origin: "moat.local".into(),
            publish_dir: "checkpoints".into(),
            checkpoint_interval_ms: 500,
            queue: 16_384,
            max_batch: 4_096,
            report_max_rows: 250_000,
            max_streams_per_tenant: 8,
            retention_auth_days: 90,
            retention_authz_days: 365,
            retention_data_access_days: 1_095,
            retention_admin_days: 1_095,
            retention_agent_days: 1_095,
            retention_system_days: 1_095,
            retention_interval_s: 3_600,
            retention_segment_records: 4_096,
            witness_url: String::new(),
            witness_key: String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Largest table upload.
    pub body_limit_bytes: u64,
    pub max_columns: usize,
    /// Where table data lives (relative paths are inside the data dir).
    pub data_dir: String,
    /// Deadline of one upload (instead of `limits.request_timeout_ms`).
    pub timeout_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self { body_limit_bytes: 10 * 1024 * 1024 * 1024, max_columns: 1_000, data_dir: "data".into(), timeout_ms: 3_600_000 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP API listen address.
    pub http: SocketAddr,
    /// PostgreSQL wire protocol listen address.
    pub pg: SocketAddr,
    /// Signed-in PostgreSQL connections one tenant may hold at once (0: no limit).
    pub pg_max_connections_per_tenant: usize,
    /// A PostgreSQL connection with no statement running and nothing sent for this long is
    /// closed (0: never).
    pub pg_idle_timeout_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `sqlite://PATH` (relative paths are inside the data dir) or `postgres://…` (the runtime
    /// role: moat refuses a superuser or BYPASSRLS role).
    pub url: String,
    /// Owner role for migrations and provisioning (PostgreSQL); defaults to `url`.
    pub admin_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `redis://[user:password@]host[:port][/db]`: the per-address sign-in limiter is shared by
    /// every replica naming the same Redis and namespace. Empty: in-process (one replica). If
    /// Redis cannot be reached, sign-ins are refused (503 `cache_unavailable`) until it is back.
    pub url: String,
    /// Prefix of every key (several deployments may share one Redis).
    pub namespace: String,
    /// How long a governed JSON answer is kept and served again to callers who would get the
    /// same masks from the same table versions (in Redis when `url` is set, else in-process;
    /// Redis down: queries run uncached). 0: no result cache.
    pub result_ttl_s: u64,
    /// The largest answer kept (bytes of JSON).
    pub result_max_bytes: usize,
    /// The in-process cache's bound (bytes of JSON; oldest answers go first).
    pub result_local_max_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { url: String::new(), namespace: "moat".into(), result_ttl_s: 60, result_max_bytes: 1 << 20, result_local_max_bytes: 64 << 20 }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `nats://host:port` (or `tls://`): every audit record, once durable in the store, is
    /// published to JetStream on `tenant.{id}.audit` (`platform.audit` for the platform trail)
    /// and, by domain, `tenant.{id}.{admin|ingest|classification}`, with its event id as
    /// `Nats-Msg-Id`. The store is the spool: while NATS is down requests are served and
    /// recorded as ever, and forwarding resumes where it stopped. Empty: in-process bus only.
    pub url: String,
    /// Prefix of every subject (`{namespace}.tenant.{id}.audit`) when several deployments share
    /// one NATS; empty: none.
    pub namespace: String,
    /// The JetStream stream (created with the limits below if missing).
    pub stream: String,
    /// Stream limits: oldest message kept, bytes kept, and the window in which a repeated
    /// `Nats-Msg-Id` is dropped as a duplicate.
    pub max_age_days: u64,
    pub max_bytes: i64,
    pub duplicate_window_s: u64,
}

/// A NATS name part: letters, digits, '_' or '-' (no dots or wildcards), 1 to 64.
fn nats_token(v: &str) -> bool {
    !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl EventsConfig {
    fn validate(&self) -> Result<(), MoatError> {
        if !self.url.is_empty() && !self.url.starts_with("nats://") && !self.url.starts_with("tls://") {
            return Err(config_error(format!(
                "events.url: unsupported scheme in {:?}; use nats:// or tls:// (or empty for the in-process bus)",
                self.url.split("://").next().unwrap_or_default()
            )));
        }
        if !self.namespace.is_empty() && !nats_token(&self.namespace) {
            return Err(config_error("events.namespace: empty, or 1 to 64 letters, digits, '_' or '-'"));
        }
        if !nats_token(&self.stream) {
            return Err(config_error("events.stream: 1 to 64 letters, digits, '_' or '-'"));
        }
        if self.max_age_days == 0 || self.max_age_days > 36_500 {
            return Err(config_error("events.max_age_days: 1 to 36500"));
        }
        if self.max_bytes < 1 << 20 {
            return Err(config_error("events.max_bytes: at least 1048576 (1 MiB)"));
        }
        if self.duplicate_window_s == 0 || self.duplicate_window_s > self.max_age_days * 86_400 {
            return Err(config_error("events.duplicate_window_s: at least 1, and no longer than events.max_age_days"));
        }
        Ok(())
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            namespace: String::new(),
            stream: "MOAT_EVENTS".into(),
            max_age_days: 30,
            max_bytes: 1 << 30,
            duplicate_window_s: 120,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Clock skew tolerated on `exp`/`nbf` (at most 30).
    pub leeway_s: u64,
    /// Lifetime of one refresh token (rotated at every use).
    pub refresh_ttl_s: i64,
    /// Absolute lifetime of a login session, however often it is refreshed.
    pub session_max_s: i64,
    /// Failed logins per lockout stage.
    pub lockout_threshold: u32,
    /// Lock durations of the timed stages; after the last, only an admin unlocks.
    pub lockout_stages_s: Vec<u64>,
    /// Failed logins allowed per client IP per window (password spraying).
    pub ip_failure_limit: u32,
    pub ip_failure_window_s: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest JSON request body.
    pub json_body_limit_bytes: usize,
    /// Whole-request deadline.
    pub request_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter directive.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            pg: SocketAddr::from(([127, 0, 0, 1], 6432)),
            pg_max_connections_per_tenant: 100,
            pg_idle_timeout_s: 3_600,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self { url: "sqlite://moat.db".into(), admin_url: None }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: "moat".into(),
            audience: "moat-api".into(),
            leeway_s: 30,
            refresh_ttl_s: 86_400,
            session_max_s: 7 * 86_400,
            lockout_threshold: 5,
            lockout_stages_s: vec![300, 900],
            ip_failure_limit: 50,
            ip_failure_window_s: 600,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { json_body_limit_bytes: 1024 * 1024, request_timeout_ms: 30_000 }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into(), format: "text".into() }
    }
}

/// Command-line overrides, the last layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub http: Option<SocketAddr>,
    pub pg: Option<SocketAddr>,
}

fn config_error(message: impl Into<String>) -> MoatError {
    MoatError::invalid("invalid_config", message)
}

/// Puts `value` at `section.key` of `root`, creating the section.
fn set_path(root: &mut toml::Table, section: &str, key: &str, value: toml::Value) {
    let entry = root.entry(section.to_owned()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(t) = entry {
        t.insert(key.to_owned(), value);
    }
}

/// An environment value is read as a TOML value when it parses as one (numbers, booleans,
/// arrays), else as a plain string.
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

impl Config {
    /// Loads the layers. `file` is read if it exists; `env` is the process environment (passed
    /// in, so tests and the CLI control it).
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>, o: &Overrides) -> Result<Self, MoatError> {
        let mut root = toml::Table::new();
        if let Some(path) = file
            && path.exists()
        {
            let text = std::fs::read_to_string(path).map_err(|e| config_error(format!("cannot read {}: {e}", path.display())))?;
            root = text.parse::<toml::Table>().map_err(|e| config_error(format!("{}: {}", path.display(), e.message())))?;
        }
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("MOAT_") else { continue };
            let Some((section, key)) = rest.split_once("__") else { continue };
            // MOAT_CLI_* and the like are not configuration.
            if section.is_empty() || key.is_empty() || section.starts_with("CLI") {
                continue;
            }
            set_path(&mut root, &section.to_lowercase(), &key.to_lowercase(), env_value(&raw));
        }
        if let Some(a) = o.http {
            set_path(&mut root, "server", "http", toml::Value::String(a.to_string()));
        }
        if let Some(a) = o.pg {
            set_path(&mut root, "server", "pg", toml::Value::String(a.to_string()));
        }
        let de = toml::Value::Table(root);
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // One line: the key is named in front; the deserializer's own location line goes.
            let inner = inner.trim().lines().next().unwrap_or_default();
            if path == "." { config_error(inner.to_owned()) } else { config_error(format!("{path}: {inner}")) }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Rules serde cannot express.
    pub fn validate(&self) -> Result<(), MoatError> {
        let a = &self.auth;
        if a.leeway_s > moat_core::token::MAX_LEEWAY_S {
            return Err(config_error("auth.leeway_s: must be at most 30"));
        }
        if a.refresh_ttl_s < 60 || a.session_max_s < a.refresh_ttl_s {
            return Err(config_error("auth.refresh_ttl_s: must be at least 60 and at most auth.session_max_s"));
        }
        if a.lockout_threshold == 0 {
            return Err(config_error("auth.lockout_threshold: must be at least 1"));
        }
        if a.ip_failure_limit == 0 || a.ip_failure_window_s == 0 {
            return Err(config_error("auth.ip_failure_limit: limit and window must be positive"));
        }
        if a.issuer.is_empty() || a.audience.is_empty() {
            return Err(config_error("auth.issuer: issuer and audience may not be empty"));
        }
        if self.limits.json_body_limit_bytes < 1024 || self.limits.json_body_limit_bytes > 64 * 1024 * 1024 {
            return Err(config_error("limits.json_body_limit_bytes: must be between 1 KiB and 64 MiB"));
        }
        if self.limits.request_timeout_ms < 100 {
            return Err(config_error("limits.request_timeout_ms: must be at least 100"));
        }
        let q = &self.query;
        if q.max_sql_bytes < 64 || q.max_depth < 8 || q.max_rows == 0 || q.max_result_bytes < 1024 {
            return Err(config_error(
                "query.max_sql_bytes: query limits must be positive (sql >= 64 bytes, depth >= 8, rows >= 1, result >= 1 KiB)",
            ));
        }
        if q.timeout_ms < 100 || q.memory_per_tenant_bytes < 1024 * 1024 || q.max_concurrent_per_tenant == 0 || q.target_partitions == 0 {
            return Err(config_error("query.timeout_ms: timeout >= 100 ms, memory >= 1 MiB, concurrency and partitions >= 1"));
        }
        if q.memory_per_query_bytes < 1024 * 1024 || q.memory_per_query_bytes > q.memory_per_tenant_bytes {
            return Err(config_error("query.memory_per_query_bytes: must be at least 1 MiB and at most query.memory_per_tenant_bytes"));
        }
        if self.ingest.body_limit_bytes < 1024 || self.ingest.max_columns == 0 || self.ingest.data_dir.is_empty() {
            return Err(config_error("ingest.body_limit_bytes: at least 1 KiB, max_columns at least 1, data_dir not empty"));
        }
        if self.ingest.timeout_ms < 1000 {
            return Err(config_error("ingest.timeout_ms: must be at least 1000"));
        }
        let t = &self.tls;
        if t.cert.is_empty() != t.key.is_empty() {
            return Err(config_error("tls.cert: cert and key go together (both set: TLS on; both empty: off)"));
        }
        if !t.client_ca.is_empty() && !t.enabled() {
            return Err(config_error("tls.client_ca: client certificates need TLS (set tls.cert and tls.key)"));
        }
        if !["1.2", "1.3"].contains(&t.min_version.as_str()) {
            return Err(config_error("tls.min_version: must be \"1.2\" or \"1.3\""));
        }
        let au = &self.audit;
        if !moat_core::checkpoint::is_key_name(&format!("{}/audit/platform", au.origin)) || au.origin.is_empty() {
            return Err(config_error("audit.origin: must be non-empty, without spaces or '+'"));
        }
        if au.checkpoint_interval_ms < 10 || au.checkpoint_interval_ms > 1_000 {
            return Err(config_error("audit.checkpoint_interval_ms: must be between 10 and 1000 (a checkpoint at least every second)"));
        }
        if au.queue == 0 || au.max_batch == 0 || au.max_batch > 100_000 {
            return Err(config_error("audit.queue: queue and max_batch must be positive (max_batch at most 100000)"));
        }
        if au.max_streams_per_tenant == 0 || au.max_streams_per_tenant > 1_000 {
            return Err(config_error("audit.max_streams_per_tenant: must be between 1 and 1000"));
        }
        if au.report_max_rows == 0 || au.report_max_rows > 10_000_000 {
            return Err(config_error("audit.report_max_rows: must be between 1 and 10000000"));
        }
        if crate::retention::CATEGORIES.iter().any(|c| au.retention_days(c).unwrap_or(0) > 36_500) {
            return Err(config_error("audit.retention_auth_days: retention days must be at most 36500 (0 = forever)"));
        }
        if au.retention_interval_s != 0 && !(60..=604_800).contains(&au.retention_interval_s) {
            return Err(config_error("audit.retention_interval_s: 0 (on demand only) or between 60 and 604800"));
        }
        if !(1..=65_536).contains(&au.retention_segment_records) {
            return Err(config_error("audit.retention_segment_records: must be between 1 and 65536"));
        }
        if au.witness_url.is_empty() != au.witness_key.is_empty() {
            return Err(config_error("audit.witness_url: a witness needs both witness_url and witness_key"));
        }
        if !au.witness_url.is_empty() {
            // Cosignatures are signed, so plain HTTP cannot forge one (only withhold it); HTTPS
            // keeps the submissions private.
            if !(au.witness_url.starts_with("http://") || au.witness_url.starts_with("https://")) {
                return Err(config_error("audit.witness_url: must start with https:// or http://"));
            }
            if moat_core::checkpoint::CosignatureVerifier::parse(&au.witness_key).is_err() {
                return Err(config_error("audit.witness_key: not a cosignature key (name+keyid+base64 of 0x04 and an Ed25519 key)"));
            }
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(config_error("log.format: must be \"text\" or \"json\""));
        }
        if !self.cache.url.is_empty() && !self.cache.url.starts_with("redis://") {
            return Err(config_error(format!(
                "cache.url: unsupported scheme in {:?}; this build supports redis:// (or empty for in-process)",
                self.cache.url.split("://").next().unwrap_or_default()
            )));
        }
        let ns = &self.cache.namespace;
        if ns.is_empty() || ns.len() > 64 || !ns.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(config_error("cache.namespace: 1 to 64 letters, digits, '_' or '-'"));
        }
        if self.cache.result_ttl_s > 86_400 {
            return Err(config_error("cache.result_ttl_s: 0 (off) to 86400"));
        }
        if self.cache.result_ttl_s > 0
            && (self.cache.result_max_bytes == 0 || self.cache.result_local_max_bytes < self.cache.result_max_bytes)
        {
            return Err(config_error("cache.result_max_bytes: at least 1, and no more than cache.result_local_max_bytes"));
        }
        self.events.validate()?;
        self.keys.validate()?;
        let postgres = |u: &str| u.starts_with("postgres://") || u.starts_with("postgresql://");
        if !self.store.url.starts_with("sqlite://") && !postgres(&self.store.url) {
            return Err(config_error(format!(
                "store.url: unsupported scheme in {:?}; use sqlite://PATH or postgres://…",
                self.store.url.split("://").next().unwrap_or_default()
            )));
        }
        if let Some(admin) = &self.store.admin_url
            && !(postgres(admin) && postgres(&self.store.url))
        {
            return Err(config_error("store.admin_url: a postgres:// URL, and only with a postgres:// store.url"));
        }
        Ok(())
    }

    /// Where table data lives.
    pub fn table_data_dir(&self, data_dir: &Path) -> PathBuf {
        let p = Path::new(&self.ingest.data_dir);
        if p.is_absolute() { p.to_path_buf() } else { data_dir.join(p) }
    }

    /// Where checkpoints are published, if anywhere.
    pub fn publish_dir(&self, data_dir: &Path) -> Option<PathBuf> {
        let p = Path::new(&self.audit.publish_dir);
        if self.audit.publish_dir.is_empty() {
            None
        } else if p.is_absolute() {
            Some(p.to_path_buf())
        } else {
            Some(data_dir.join(p))
        }
    }

    /// The store URL with a relative SQLite path resolved inside `data_dir`.
    pub fn store_url(&self, data_dir: &Path) -> String {
        match self.store.url.strip_prefix("sqlite://") {
            Some(p) if !Path::new(p).is_absolute() => format!("sqlite://{}", data_dir.join(p).display()),
            _ => self.store.url.clone(),
        }
    }
}

/// `moat.toml` written by `moat init`: every key with its default, commented.
pub fn default_toml() -> String {
    let d = Config::default();
    format!(
        r#"# moat configuration. Every key can be overridden by MOAT_<SECTION>__<KEY>
# (e.g. MOAT_SERVER__HTTP=0.0.0.0:8080) and the listen addresses by --http / --pg.

[server]
http = "{http}"   # HTTP API
pg = "{pg}"       # PostgreSQL wire protocol
pg_max_connections_per_tenant = {pg_conns}   # signed-in pgwire connections per tenant (0: no limit)
pg_idle_timeout_s = {pg_idle}   # close a pgwire connection idle this long (0: never)

[store]
url = "{store}"   # relative paths are inside the data dir
# PostgreSQL: url = "postgres://moat_app@db/moat" (a plain role: no superuser, no BYPASSRLS)
# admin_url = "postgres://moat_owner@db/moat"     # the owner role: migrations, tenant provisioning

# [events]   # audit and domain events to NATS JetStream (default: the in-process bus only)
# url = "nats://nats.internal:4222"
# stream = "MOAT_EVENTS"     # created if missing, with max_age_days = 30, max_bytes = 1 GiB

[auth]
issuer = "{iss}"
audience = "{aud}"
leeway_s = {leeway}
refresh_ttl_s = {refresh}
session_max_s = {session}
lockout_threshold = {lt}
lockout_stages_s = [300, 900]   # then locked until an admin unlocks
ip_failure_limit = {ipl}
ip_failure_window_s = {ipw}

[limits]
json_body_limit_bytes = {body}
request_timeout_ms = {timeout}

[query]
max_sql_bytes = {q_sql}
max_depth = {q_depth}
max_rows = {q_rows}
max_result_bytes = {q_bytes}
timeout_ms = {q_timeout}
memory_per_tenant_bytes = {q_mem}
memory_per_query_bytes = {q_qmem}
spill_per_tenant_bytes = {q_spill}   # 0 = never spill to disk
max_concurrent_per_tenant = {q_conc}
# target_partitions = number of cores (at most 16) unless set

[ingest]
body_limit_bytes = {i_body}
max_columns = {i_cols}
data_dir = "{i_dir}"   # relative paths are inside the data dir
timeout_ms = {i_timeout}   # one upload's deadline

[audit]
origin = "{a_origin}"   # checkpoint origins are {{origin}}/audit/{{trail}}
publish_dir = "{a_pub}"   # signed checkpoints; relative = inside the data dir; "" = off
checkpoint_interval_ms = {a_int}
queue = {a_queue}
max_batch = {a_batch}
report_max_rows = {a_report}   # a larger report is refused, never cut
max_streams_per_tenant = {a_streams}   # live audit streams (SIEM forwarders) per tenant
# Retention: days kept per category (0 = forever); a tenant policy can only lengthen them.
retention_auth_days = {r_auth}
retention_authz_days = {r_authz}
retention_data_access_days = {r_data}
retention_admin_days = {r_admin}
retention_agent_days = {r_agent}
retention_system_days = {r_system}
retention_interval_s = {r_every}   # 0 = only on demand (moat audit prune)
retention_segment_records = {r_seg}   # whole sealed segments are pruned
witness_url = ""   # a C2SP tlog-witness that cosigns every checkpoint (with witness_key)
witness_key = ""   # the witness's cosignature key: name+keyid+base64(0x04 ‖ key)

[tls]
cert = ""         # PEM certificate chain: TLS on for HTTP and pgwire (`moat init --self-signed` makes one)
key = ""          # its PEM private key
client_ca = ""    # PEM CA bundle: require client certificates signed by it (mTLS)
min_version = "{tls_min}"   # "1.2" or "1.3"
hsts_max_age_s = {hsts}

[keys]
provider = "{k_provider}"   # "local": key files in keys/master/ | "pkcs11": an HSM
# pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"   # the vendor's PKCS#11 library
# pkcs11_token = "moat"           # token label
# pkcs11_pin_env = "{k_pin_env}"   # environment variable holding the user PIN
# pkcs11_key_label = "{k_label}"        # master keys are {k_label}-0001, {k_label}-0002, ...
rotation_days = {k_days}   # rotate a tenant's data key when it is this old (0: on demand only)
rotation_check_interval_s = {k_check}

[log]
level = "{level}"
format = "{format}"   # text | json
"#,
        http = d.server.http,
        pg = d.server.pg,
        pg_conns = d.server.pg_max_connections_per_tenant,
        tls_min = d.tls.min_version,
        hsts = d.tls.hsts_max_age_s,
        k_provider = d.keys.provider,
        k_pin_env = d.keys.pkcs11_pin_env,
        k_label = d.keys.pkcs11_key_label,
        k_days = d.keys.rotation_days,
        k_check = d.keys.rotation_check_interval_s,
        pg_idle = d.server.pg_idle_timeout_s,
        store = d.store.url,
        iss = d.auth.issuer,
        aud = d.auth.audience,
        leeway = d.auth.leeway_s,
        refresh = d.auth.refresh_ttl_s,
        session = d.auth.session_max_s,
        lt = d.auth.lockout_threshold,
        ipl = d.auth.ip_failure_limit,
        ipw = d.auth.ip_failure_window_s,
        body = d.limits.json_body_limit_bytes,
        timeout = d.limits.request_timeout_ms,
        q_sql = d.query.max_sql_bytes,
        q_depth = d.query.max_depth,
        q_rows = d.query.max_rows,
        q_bytes = d.query.max_result_bytes,
        q_timeout = d.query.timeout_ms,
        q_mem = d.query.memory_per_tenant_bytes,
        q_qmem = d.query.memory_per_query_bytes,
        q_spill = d.query.spill_per_tenant_bytes,
        q_conc = d.query.max_concurrent_per_tenant,
        i_body = d.ingest.body_limit_bytes,
        i_cols = d.ingest.max_columns,
        i_dir = d.ingest.data_dir,
        i_timeout = d.ingest.timeout_ms,
        a_origin = d.audit.origin,
        a_pub = d.audit.publish_dir,
        a_int = d.audit.checkpoint_interval_ms,
        a_queue = d.audit.queue,
        a_batch = d.audit.max_batch,
        a_report = d.audit.report_max_rows,
        a_streams = d.audit.max_streams_per_tenant,
        r_auth = d.audit.retention_auth_days,
        r_authz = d.audit.retention_authz_days,
        r_data = d.audit.retention_data_access_days,
        r_admin = d.audit.retention_admin_days,
        r_agent = d.audit.retention_agent_days,
        r_system = d.audit.retention_system_days,
        r_every = d.audit.retention_interval_s,
        r_seg = d.audit.retention_segment_records,
        level = d.log.level,
        format = d.log.format,
    )
}

/// Where the pieces of a data dir live.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("moat.toml")
    }
    /// Query spill files (a directory per tenant).
    pub fn spill_dir(&self) -> PathBuf {
        self.root.join("tmp").join("spill")
    }
    /// Uploads waiting to be converted (Parquet needs random access).
    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("tmp").join("ingest")
    }
    pub fn master_key(&self) -> PathBuf {
        self.root.join("master.key")
    }
    pub fn signing_dir(&self) -> PathBuf {
        self.root.join("keys").join("signing")
    }
    /// The Ed25519 seed that signs audit checkpoints.
    pub fn checkpoint_key(&self) -> PathBuf {
        self.root.join("keys").join("audit-checkpoint.key")
    }
    /// The local master keys that wrap the tenants' data keys (`kek-0001.key`, …; the
    /// highest number wraps new keys).
    pub fn kek_dir(&self) -> PathBuf {
        self.root.join("keys").join("master")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn layers_in_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("moat.toml");
        std::fs::write(&f, "[server]\nhttp = \"127.0.0.1:9000\"\n[auth]\nlockout_threshold = 7\n").expect("write");
        let c = Config::load(Some(&f), env(&[("MOAT_AUTH__LOCKOUT_THRESHOLD", "9"), ("MOAT_CLI_TOKEN", "x")]), &Overrides::default())
            .expect("load");
        assert_eq!(c.server.http.port(), 9000);
        assert_eq!(c.auth.lockout_threshold, 9, "env beats file");
        let o = Overrides { http: Some("127.0.0.1:9100".parse().expect("addr")), pg: None };
        assert_eq!(Config::load(Some(&f), vec![], &o).expect("load").server.http.port(), 9100, "flags beat file");
        std::fs::write(&f, default_toml()).expect("write");
        assert_eq!(Config::load(Some(&f), vec![], &Overrides::default()).expect("load"), Config::default(), "written defaults = defaults");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = Config::load(None, env(&[("MOAT_SERVER__HTTP", "not-an-addr")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("server.http:"), "{}", e.message);
        let e = Config::load(None, env(&[("MOAT_AUTH__LOCKOUT_THRESHOLD", "-1")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("auth.lockout_threshold:"), "{}", e.message);
        let e = Config::load(None, env(&[("MOAT_AUTH__NOPE", "1")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.contains("nope"), "{}", e.message);
        let e = Config::load(None, env(&[("MOAT_AUTH__LEEWAY_S", "120")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("auth.leeway_s:"), "{}", e.message);
        let e = Config::load(None, env(&[("MOAT_STORE__URL", "mysql://x")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("store.url:"), "{}", e.message);
        let e = Config::load(None, env(&[("MOAT_CACHE__URL", "memcached://x")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("cache.url:"), "{}", e.message);
        let e = Config::load(None, env(&[("MOAT_CACHE__NAMESPACE", "a:b")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("cache.namespace:"), "{}", e.message);
        let e = Config::load(None, env(&[("MOAT_CACHE__RESULT_TTL_S", "100000")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("cache.result_ttl_s:"), "{}", e.message);
        let e = Config::load(None, env(&[("MOAT_CACHE__RESULT_MAX_BYTES", "999999999")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("cache.result_max_bytes:"), "{}", e.message);
        for (key, bad) in [
            ("MOAT_EVENTS__URL", "http://nats:4222"),
            ("MOAT_EVENTS__NAMESPACE", "a.b"),
            ("MOAT_EVENTS__STREAM", "EVENTS.>"),
            ("MOAT_EVENTS__MAX_AGE_DAYS", "0"),
            ("MOAT_EVENTS__MAX_BYTES", "100"),
            ("MOAT_EVENTS__DUPLICATE_WINDOW_S", "0"),
        ] {
            let e = Config::load(None, env(&[(key, bad)]), &Overrides::default()).expect_err(key);
            let want = key.trim_start_matches("MOAT_EVENTS__").to_lowercase();
            assert!(e.message.starts_with(&format!("events.{want}:")), "{key}={bad}: {}", e.message);
        }
        let ok = Config::load(None, env(&[("MOAT_EVENTS__URL", "nats://127.0.0.1:4222")]), &Overrides::default()).expect("nats://");
        assert_eq!(ok.events.stream, "MOAT_EVENTS");
        Config::load(None, env(&[("MOAT_CACHE__URL", "redis://127.0.0.1:6379/0")]), &Overrides::default()).expect("a Redis URL");
        let pg = [("MOAT_STORE__URL", "postgres://app@db/moat"), ("MOAT_STORE__ADMIN_URL", "postgres://owner@db/moat")];
        Config::load(None, env(&pg), &Overrides::default()).expect("a PostgreSQL store with its owner");
        let e = Config::load(None, env(&[("MOAT_STORE__ADMIN_URL", "postgres://owner@db/moat")]), &Overrides::default()).expect_err("bad");
        assert!(e.message.starts_with("store.admin_url:"), "an owner for the SQLite store: {}", e.message);
        // A witness needs both settings, a usable URL and a cosignature key.
        let w = |vars: &[(&str, &str)]| Config::load(None, env(vars), &Overrides::default()).map(|_| ()).map_err(|e| e.message);
        assert!(w(&[("MOAT_AUDIT__WITNESS_URL", "http://w.example/")]).unwrap_err().starts_with("audit.witness_url:"));
        let key = moat_core::checkpoint::Cosigner::from_seed("w.example/w1", &[1; 32]).expect("cosigner").verifier().encode();
        assert!(
            w(&[("MOAT_AUDIT__WITNESS_URL", "ftp://w.example/"), ("MOAT_AUDIT__WITNESS_KEY", &key)])
                .unwrap_err()
                .starts_with("audit.witness_url:")
        );
        let log_key = moat_core::checkpoint::NoteSigner::from_seed("w.example/w1", &[1; 32]).expect("signer").verifier().encode();
        let e = w(&[("MOAT_AUDIT__WITNESS_URL", "http://w.example/"), ("MOAT_AUDIT__WITNESS_KEY", &log_key)]).unwrap_err();
        assert!(e.starts_with("audit.witness_key:"), "{e}");
        w(&[("MOAT_AUDIT__WITNESS_URL", "http://w.example/"), ("MOAT_AUDIT__WITNESS_KEY", &key)]).expect("a valid witness");
        w(&[("MOAT_AUDIT__WITNESS_URL", "https://w.example/"), ("MOAT_AUDIT__WITNESS_KEY", &key)]).expect("an HTTPS witness");
    }
}
