//! `moat demo`: tenants `acme` and `globex`, each with an Admin, an Editor (analyst) and a
//! Viewer, plus a platform Super Admin. Idempotent: the generated password is kept in
//! `demo.json` (0600) so every start prints the same logins.

use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::clock::UnixSeconds;
use moat_core::ids::{Email, Slug, TenantId, UserId};
use moat_core::password::hash_password;
use moat_core::role::Role;
use moat_core::{MoatError, Result};
use moat_store::{NewTenant, NewUser};
use serde::{Deserialize, Serialize};

use crate::bootstrap::{load_config, write_secret_file};
use crate::config::DataDir;

pub const DEMO_TENANTS: [(&str, &str); 2] = [("acme", "Acme Corporation"), ("globex", "Globex Corporation")];
pub const DEMO_USERS: [(&str, Role); 3] = [("admin", Role::Admin), ("analyst", Role::Editor), ("viewer", Role::Viewer)];
pub const DEMO_SUPER_ADMIN: &str = "superadmin@moat.example";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DemoCredentials {
    pub password: String,
    pub super_admin: String,
    /// (tenant slug, [(email, role)]).
    pub tenants: Vec<(String, Vec<(String, String)>)>,
}

fn demo_password() -> Result<String> {
    let bytes = moat_core::secret::random_bytes::<9>()?;
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRSTUVWXYZ";
    let word: String = bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect();
    // Fixed parts guarantee the policy's character classes whatever the random part is.
    Ok(format!("Demo-{word}-{}7!", bytes[0] % 10))
}

/// Seeds the demo accounts if they are not there yet; returns the logins.
pub async fn seed(dir: &DataDir, now: UnixSeconds) -> Result<DemoCredentials> {
    // The credentials file is written first: a seed interrupted half-way resumes with the same
    // password instead of leaving accounts nobody knows the password of.
    let path = dir.root.join("demo.json");
    let io = |e: String| MoatError::new(moat_core::ErrorKind::Internal, "io_error", format!("{}: {e}", path.display()));
    let password = if path.exists() {
        let text = std::fs::read(&path).map_err(|e| io(e.to_string()))?;
        serde_json::from_slice::<DemoCredentials>(&text).map_err(|e| io(e.to_string()))?.password
    } else {
        let password = demo_password()?;
        let creds = DemoCredentials { password: password.clone(), super_admin: DEMO_SUPER_ADMIN.into(), tenants: listing() };
        let bytes = serde_json::to_vec_pretty(&creds).map_err(|_| MoatError::internal("encode"))?;
        write_secret_file(&path, &bytes)?;
        password
    };
    let cfg = load_config(dir)?;
    let stores = moat_store::open(&cfg.store_url(&dir.root)).await?;
    let hash = hash_password(&password)?;
    let system = || Actor::system("demo");
    let sa = Email::parse(DEMO_SUPER_ADMIN)?;
    if stores.meta.user_by_email(None, &sa).await?.is_none() {
        let id = UserId::new();
        stores
            .meta
            .create_user(&NewUser { id, tenant_id: None, email: sa, role: Role::SuperAdmin, password_hash: hash.clone(), now })
            .await?;
        stores
            .audit
            .append(
                &AuditEvent::new(None, Category::Admin, "superadmin.create", system(), Outcome::Success).resource(format!("user:{id}")),
                now * 1000,
            )
            .await?;
    }
    for (slug, name) in DEMO_TENANTS {
        let tenant = match stores.meta.tenant_by_slug(slug).await? {
            Some(t) => t,
            None => {
                let t = stores
                    .meta
                    .create_tenant(&NewTenant { id: TenantId::new(), slug: Slug::parse(slug)?, name: name.into(), now }, None)
                    .await?;
                stores
                    .audit
                    .append(
                        &AuditEvent::new(Some(t.id), Category::Admin, "tenant.create", system(), Outcome::Success)
                            .resource(format!("tenant:{slug}")),
                        now * 1000,
                    )
                    .await?;
                t
            }
        };
        for (local, role) in DEMO_USERS {
            let email = Email::parse(&format!("{local}@{slug}.example"))?;
            if stores.meta.user_by_email(Some(tenant.id), &email).await?.is_none() {
                let id = UserId::new();
                stores
                    .meta
                    .create_user(&NewUser { id, tenant_id: Some(tenant.id), email: email.clone(), role, password_hash: hash.clone(), now })
                    .await?;
                let e = AuditEvent::new(Some(tenant.id), Category::Admin, "user.create", system(), Outcome::Success)
                    .resource(format!("user:{id}"))
                    .details(serde_json::json!({"email": email, "role": role}));
                stores.audit.append(&e, now * 1000).await?;
            }
        }
    }
    Ok(DemoCredentials { password, super_admin: DEMO_SUPER_ADMIN.into(), tenants: listing() })
}

/// The demo logins, tenant by tenant.
fn listing() -> Vec<(String, Vec<(String, String)>)> {
    DEMO_TENANTS
        .iter()
        .map(|(slug, _)| {
            (slug.to_string(), DEMO_USERS.iter().map(|(l, r)| (format!("{l}@{slug}.example"), r.as_str().to_owned())).collect())
        })
        .collect()
}
