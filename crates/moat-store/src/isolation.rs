//! Tenant isolation validation on the embedded store. SQLite has neither row-level security
//! nor schemas, so isolation rests on moat's tenant-scoped queries; these checks exercise
//! them against every other tenant's real objects: each foreign user, table, view, API key and
//! audit record is looked up from the validated tenant's scope and must not be reachable.
//! (The PostgreSQL store validates its database-enforced layers instead: `postgres.rs`.)

use moat_core::Result;
use moat_core::audit::trail_name;
use moat_core::ids::TenantId;

use crate::{AuditFilter, AuditStore, IsolationReport, MetaStore};

/// How many of a tenant's own audit records are read back to check their trail.
const AUDIT_SAMPLE: u32 = 1000;

pub(crate) async fn application_checks<S: MetaStore + AuditStore>(s: &S, tenant: TenantId) -> Result<IsolationReport> {
    let mut r = IsolationReport {
        backend: "sqlite".into(),
        enforced_by: "moat's tenant-scoped queries (embedded SQLite has no row-level security or schemas; \
                      use PostgreSQL for database-enforced isolation)"
            .into(),
        checks: Vec::new(),
    };
    let own = s.tenant_by_id(tenant).await?.is_some();
    r.check("own_tenant_visible", own, if own { "the tenant reads its own row" } else { "the tenant's own row is missing" });
    let others: Vec<TenantId> = s.list_tenants().await?.into_iter().map(|t| t.id).filter(|t| *t != tenant).collect();

    let (mut tried, mut reached) = (0usize, 0usize);
    for &b in &others {
        for u in s.list_users(Some(b)).await? {
            tried += 1;
            let by_id = s.user_by_id(Some(tenant), u.id).await?;
            // An e-mail may exist in both tenants: only the foreign user itself is a leak.
            let by_email = s.user_by_email(Some(tenant), &u.email).await?;
            if by_id.is_some() || by_email.is_some_and(|x| x.id == u.id || x.tenant_id != Some(tenant)) {
                reached += 1;
            }
        }
    }
    let stray = s.list_users(Some(tenant)).await?.iter().filter(|u| u.tenant_id != Some(tenant)).count();
    r.check(
        "users",
        reached == 0 && stray == 0,
        format!("{reached} of {tried} users of other tenants reachable; {stray} foreign in the own list"),
    );

    let (mut tried, mut reached) = (0usize, 0usize);
    for &b in &others {
        for t in s.list_tables(b).await? {
            tried += 1;
            if s.table(tenant, &t.name).await?.is_some_and(|x| x.id == t.id || x.tenant_id != tenant) {
                reached += 1;
            }
        }
    }
    let stray = s.list_tables(tenant).await?.iter().filter(|t| t.tenant_id != tenant).count();
    r.check(
        "tables",
        reached == 0 && stray == 0,
        format!("{reached} of {tried} tables of other tenants reachable; {stray} foreign in the own list"),
    );

    let mut foreign = Vec::new();
    for &b in &others {
        foreign.extend(s.list_views(b).await?.into_iter().map(|v| v.id));
    }
    let reached = s.list_views(tenant).await?.iter().filter(|v| v.tenant_id != tenant || foreign.contains(&v.id)).count();
    r.check("views", reached == 0, format!("{reached} of {} views of other tenants listed", foreign.len()));

    let mut foreign = Vec::new();
    for &b in &others {
        foreign.extend(s.list_api_keys(Some(b), None).await?.into_iter().map(|k| k.id));
    }
    let reached = s.list_api_keys(Some(tenant), None).await?.iter().filter(|k| foreign.contains(&k.id)).count();
    r.check("api_keys", reached == 0, format!("{reached} of {} API keys of other tenants listed", foreign.len()));

    let own_trail = trail_name(Some(tenant));
    let records = s.list(Some(tenant), &AuditFilter { limit: AUDIT_SAMPLE, ..AuditFilter::default() }).await?;
    let stray = records.iter().filter(|e| e.trail != own_trail).count();
    r.check("audit_trail", stray == 0, format!("{stray} of the {} newest records read are from another trail", records.len()));
    Ok(r)
}
