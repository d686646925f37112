//! The verified caller. A [`Principal`] can only be built inside this crate, by the code that
//! verified a credential (`token::VerifiedAccess::into_principal`,
//! `apikey::principal_for_key`): no handler, header or body can make one up.

use serde::Serialize;

use crate::classification::Classification;
use crate::ids::{ApiKeyId, Email, SessionId, TenantId, UserId};
use crate::permission::{Permission, any_covers};
use crate::role::Role;

/// Where a principal lives: the platform (Super Admin) or exactly one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "tenant_id", rename_all = "snake_case")]
pub enum Scope {
    Platform,
    Tenant(TenantId),
}

impl Scope {
    /// The tenant, or `None` for the platform.
    pub fn tenant_id(self) -> Option<TenantId> {
        match self {
            Self::Tenant(t) => Some(t),
            Self::Platform => None,
        }
    }
}

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Credential {
    Session(SessionId),
    ApiKey(ApiKeyId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    scope: Scope,
    user_id: UserId,
    email: Email,
    role: Role,
    /// Present for API keys: the key may do only what both its scopes and the user's current
    /// role allow.
    key_scopes: Option<Vec<Permission>>,
    credential: Credential,
}

impl Principal {
    pub(crate) fn new(
        scope: Scope,
        user_id: UserId,
        email: Email,
        role: Role,
        key_scopes: Option<Vec<Permission>>,
        credential: Credential,
    ) -> Self {
        Self { scope, user_id, email, role, key_scopes, credential }
    }

    /// The principal of a password session (a bearer token's, or a PostgreSQL wire connection's),
    /// with the role as it is *now* in the store. A platform session may only carry the Super
    /// Admin role, a tenant session never; anything else is refused as an invalid credential.
    pub fn for_session(scope: Scope, user_id: UserId, email: Email, current_role: Role, session: SessionId) -> Option<Self> {
        let ok = matches!((scope, current_role), (Scope::Platform, Role::SuperAdmin))
            || matches!(scope, Scope::Tenant(_)) && current_role != Role::SuperAdmin;
        ok.then(|| Self::new(scope, user_id, email, current_role, None, Credential::Session(session)))
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }
    /// The tenant of a tenant-scoped principal; `None` for the platform Super Admin.
    pub fn tenant_id(&self) -> Option<TenantId> {
        self.scope.tenant_id()
    }
    pub fn user_id(&self) -> UserId {
        self.user_id
    }
    pub fn email(&self) -> &Email {
        &self.email
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn credential(&self) -> Credential {
        self.credential
    }
    pub fn key_scopes(&self) -> Option<&[Permission]> {
        self.key_scopes.as_deref()
    }
    pub fn is_super_admin(&self) -> bool {
        self.scope == Scope::Platform && self.role == Role::SuperAdmin
    }
    pub fn clearance(&self) -> Classification {
        self.role.default_clearance()
    }

    /// Role grants intersected with key scopes.
    pub fn has_permission(&self, wanted: &Permission) -> bool {
        any_covers(self.role.grants(), wanted) && self.key_scopes.as_deref().is_none_or(|s| any_covers(s, wanted))
    }

    /// Test-only constructor so that other crates' tests can exercise handlers and engines
    /// without minting tokens. Not compiled into release code paths that matter: it is behind
    /// the `testing` feature.
    #[cfg(any(test, feature = "testing"))]
    pub fn for_tests(scope: Scope, user_id: UserId, email: Email, role: Role) -> Self {
        Self::new(scope, user_id, email, role, None, Credential::Session(SessionId::new()))
    }
}
