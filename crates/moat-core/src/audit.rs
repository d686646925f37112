//! Audit events: what happened, to what, by whom, from where, with what outcome. Recorded for
//! every login, refresh, denial and admin change; the canonical bytes a record is committed to
//! ([`encode_entry`]) and the per-trail HMAC keys ([`AuditKeys`]). The Merkle log over those
//! bytes is [`crate::tlog`], its signed checkpoints [`crate::checkpoint`]; storage is the store's.

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

/// The trail of events outside any tenant (platform administration, Super Admin sign-ins).
pub const PLATFORM_TRAIL: &str = "platform";

/// The trail an event of `tenant` goes to: the tenant's id, or [`PLATFORM_TRAIL`].
pub fn trail_name(tenant: Option<TenantId>) -> String {
    tenant.map_or_else(|| PLATFORM_TRAIL.to_owned(), |t| t.to_string())
}

/// The tenant a trail name stands for (`Some(None)` for the platform trail); `None` if the name
/// is neither.
pub fn trail_tenant(trail: &str) -> Option<Option<TenantId>> {
    if trail == PLATFORM_TRAIL { Some(None) } else { TenantId::parse(trail).map(Some) }
}

/// Version of the canonical entry encoding (the `"v"` field).
pub const ENTRY_VERSION: u32 = 2;

/// The fields of a stored record, as the log commits to them.
#[derive(Debug, Clone, Copy)]
pub struct EntryFields<'a> {
    /// Tenant id or `platform`.
    pub trail: &'a str,
    /// 1, 2, 3… per trail, no gaps; the Merkle leaf index is `seq - 1`.
    pub seq: i64,
    pub ts_ms: i64,
    /// Unique id of the event (UUIDv7), for idempotent consumers.
    pub event_id: &'a str,
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

/// The canonical entry (v2): UTF-8 JSON, one object, every key present (absent = `null`), keys
/// sorted by their bytes at every level, no whitespace, strings escaped as RFC 8259 requires
/// (`"`, `\`, control characters; nothing else), numbers as written by the event. These bytes
/// are the Merkle leaf (`SHA-256(0x00 ‖ entry)`) and the HMAC input; a verifier hashes the
/// stored bytes as they are and need not re-encode.
pub fn encode_entry(f: &EntryFields<'_>) -> Vec<u8> {
    // Borrowed, not converted into `Value`s: an entry is encoded once per audit append and
    // `details` (SQL text and the like) need not be copied to be written.
    enum Field<'a> {
        Str(&'a str),
        Opt(Option<&'a str>),
        Int(i64),
        Json(&'a serde_json::Value),
    }
    use Field::{Int, Json, Opt, Str};
    let fields: [(&str, Field<'_>); 14] = [
        ("action", Str(f.action)),
        ("actor", Json(f.actor)),
        ("category", Str(f.category)),
        ("details", Json(f.details)),
        ("event_id", Str(f.event_id)),
        ("outcome", Str(f.outcome)),
        ("request_id", Opt(f.request_id)),
        ("resource", Opt(f.resource)),
        ("seq", Int(f.seq)),
        ("source_ip", Opt(f.source_ip)),
        ("trail", Str(f.trail)),
        ("ts_ms", Int(f.ts_ms)),
        ("user_agent", Opt(f.user_agent)),
        ("v", Int(i64::from(ENTRY_VERSION))),
    ];
    let mut out = Vec::with_capacity(512);
    out.push(b'{');
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        canonical_string(k, &mut out);
        out.push(b':');
        match v {
            Str(s) | Opt(Some(s)) => canonical_string(s, &mut out),
            Opt(None) => out.extend_from_slice(b"null"),
            Int(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Json(v) => canonical_json(v, &mut out),
        }
    }
    out.push(b'}');
    out
}

fn canonical_string(s: &str, out: &mut Vec<u8>) {
    // serde_json escapes exactly `"`, `\` and control characters.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes `v` with object keys sorted by their bytes, whatever the map's own order.
pub fn canonical_json(v: &serde_json::Value, out: &mut Vec<u8>) {
    match v {
        serde_json::Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_string(k, out);
                out.push(b':');
                if let Some(x) = m.get(k) {
                    canonical_json(x, out);
                }
            }
            out.push(b'}');
        }
        serde_json::Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical_json(x, out);
            }
            out.push(b']');
        }
        serde_json::Value::String(s) => canonical_string(s, out),
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// The keys of the audit trail that never enter the database: an HMAC key per trail derived
/// from the deployment's master key (HKDF-SHA256, info `moat-audit-hmac-v1:` ‖ trail). Whoever
/// can write the database but not read the master key cannot forge a record's HMAC.
#[derive(Clone)]
pub struct AuditKeys {
    master: [u8; 32],
}

impl std::fmt::Debug for AuditKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKeys(..)")
    }
}

impl AuditKeys {
    pub fn new(master: [u8; 32]) -> Self {
        Self { master }
    }

