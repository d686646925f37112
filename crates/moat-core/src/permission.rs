//! Permissions as `resource:action`, with `*` wildcards on either side (`*:*`, `query:*`).

use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;

use crate::error::MoatError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permission {
    resource: &'static str,
    action: &'static str,
}

/// Every permission moat knows. Scopes are validated against it, so a typo in an API key's
/// scopes is an error instead of a silently useless key.
pub const CATALOG: &[Permission] = &[
    Permission::new("tenant", "create"),
    Permission::new("tenant", "read"),
    Permission::new("tenant", "update"),
    Permission::new("user", "create"),
    Permission::new("user", "read"),
    Permission::new("user", "update"),
    Permission::KEY_CREATE,
    Permission::KEY_READ,
    Permission::KEY_REVOKE,
    Permission::new("key", "manage"),
    Permission::TABLE_READ,
    Permission::TABLE_WRITE,
    Permission::TABLE_DELETE,
    Permission::new("table", "classify"),
    Permission::QUERY_EXECUTE,
    Permission::new("query", "explain"),
    Permission::new("audit", "read"),
    Permission::new("audit", "verify"),
    Permission::new("report", "read"),
    Permission::new("policy", "read"),
    Permission::new("policy", "update"),
    Permission::new("encryption", "read"),
    Permission::new("encryption", "rotate"),
    Permission::new("encryption", "rotate_master"),
];

impl Permission {
    pub const ALL: Permission = Permission::new("*", "*");
    pub const KEY_CREATE: Permission = Permission::new("key", "create");
    pub const KEY_READ: Permission = Permission::new("key", "read");
    pub const KEY_REVOKE: Permission = Permission::new("key", "revoke");
    pub const TABLE_READ: Permission = Permission::new("table", "read");
    pub const TABLE_WRITE: Permission = Permission::new("table", "write");
    pub const TABLE_DELETE: Permission = Permission::new("table", "delete");
    pub const QUERY_EXECUTE: Permission = Permission::new("query", "execute");

    pub const fn new(resource: &'static str, action: &'static str) -> Self {
        Self { resource, action }
    }

    pub fn resource(&self) -> &'static str {
        self.resource
    }
    pub fn action(&self) -> &'static str {
        self.action
    }

    /// Parses a scope string. Only permissions of the catalog, or wildcards over its resources
    /// and actions, are accepted.
    pub fn parse(s: &str) -> Result<Self, MoatError> {
        let bad = |why: &str| MoatError::invalid("invalid_scope", format!("scope {s:?} {why}"));
        let (r, a) = s.split_once(':').ok_or_else(|| bad("must be resource:action"))?;
        let resource = if r == "*" {
            "*"
        } else {
            CATALOG.iter().find(|p| p.resource == r).map(|p| p.resource).ok_or_else(|| bad("names an unknown resource"))?
        };
        let action = if a == "*" {
            "*"
        } else {
            CATALOG
                .iter()
                .find(|p| (resource == "*" || p.resource == resource) && p.action == a)
                .map(|p| p.action)
                .ok_or_else(|| bad("names an unknown action"))?
        };
        Ok(Self { resource, action })
    }

    /// Whether this grant covers `wanted` (wildcards on either side of the grant).
    pub fn covers(&self, wanted: &Permission) -> bool {
        (self.resource == "*" || self.resource == wanted.resource) && (self.action == "*" || self.action == wanted.action)
    }

    /// The catalog permissions this (possibly wildcard) permission stands for.
    pub fn expand(&self) -> impl Iterator<Item = &'static Permission> + '_ {
        CATALOG.iter().filter(move |p| self.covers(p))
    }
}

/// Whether any grant in `grants` covers `wanted`.
pub fn any_covers(grants: &[Permission], wanted: &Permission) -> bool {
    grants.iter().any(|g| g.covers(wanted))
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.resource, self.action)
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Cow::<'de, str>::deserialize(d)?;
        Permission::parse(&s).map_err(|e| serde::de::Error::custom(e.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::Role;

    #[test]
    fn wildcards() {
        let q = Permission::parse("query:*").expect("valid");
        assert!(q.covers(&Permission::QUERY_EXECUTE));
        assert!(!q.covers(&Permission::TABLE_READ));
        assert!(Permission::ALL.covers(&Permission::TABLE_WRITE));
        assert!(Permission::parse("*:read").expect("valid").covers(&Permission::TABLE_READ));
        assert_eq!(q.expand().count(), 2);
    }

    #[test]
    fn unknown_scopes_refused() {
        for bad in ["", "query", "query:", "quer:execute", "query:drop", ":", "query:execute:x", "QUERY:EXECUTE"] {
            assert_eq!(Permission::parse(bad).map_err(|e| e.code), Err("invalid_scope"), "{bad}");
        }
    }

    #[test]
    fn role_table_matches_the_seed() {
        let can = |r: Role, p: &Permission| any_covers(r.grants(), p);
        let manage_users = Permission::new("user", "create");
        assert!(can(Role::SuperAdmin, &Permission::new("tenant", "create")));
        assert!(!can(Role::Admin, &Permission::new("tenant", "create")));
        assert!(can(Role::Admin, &manage_users));
        for r in [Role::Editor, Role::User, Role::Viewer, Role::Auditor] {
            assert!(!can(r, &manage_users), "{r}");
            assert!(can(r, &Permission::KEY_CREATE), "{r} creates own API keys");
        }
        assert!(can(Role::Editor, &Permission::TABLE_WRITE));
        assert!(!can(Role::User, &Permission::TABLE_WRITE));
        assert!(!can(Role::Viewer, &Permission::TABLE_DELETE));
        assert!(can(Role::Viewer, &Permission::QUERY_EXECUTE));
        assert!(!can(Role::Auditor, &Permission::QUERY_EXECUTE), "auditors read no data");
        assert!(!can(Role::Auditor, &Permission::TABLE_READ));
        assert!(can(Role::Auditor, &Permission::new("audit", "read")));
        assert!(!can(Role::Viewer, &Permission::new("audit", "read")));
    }
}
