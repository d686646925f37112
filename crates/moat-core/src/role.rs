//! The roles of the seed plus `auditor`, and what each may do by default.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::classification::Classification;
use crate::error::MoatError;
use crate::permission::Permission;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Platform scope, cross-tenant. Exists only outside tenants.
    SuperAdmin,
    Admin,
    Editor,
    User,
    Viewer,
    /// Reads the tenant's audit trail and reports, and no data.
    Auditor,
}

impl Role {
    pub const TENANT_ROLES: [Role; 5] = [Role::Admin, Role::Editor, Role::User, Role::Viewer, Role::Auditor];

    pub fn parse(s: &str) -> Result<Self, MoatError> {
        match s {
            "super_admin" => Ok(Self::SuperAdmin),
            "admin" => Ok(Self::Admin),
            "editor" => Ok(Self::Editor),
            "user" => Ok(Self::User),
            "viewer" => Ok(Self::Viewer),
            "auditor" => Ok(Self::Auditor),
            other => Err(MoatError::invalid("invalid_role", format!("role {other:?} is not one of admin, editor, user, viewer, auditor"))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::SuperAdmin => "super_admin",
            Self::Admin => "admin",
            Self::Editor => "editor",
            Self::User => "user",
            Self::Viewer => "viewer",
            Self::Auditor => "auditor",
        }
    }

    /// The highest label this role reads raw (contract: "Default clearance by role").
    /// Auditors read no data at all; their clearance is the lowest so that a mistake elsewhere
    /// still masks everything.
    pub fn default_clearance(self) -> Classification {
        match self {
            Self::SuperAdmin | Self::Admin => Classification::Restricted,
            Self::Editor => Classification::Confidential,
            Self::User | Self::Viewer => Classification::Internal,
            Self::Auditor => Classification::Public,
        }
    }

    /// What the role may do, as `resource:action` grants (the seed's table of rights).
    pub fn grants(self) -> &'static [Permission] {
        match self {
            Self::SuperAdmin => SUPER_ADMIN_GRANTS,
            Self::Admin => ADMIN_GRANTS,
            Self::Editor => EDITOR_GRANTS,
            Self::User | Self::Viewer => READER_GRANTS,
            Self::Auditor => AUDITOR_GRANTS,
        }
    }

    /// Privilege order used to stop escalation: a caller may only hand out roles at or below
    /// its own rank (an Editor can never mint an Admin).
    pub fn rank(self) -> u8 {
        match self {
            Self::SuperAdmin => 5,
            Self::Admin => 4,
            Self::Editor => 3,
            Self::User => 2,
            Self::Viewer | Self::Auditor => 1,
        }
    }
}

use Permission as P;
const SUPER_ADMIN_GRANTS: &[Permission] = &[P::ALL];
const ADMIN_GRANTS: &[Permission] = &[
    P::new("user", "*"),
    P::new("key", "*"),
    P::new("table", "*"),
    P::new("query", "*"),
    P::new("audit", "*"),
    P::new("report", "*"),
    P::new("policy", "*"),
    // A tenant's own data keys; the master key is the platform's (Super Admin only).
    P::new("encryption", "read"),
    P::new("encryption", "rotate"),
];
const EDITOR_GRANTS: &[Permission] =
    &[P::TABLE_READ, P::TABLE_WRITE, P::TABLE_DELETE, P::QUERY_EXECUTE, P::KEY_CREATE, P::KEY_READ, P::KEY_REVOKE];
/// User and Viewer read shared data (masked to their clearance) and manage their own keys.
const READER_GRANTS: &[Permission] = &[P::TABLE_READ, P::QUERY_EXECUTE, P::KEY_CREATE, P::KEY_READ, P::KEY_REVOKE];
const AUDITOR_GRANTS: &[Permission] =
    &[P::new("audit", "read"), P::new("audit", "verify"), P::new("report", "read"), P::KEY_CREATE, P::KEY_READ, P::KEY_REVOKE];

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