    /// The HMAC key of one trail (what an auditor is handed to check HMACs offline).
    pub fn trail_key(&self, trail: &str) -> [u8; 32] {
        use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
        let mut out = [0u8; 32];
        let info = [b"moat-audit-hmac-v1:".as_slice(), trail.as_bytes()];
        // HKDF with a 32-byte output cannot fail; on the impossible error the key stays zero and
        // every HMAC check fails closed.
        let _ = Salt::new(HKDF_SHA256, b"moat-audit").extract(&self.master).expand(&info, HKDF_SHA256).and_then(|okm| okm.fill(&mut out));
        out
    }

    pub fn hmac(&self, trail: &str, entry: &[u8]) -> [u8; 32] {
        hmac_with(&self.trail_key(trail), entry)
    }
}

/// HMAC-SHA256 of an entry under a trail key.
pub fn hmac_with(trail_key: &[u8; 32], entry: &[u8]) -> [u8; 32] {
    TrailMac::new(trail_key).tag(entry)
}

/// A trail key ready to tag many entries (the HMAC key schedule done once, not per record).
/// HMAC-SHA256 under one trail's key, keyed once: the key's inner and outer pad blocks are
/// hashed at [`TrailMac::new`], so each tag costs the entry's blocks and one more (the
/// verifier and the writer tag every record; keying per tag cost about half as much again).
#[derive(Clone)]
pub struct TrailMac(hmac::Hmac<sha2::Sha256>);

impl TrailMac {
    pub fn new(trail_key: &[u8; 32]) -> Self {
        use hmac::KeyInit;
        // HMAC pads a key shorter than the block with zeros: the same key, infallibly.
        let mut block = [0u8; 64];
        block[..32].copy_from_slice(trail_key);
        Self(hmac::Hmac::<sha2::Sha256>::new(&block.into()))
    }

    pub fn tag(&self, entry: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut m = self.0.clone();
        m.update(entry);
        m.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(actor: &'a serde_json::Value, details: &'a serde_json::Value) -> EntryFields<'a> {
        EntryFields {
            trail: "platform",
            seq: 1,
            ts_ms: 1_700_000_000_000,
            event_id: "0192f0c4-5b7e-7cc1-9d1e-3f0a8b2c4d5e",
            category: "auth",
            action: "auth.login",
            outcome: "success",
            actor,
            resource: None,
            source_ip: Some("127.0.0.1"),
            user_agent: Some("curl/8 \"quoted\"\n"),
            request_id: None,
            details,
        }
    }

    #[test]
    fn entry_is_canonical_json_with_sorted_keys() {
        let actor = serde_json::json!({"via": "session", "email": "a@x.example", "user_id": null});
        let details = serde_json::json!({"z": [1, {"b": 2, "a": 1}], "a": "é"});
        let e = encode_entry(&fields(&actor, &details));
        let text = std::str::from_utf8(&e).expect("utf8");
        assert_eq!(
            text,
            r#"{"action":"auth.login","actor":{"email":"a@x.example","user_id":null,"via":"session"},"category":"auth","details":{"a":"é","z":[1,{"a":1,"b":2}]},"event_id":"0192f0c4-5b7e-7cc1-9d1e-3f0a8b2c4d5e","outcome":"success","request_id":null,"resource":null,"seq":1,"source_ip":"127.0.0.1","trail":"platform","ts_ms":1700000000000,"user_agent":"curl/8 \"quoted\"\n","v":2}"#
        );
        // Parsing and re-encoding gives the same bytes.
        let back: serde_json::Value = serde_json::from_slice(&e).expect("json");
        let mut again = Vec::new();
        canonical_json(&back, &mut again);
        assert_eq!(again, e);
    }

    #[test]
    fn trail_names_round_trip() {
        let t = TenantId::new();
        assert_eq!(trail_tenant(&trail_name(Some(t))), Some(Some(t)));
        assert_eq!(trail_tenant(&trail_name(None)), Some(None));
        assert_eq!(trail_tenant("acme"), None, "a slug is not a trail name");
    }

    #[test]
    fn the_trail_mac_is_hmac_sha256() {
        // RFC 4231 test case 2 has a 4-byte key; ours are 32 bytes, so check against another
        // implementation (aws-lc) on keys and lengths around the block size.
        for len in [0usize, 1, 55, 56, 63, 64, 65, 681, 4096] {
            let key: [u8; 32] = std::array::from_fn(|i| (i * 7 + len) as u8);
            let msg: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let want = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key), &msg);
            let mac = TrailMac::new(&key);
            assert_eq!(mac.tag(&msg).as_slice(), want.as_ref(), "length {len}");
            assert_eq!(mac.tag(&msg), mac.clone().tag(&msg), "keyed once, tags many");
        }
    }

    #[test]
    fn hmac_keys_differ_per_trail_and_master() {
        let k = AuditKeys::new([1; 32]);
        assert_ne!(k.trail_key("a"), k.trail_key("b"));
        assert_ne!(k.trail_key("a"), AuditKeys::new([2; 32]).trail_key("a"));
        assert_eq!(k.hmac("a", b"x"), hmac_with(&k.trail_key("a"), b"x"));
        assert_ne!(k.hmac("a", b"x"), k.hmac("a", b"y"));
    }
}
