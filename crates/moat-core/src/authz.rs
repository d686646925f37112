//! Authorization: one trait, one pure default implementation. Every HTTP handler reaches it
//! through the server's single `Authorized` extractor, so no handler decides on its own and a
//! policy engine (e.g. Cedar) can replace the default without touching handlers.

use crate::error::MoatError;
use crate::ids::TenantId;
use crate::permission::Permission;
use crate::principal::{Principal, Scope};

/// What an action is aimed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Platform administration (tenants).
    Platform,
    /// Something inside one tenant.
    Tenant(TenantId),
}

pub trait Authorizer: Send + Sync + std::fmt::Debug {
    /// `Ok(())` or the error to answer with. A tenant principal aimed at another tenant gets
    /// `not_found`, never `forbidden`: another tenant's objects do not exist for it.
    fn authorize(&self, principal: &Principal, wanted: &Permission, target: Target) -> Result<(), MoatError>;
}

/// Fixed roles with the seed's table of rights.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoleAuthorizer;

impl Authorizer for RoleAuthorizer {
    fn authorize(&self, principal: &Principal, wanted: &Permission, target: Target) -> Result<(), MoatError> {
        match (principal.scope(), target) {
            // The Super Admin is the only cross-tenant principal.
            (Scope::Platform, _) => {}
            (Scope::Tenant(own), Target::Tenant(t)) if own == t => {}
            // Fail closed and reveal nothing: the other tenant's object is simply not there.
            (Scope::Tenant(_), Target::Tenant(_)) => {
                return Err(MoatError::not_found("not_found", "no such object"));
            }
            (Scope::Tenant(_), Target::Platform) => {
                return Err(denied(wanted));
            }
        }
        if principal.has_permission(wanted) { Ok(()) } else { Err(denied(wanted)) }
    }
}

fn denied(wanted: &Permission) -> MoatError {
    MoatError::forbidden("forbidden", format!("permission {wanted} is required"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Email, UserId};
    use crate::role::Role;

    fn p(scope: Scope, role: Role) -> Principal {
        Principal::for_tests(scope, UserId::new(), Email::parse("a@b.example").expect("valid"), role)
    }

    #[test]
    fn tenant_isolation_is_404() {
        let (a, b) = (TenantId::new(), TenantId::new());
        let admin_a = p(Scope::Tenant(a), Role::Admin);
        let perm = Permission::new("user", "read");
        assert!(RoleAuthorizer.authorize(&admin_a, &perm, Target::Tenant(a)).is_ok());
        let err = RoleAuthorizer.authorize(&admin_a, &perm, Target::Tenant(b)).expect_err("cross-tenant");
        assert_eq!(err.code, "not_found");
    }

    #[test]
    fn platform_actions_need_the_super_admin() {
        let t = TenantId::new();
        let create = Permission::new("tenant", "create");
        let admin = p(Scope::Tenant(t), Role::Admin);
        assert_eq!(RoleAuthorizer.authorize(&admin, &create, Target::Platform).map_err(|e| e.code), Err("forbidden"));
        let sa = p(Scope::Platform, Role::SuperAdmin);
        assert!(RoleAuthorizer.authorize(&sa, &create, Target::Platform).is_ok());
        assert!(RoleAuthorizer.authorize(&sa, &Permission::new("user", "create"), Target::Tenant(t)).is_ok());
    }

    #[test]
    fn viewer_cannot_administer() {
        let t = TenantId::new();
        let v = p(Scope::Tenant(t), Role::Viewer);
        let err = RoleAuthorizer.authorize(&v, &Permission::new("user", "create"), Target::Tenant(t)).expect_err("denied");
        assert_eq!(err.code, "forbidden");
    }
}
