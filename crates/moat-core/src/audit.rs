//! Audit events: what happened, to what, by whom, from where, with what outcome. Recorded for
//! every login, refresh, denial and admin change. Storage and integrity (hash chain / Merkle
//! log) live in the store; this is the content.

use serde::{Deserialize, Serialize};

use crate::ids::{TenantId, UserId};
use crate::principal::{Credential, Principal, Scope};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Auth,
    Authz,
    DataAccess,
    Admin,
    Agent,
    System,
}

impl Category {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Authz => "authz",
            Self::DataAccess => "data_access",
            Self::Admin => "admin",
            Self::Agent => "agent",
            Self::System => "system",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Success,
    Failure,
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }
}

/// Who did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Actor {
    pub user_id: Option<UserId>,
    /// The e-mail as presented (for failed logins, possibly of no account).
    pub email: Option<String>,
    pub role: Option<String>,
    /// `session`, `api_key`, `anonymous`, `system`, `cli`.
    pub via: String,
    pub super_admin: bool,
}

impl Actor {
    pub fn of(p: &Principal) -> Self {
        Self {
            user_id: Some(p.user_id()),
            email: Some(p.email().to_string()),
            role: Some(p.role().as_str().to_owned()),
            via: match p.credential() {
                Credential::Session(_) => "session".into(),
                Credential::ApiKey(_) => "api_key".into(),
            },
            super_admin: p.scope() == Scope::Platform,
        }
    }
    pub fn anonymous(email: Option<&str>) -> Self {
        Self { email: email.map(str::to_owned), via: "anonymous".into(), ..Self::default() }
    }
    pub fn system(what: &str) -> Self {
        Self { via: what.to_owned(), ..Self::default() }
    }
}

/// One audit record before the store assigns its sequence number and hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// `None` = platform trail (tenant creation, Super Admin logins).
    pub tenant_id: Option<TenantId>,
    pub category: Category,
    /// Dotted verb, e.g. `auth.login`, `user.create`, `authz.denied`.
    pub action: String,
    pub actor: Actor,
    /// What was acted on, e.g. `user:0192…`, `tenant:acme`.
    pub resource: Option<String>,
    pub outcome: Outcome,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// Free-form, never secrets or data values.
    pub details: serde_json::Value,
}

impl AuditEvent {
    pub fn new(tenant_id: Option<TenantId>, category: Category, action: &str, actor: Actor, outcome: Outcome) -> Self {
        Self {
            tenant_id,
            category,
            action: action.to_owned(),
            actor,
            resource: None,
            outcome,
            source_ip: None,
            user_agent: None,
            request_id: None,
            details: serde_json::Value::Null,
        }
    }
    pub fn resource(mut self, r: impl Into<String>) -> Self {
        self.resource = Some(r.into());
        self
    }
    pub fn details(mut self, d: serde_json::Value) -> Self {
        self.details = d;
        self
    }
}

/// Hash of an empty trail: where every chain starts.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The fields of a stored record that the chain covers, in their fixed order.
#[derive(Debug, Clone, Serialize)]
pub struct ChainedFields<'a> {
    pub trail: &'a str,
    pub seq: i64,
    pub ts_ms: i64,
    pub category: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    pub actor: &'a serde_json::Value,
    pub resource: Option<&'a str>,
    pub source_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub details: &'a serde_json::Value,
}

/// Canonical encoding (v1): a JSON array of the fields above in that order; objects inside
/// `actor`/`details` have their keys sorted (serde_json's map is ordered), no whitespace.
/// `hash = hex(SHA-256("moat-audit-v1\n" || prev_hash_hex || "\n" || canonical))`.
pub fn chain_hash(prev_hash: &str, f: &ChainedFields<'_>) -> String {
    let canonical = serde_json::to_vec(&(
        f.trail,
        f.seq,
        f.ts_ms,
        f.category,
        f.action,
        f.outcome,
        f.actor,
        f.resource,
        f.source_ip,
        f.user_agent,
        f.request_id,
        f.details,
    ))
    // Serialising plain strings, numbers and Values cannot fail.
    .unwrap_or_default();
    let mut buf = Vec::with_capacity(canonical.len() + 80);
    buf.extend_from_slice(b"moat-audit-v1\n");
    buf.extend_from_slice(prev_hash.as_bytes());
    buf.push(b'\n');
    buf.extend_from_slice(&canonical);
    crate::secret::sha256_hex(&buf)
}
