//! Identifiers and names: UUIDv7 ids (time-ordered, so indexes stay compact), tenant slugs and
//! e-mail addresses, each validated once at the edge and carried as a type afterwards.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

use crate::error::MoatError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::parse_str(s).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A tenant (business unit). Never taken from a request: only from a verified credential.
    TenantId
);
uuid_id!(
    /// A user account inside one tenant, or a platform (Super Admin) account.
    UserId
);
uuid_id!(
    /// An API key's public id (the secret itself is never stored).
    ApiKeyId
);
uuid_id!(
    /// A login session: one refresh-token family and the access tokens minted from it.
    SessionId
);

/// Slugs that would collide with routes, schemas or platform words.
const RESERVED_SLUGS: &[&str] = &[
    "admin",
    "api",
    "auth",
    "default",
    "information-schema",
    "internal",
    "login",
    "logout",
    "moat",
    "null",
    "platform",
    "postgres",
    "public",
    "root",
    "superadmin",
    "super-admin",
    "system",
    "template0",
    "template1",
    "tenant",
    "tenants",
    "test",
    "v1",
    "www",
];

/// A tenant slug: `^[a-z][a-z0-9-]{1,62}$`, not reserved, no trailing or doubled hyphen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slug(String);

impl Slug {
    pub fn parse(s: &str) -> Result<Self, MoatError> {
        let bad = |why: &str| MoatError::invalid("invalid_slug", format!("slug {s:?} {why}"));
        let bytes = s.as_bytes();
        if bytes.len() < 2 || bytes.len() > 63 {
            return Err(bad("must be 2 to 63 characters"));
        }
        if !bytes[0].is_ascii_lowercase() {
            return Err(bad("must start with a lowercase letter"));
        }
        if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
            return Err(bad("may contain only a-z, 0-9 and '-'"));
        }
        if s.ends_with('-') || s.contains("--") {
            return Err(bad("may not end with '-' or contain '--'"));
        }
        if RESERVED_SLUGS.contains(&s) {
            return Err(bad("is reserved"));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Slug {
    type Error = MoatError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Slug> for String {
    fn from(s: Slug) -> String {
        s.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An e-mail address, trimmed and lower-cased so that lookups and lockout counters cannot be
/// split by case (`Admin@X` and `admin@x` are one account and one counter).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, MoatError> {
        let norm = s.trim().to_lowercase();
        let bad = || MoatError::invalid("invalid_email", "email is not a valid address");
        if norm.len() > 254 || norm.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = norm.rsplit_once('@').ok_or_else(bad)?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return Err(bad());
        }
        let labels_ok = domain.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
        if !domain.contains('.') || !labels_ok {
            return Err(bad());
        }
        Ok(Self(norm))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Email {
    type Error = MoatError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Email> for String {
    fn from(e: Email) -> String {
        e.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        for ok in ["acme", "globex", "a1", "bu-42-emea"] {
            assert!(Slug::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "1abc", "Acme", "acme-", "ac--me", "ac_me", "admin", "a/b", "tenant", "acme;drop", &"a".repeat(64)] {
            let e = Slug::parse(bad).expect_err(bad);
            assert_eq!(e.code, "invalid_slug");
        }
    }

    #[test]
    fn emails_normalise_and_reject() {
        assert_eq!(Email::parse("  Admin@Acme.Example ").map(|e| e.0), Ok("admin@acme.example".into()));
        for bad in ["", "a", "@x.com", "a@", "a@b", "a b@c.com", "a@-b.com", "a@b..com", "a@@b.com"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_v7_and_roundtrip() {
        let t = TenantId::new();
        assert_eq!(t.0.get_version_num(), 7);
        assert_eq!(TenantId::parse(&t.to_string()), Some(t));
        assert_eq!(TenantId::parse("nope"), None);
    }
}
