//! API keys: `moat_sk_live_` + 43 base62 characters of 256-bit randomness + a 6-character
//! base62 CRC32 checksum, so leaked-key scanners (and moat itself) recognise a real key
//! offline. Only the SHA-256 of the whole key is stored.

use crate::clock::UnixSeconds;
use crate::error::MoatError;
use crate::ids::{ApiKeyId, Email, TenantId, UserId};
use crate::permission::{Permission, any_covers};
use crate::principal::{Credential, Principal, Scope};
use crate::role::Role;

pub const PREFIX: &str = "moat_sk_live_";
const BODY_LEN: usize = 43; // ceil(256 / log2(62))
const CHECKSUM_LEN: usize = 6; // ceil(32 / log2(62))
pub const KEY_LEN: usize = PREFIX.len() + BODY_LEN + CHECKSUM_LEN;
pub const MAX_EXPIRY_DAYS: u32 = 365;
pub const DEFAULT_EXPIRY_DAYS: u32 = 90;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fixed-width base62 of a big-endian number.
fn base62_fixed(bytes: &[u8], width: usize) -> String {
    let mut num = bytes.to_vec();
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        let mut rem: u32 = 0;
        for byte in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            rem = acc % 62;
        }
        *slot = BASE62[rem as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn checksum(prefix_and_body: &str) -> String {
    base62_fixed(&crc32fast::hash(prefix_and_body.as_bytes()).to_be_bytes(), CHECKSUM_LEN)
}

/// A new key (shown once) and its stored hash.
pub fn generate() -> Result<(String, String), MoatError> {
    let body = base62_fixed(&crate::secret::random_bytes::<32>()?, BODY_LEN);
    let head = format!("{PREFIX}{body}");
    let key = format!("{head}{}", checksum(&head));
    let hash = crate::secret::sha256_hex(key.as_bytes());
    Ok((key, hash))
}

/// Whether `s` has the shape and checksum of a moat key. Cheap and offline: garbage never
/// reaches the store.
pub fn looks_valid(s: &str) -> bool {
    if s.len() != KEY_LEN || !s.starts_with(PREFIX) || !s.bytes().skip(PREFIX.len()).all(|b| b.is_ascii_alphanumeric()) {
        return false;
    }
    let (head, sum) = s.split_at(PREFIX.len() + BODY_LEN);
    crate::secret::ct_eq(checksum(head).as_bytes(), sum.as_bytes())
}

pub fn hash(key: &str) -> String {
    crate::secret::sha256_hex(key.as_bytes())
}

/// Validates requested scopes against the creator: each must be known and wholly within what
/// the creator may do now (a key never exceeds its creator).
pub fn validate_scopes(requested: &[String], creator: &Principal) -> Result<Vec<Permission>, MoatError> {
    if requested.is_empty() {
        return Err(MoatError::invalid("invalid_scope", "scopes: at least one scope is required"));
    }
    if requested.len() > 64 {
        return Err(MoatError::invalid("invalid_scope", "scopes: at most 64 scopes"));
    }
    let mut out = Vec::with_capacity(requested.len());
    for s in requested {
        let p = Permission::parse(s)?;
        if let Some(missing) = p.expand().find(|each| !creator.has_permission(each)) {
            return Err(MoatError::forbidden("scope_exceeds_creator", format!("scope {s:?} includes {missing}, which you do not have")));
        }
        out.push(p);
    }
    Ok(out)
}

pub fn validate_expiry_days(days: Option<u32>) -> Result<u32, MoatError> {
    match days.unwrap_or(DEFAULT_EXPIRY_DAYS) {
        d @ 1..=MAX_EXPIRY_DAYS => Ok(d),
        _ => Err(MoatError::invalid("invalid_expiry", "expires_in_days must be between 1 and 365")),
    }
}

/// A stored key record, as the store returns it after a lookup by hash.
#[derive(Debug, Clone)]
pub struct StoredKey {
    pub id: ApiKeyId,
    pub tenant_id: Option<TenantId>,
    pub user_id: UserId,
    pub email: Email,
    pub role: Role,
    pub scopes: Vec<Permission>,
    pub expires_at: UnixSeconds,
    pub revoked: bool,
    pub user_active: bool,
    pub tenant_active: bool,
    /// When the key was last used (coarse: written at most once a minute).
    pub last_used_at: Option<UnixSeconds>,
}

/// How stale `last_used_at` may get before a use writes it again.
pub const LAST_USED_GRANULARITY_S: UnixSeconds = 60;

impl StoredKey {
    /// Whether a use at `now` should record itself (at most one write a minute per key, so
    /// authenticating stays a read).
    pub fn needs_touch(&self, now: UnixSeconds) -> bool {
        self.last_used_at.is_none_or(|t| t < now - LAST_USED_GRANULARITY_S)
    }
}

/// The one refusal of every API key problem (unknown, malformed, expired, revoked, another
/// tenant's): a probe learns nothing about which keys exist.
pub fn invalid_api_key() -> MoatError {
    MoatError::unauthenticated("invalid_api_key", "the API key is invalid, expired or revoked")
}

/// Turns a looked-up key into a principal, or refuses it. All refusals look alike to the
/// caller (`invalid_api_key`), so a probe learns nothing about which keys exist.
pub fn principal_for_key(k: StoredKey, now: UnixSeconds) -> Result<Principal, MoatError> {
    let refused = invalid_api_key;
    if k.revoked || !k.user_active || !k.tenant_active || now >= k.expires_at {
        return Err(refused());
    }
    let scope = match (k.tenant_id, k.role) {
        (None, Role::SuperAdmin) => Scope::Platform,
        (Some(t), r) if r != Role::SuperAdmin => Scope::Tenant(t),
        _ => return Err(refused()),
    };
    // The key's scopes are intersected with the user's *current* role at every use.
    let scopes: Vec<Permission> = k.scopes.into_iter().filter(|s| s.expand().any(|p| any_covers(k.role.grants(), p))).collect();
    Ok(Principal::new(scope, k.user_id, k.email, k.role, Some(scopes), Credential::ApiKey(k.id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_keys_validate_and_differ() {
        let (k, h) = generate().expect("rng");
        assert!(k.starts_with(PREFIX));
        assert_eq!(k.len(), KEY_LEN);
        assert!(looks_valid(&k));
        assert_eq!(h, hash(&k));
        assert_ne!(generate().expect("rng").0, k);
    }

    #[test]
    fn a_flipped_character_breaks_the_checksum() {
        let (k, _) = generate().expect("rng");
        let mut b = k.clone().into_bytes();
        let i = PREFIX.len() + 5;
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        assert!(!looks_valid(&String::from_utf8(b).expect("ascii")));
        assert!(!looks_valid(&k[..k.len() - 1]));
        assert!(!looks_valid(&k.replace(PREFIX, "moat_sk_test_")));
    }

    proptest! {
        #[test]
        fn arbitrary_strings_are_not_keys(s in "\\PC{0,80}") {
            prop_assert!(!looks_valid(&s) || s.starts_with(PREFIX));
        }
    }

    fn creator(role: Role) -> Principal {
        Principal::for_tests(Scope::Tenant(TenantId::new()), UserId::new(), Email::parse("a@b.example").expect("e"), role)
    }

    #[test]
    fn scopes_within_creator() {
        let viewer = creator(Role::Viewer);
        assert!(validate_scopes(&["query:execute".into()], &viewer).is_ok());
        assert_eq!(validate_scopes(&["query:*".into()], &viewer).map_err(|e| e.code).err(), Some("scope_exceeds_creator"));
        assert_eq!(validate_scopes(&["user:create".into()], &viewer).map_err(|e| e.code).err(), Some("scope_exceeds_creator"));
        assert_eq!(validate_scopes(&["bogus:x".into()], &viewer).map_err(|e| e.code).err(), Some("invalid_scope"));
        assert!(validate_scopes(&[], &viewer).is_err());
        assert!(validate_scopes(&["*:*".into()], &creator(Role::Admin)).is_err(), "admins lack tenant:*");
        assert!(validate_expiry_days(Some(366)).is_err() && validate_expiry_days(Some(0)).is_err());
        assert_eq!(validate_expiry_days(None), Ok(90));
    }

    #[test]
    fn stored_key_rules() {
        let base = StoredKey {
            id: ApiKeyId::new(),
            tenant_id: Some(TenantId::new()),
            user_id: UserId::new(),
            email: Email::parse("a@b.example").expect("e"),
            role: Role::Editor,
            scopes: vec![Permission::QUERY_EXECUTE],
            expires_at: 2_000,
            revoked: false,
            user_active: true,
            tenant_active: true,
            last_used_at: None,
        };
        assert!(base.needs_touch(1_000));
        assert!(!StoredKey { last_used_at: Some(950), ..base.clone() }.needs_touch(1_000), "used within the minute");
        assert!(StoredKey { last_used_at: Some(900), ..base.clone() }.needs_touch(1_000));
        let p = principal_for_key(base.clone(), 1_000).expect("valid");
        assert!(p.has_permission(&Permission::QUERY_EXECUTE));
        assert!(!p.has_permission(&Permission::TABLE_WRITE), "scopes restrict the role");
        assert!(principal_for_key(StoredKey { revoked: true, ..base.clone() }, 1_000).is_err());
        assert!(principal_for_key(base.clone(), 2_000).is_err(), "expired");
        assert!(principal_for_key(StoredKey { tenant_active: false, ..base.clone() }, 1_000).is_err(), "suspended tenant");
        assert!(principal_for_key(StoredKey { user_active: false, ..base.clone() }, 1_000).is_err());
        // Demoted to viewer: the table:write scope no longer applies.
        let k = StoredKey { role: Role::Viewer, scopes: vec![Permission::TABLE_WRITE], ..base };
        assert!(!principal_for_key(k, 1_000).expect("valid").has_permission(&Permission::TABLE_WRITE));
    }
}
