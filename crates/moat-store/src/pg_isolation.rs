//! Tenant isolation validation on PostgreSQL: proves, as the runtime role with raw SQL that
//! bypasses moat's own filters, that a tenant's scope reads no other tenant's rows and that the
//! tenant's role opens its own schema and no other. Each attempt that must fail is made for
//! real (and its SQLSTATE checked), beside the catalog's word for it.

use moat_core::Result;
use moat_core::ids::TenantId;
use sqlx::{Postgres, Row, Transaction};

use super::{PLATFORM, PgStore, begin_in, db_err, quote_ident, tenant_role, tenant_schema};
use crate::IsolationReport;

/// Every table with a tenant policy, and the column the policy reads (tenant id, or the trail,
/// which is the tenant id as text).
const SCOPED_TABLES: &[(&str, &str)] = &[
    ("tenants", "id"),
    ("users", "tenant_id"),
    ("password_history", "tenant_id"),
    ("sessions", "tenant_id"),
    ("refresh_tokens", "tenant_id"),
    ("api_keys", "tenant_id"),
    ("tenant_settings", "tenant_id"),
    ("tenant_keys", "tenant_id"),
    ("catalog_tables", "tenant_id"),
    ("catalog_columns", "tenant_id"),
    ("catalog_views", "tenant_id"),
    ("audit_log", "trail"),
    ("audit_nodes", "trail"),
    ("audit_trails", "trail"),
    ("audit_checkpoints", "trail"),
    ("audit_prunes", "trail"),
    ("event_cursors", "trail"),
];

/// Tables only the platform scope reads.
const PLATFORM_TABLES: &[&str] = &["login_lockout"];

/// SQLSTATE of "permission denied" (insufficient_privilege).
const DENIED: &str = "42501";

type Tx = Transaction<'static, Postgres>;

/// `SELECT count(*) …` with its parameters.
async fn count(tx: &mut Tx, sql: String, binds: &[&str]) -> Result<i64> {
    let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql));
    for b in binds {
        q = q.bind(*b);
    }
    q.fetch_one(&mut **tx).await.map_err(db_err)
}

/// The SQLSTATE a statement fails with, `None` when it succeeds.
async fn failure(tx: &mut Tx, sql: String) -> Option<String> {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&mut **tx).await {
        Ok(_) => None,
        Err(sqlx::Error::Database(d)) => Some(d.code().map_or_else(|| "?".to_owned(), |c| c.into_owned())),
        Err(e) => Some(format!("({e})")),
    }
}

impl PgStore {
    /// What this database holds of `tenant` besides its `tenants` row: rows of every scoped
    /// table (platform scope), and whether its schema exists. A tenant routed to a database of
    /// its own must leave none in the platform's.
    pub(crate) async fn traces_of(&self, tenant: TenantId) -> Result<(i64, bool)> {
        let me = tenant.to_string();
        let mut platform = begin_in(&self.pool, PLATFORM).await.map_err(db_err)?;
        let mut rows = 0;
        for (table, col) in SCOPED_TABLES.iter().filter(|(t, _)| *t != "tenants") {
            rows += count(&mut platform, format!("SELECT count(*) FROM moat.{table} WHERE {col}::text = $1"), &[&me]).await?;
        }
        let schema = count(&mut platform, "SELECT count(*) FROM pg_namespace WHERE nspname = $1".into(), &[&tenant_schema(tenant)]).await?;
        platform.rollback().await.map_err(db_err)?;
        Ok((rows, schema > 0))
    }

    pub(super) async fn isolation_report(&self, tenant: TenantId) -> Result<IsolationReport> {
        let mut r = IsolationReport {
            backend: "postgres".into(),
            enforced_by: "PostgreSQL: FORCEd row-level security under app.tenant_id, one role per tenant schema, \
                          a runtime role that owns nothing and inherits no tenant role"
                .into(),
            checks: Vec::new(),
        };
        let me = tenant.to_string();
        self.row_checks(&mut r, &me).await?;
        self.runtime_role_checks(&mut r).await?;
        self.schema_checks(&mut r, tenant).await?;
        Ok(r)
    }

    /// Rows: what other tenants hold (platform scope) against what the tenant's scope and an
    /// unset scope read of it.
    async fn row_checks(&self, r: &mut IsolationReport, me: &str) -> Result<()> {
        let mut platform = begin_in(&self.pool, PLATFORM).await.map_err(db_err)?;
        let mut foreign = Vec::new();
        for (table, col) in SCOPED_TABLES {
            foreign.push(count(&mut platform, format!("SELECT count(*) FROM moat.{table} WHERE {col}::text <> $1"), &[me]).await?);
        }
        let platform_only = count(&mut platform, format!("SELECT count(*) FROM moat.{}", PLATFORM_TABLES[0]), &[]).await?;
        let all_users = count(&mut platform, "SELECT count(*) FROM moat.users".into(), &[]).await?;
        platform.rollback().await.map_err(db_err)?;

        let mut scoped = begin_in(&self.pool, me).await.map_err(db_err)?;
        let own = count(&mut scoped, "SELECT count(*) FROM moat.tenants WHERE id::text = $1".into(), &[me]).await?;
        r.check("own_tenant_visible", own == 1, format!("{own} row of the tenant itself visible in its own scope (the probe is live)"));
        for ((table, col), total) in SCOPED_TABLES.iter().zip(foreign) {
            let seen = count(&mut scoped, format!("SELECT count(*) FROM moat.{table} WHERE {col}::text <> $1"), &[me]).await?;
            let forced: bool = sqlx::query_scalar("SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = $1::regclass")
                .bind(format!("moat.{table}"))
                .fetch_one(&mut *scoped)
                .await
                .map_err(db_err)?;
            let rls = if forced { "row-level security forced" } else { "row-level security NOT forced" };
            r.check(&format!("rows:{table}"), forced && seen == 0, format!("{rls}; {seen} of {total} rows of other tenants visible"));
        }
        for table in PLATFORM_TABLES {
            let seen = count(&mut scoped, format!("SELECT count(*) FROM moat.{table}"), &[]).await?;
            r.check(&format!("rows:{table}"), seen == 0, format!("{seen} of {platform_only} platform-only rows visible"));
        }
        scoped.rollback().await.map_err(db_err)?;

        // No scope at all (a code path that forgot to set one): nothing.
        let mut unset = self.pool.begin().await.map_err(db_err)?;
        sqlx::query("SELECT set_config('search_path', 'pg_catalog, moat', true)").execute(&mut *unset).await.map_err(db_err)?;
        let seen = count(
            &mut unset,
            "SELECT (SELECT count(*) FROM moat.tenants) + (SELECT count(*) FROM moat.users) + (SELECT count(*) FROM moat.audit_log)".into(),
            &[],
        )
        .await?;
        unset.rollback().await.map_err(db_err)?;
        r.check(
            "rows:no_scope",
            seen == 0,
            format!("{seen} rows of tenants, users and audit visible without app.tenant_id ({all_users} users exist)"),
        );
        Ok(())
    }

    /// The runtime role: no superuser, no BYPASSRLS, owns no platform table or schema, and
    /// reaches no tenant schema by itself.
    async fn runtime_role_checks(&self, r: &mut IsolationReport) -> Result<()> {
        let row = sqlx::query(
            "SELECT rolsuper, rolbypassrls, \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                  WHERE n.nspname = 'moat' AND c.relowner = r.oid) \
              + (SELECT count(*) FROM pg_namespace n WHERE (n.nspname = 'moat' OR n.nspname LIKE 'tenant\\_%') AND n.nspowner = r.oid) AS owned, \
                (SELECT count(*) FROM pg_namespace n WHERE n.nspname LIKE 'tenant\\_%' \
                  AND (has_schema_privilege(n.oid, 'USAGE') OR has_schema_privilege(n.oid, 'CREATE'))) AS schemas \
             FROM pg_roles r WHERE r.rolname = current_user",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        let (sup, bypass): (bool, bool) = (row.get("rolsuper"), row.get("rolbypassrls"));
        let (owned, schemas): (i64, i64) = (row.get("owned"), row.get("schemas"));
        r.check(
            "runtime_role",
            !sup && !bypass && owned == 0,
            format!("{:?}: superuser {sup}, BYPASSRLS {bypass}, owns {owned} of moat's schemas and tables", self.app_role),
        );
        r.check("runtime_role:tenant_schemas", schemas == 0, format!("the runtime role by itself may use {schemas} tenant schemas"));
        Ok(())
    }

    /// The tenant's role: opens its own schema, no other, no platform table; a real read of
    /// another tenant's schema is refused.
    async fn schema_checks(&self, r: &mut IsolationReport, tenant: TenantId) -> Result<()> {
        let (own, role) = (tenant_schema(tenant), quote_ident(&tenant_role(tenant)));
        let me = tenant.to_string();
        let mut tx = begin_in(&self.pool, &me).await.map_err(db_err)?;
        if let Some(code) = failure(&mut tx, format!("SET LOCAL ROLE {role}")).await {
            r.check("tenant_role", false, format!("the runtime role cannot SET ROLE {role} (SQLSTATE {code})"));
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT coalesce((SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace n WHERE n.nspname = $1), false) AS own, \
                (SELECT count(*) FROM pg_namespace n WHERE n.nspname LIKE 'tenant\\_%' AND n.nspname <> $1) AS others, \
                (SELECT count(*) FROM pg_namespace n WHERE n.nspname LIKE 'tenant\\_%' AND n.nspname <> $1 \
                  AND (has_schema_privilege(n.oid, 'USAGE') OR has_schema_privilege(n.oid, 'CREATE'))) AS reached, \
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'moat' \
                  AND c.relkind IN ('r', 'p', 'v') AND has_table_privilege(c.oid, 'SELECT, INSERT, UPDATE, DELETE')) AS platform, \
                (SELECT min(n.nspname::text) FROM pg_namespace n WHERE n.nspname LIKE 'tenant\\_%' AND n.nspname <> $1) AS victim",
        )
        .bind(&own)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        tx.rollback().await.map_err(db_err)?;
        let (own_ok, others, reached, platform): (bool, i64, i64, i64) =
            (row.get("own"), row.get("others"), row.get("reached"), row.get("platform"));
        r.check("tenant_role:own_schema", own_ok, format!("{role} may use schema {own}: {own_ok}"));
        r.check("tenant_role:other_schemas", reached == 0, format!("{role} may use {reached} of {others} other tenant schemas"));
        r.check("tenant_role:platform_tables", platform == 0, format!("{role} has privileges on {platform} of moat's platform tables"));

        // Real attempts, each in its own transaction (a refusal aborts it).
        let victim: Option<String> = row.get("victim");
        let attempts = [
            ("attempt:other_schema", victim.map(|v| format!("SELECT 1 FROM {}.moat_isolation_probe", quote_ident(&v)))),
            ("attempt:platform_table", Some("SELECT 1 FROM moat.users LIMIT 1".to_owned())),
        ];
        for (name, sql) in attempts {
            let Some(sql) = sql else {
                r.check(name, true, "no other tenant schema exists yet: nothing to try");
                continue;
            };
            let mut tx = begin_in(&self.pool, &me).await.map_err(db_err)?;
            failure(&mut tx, format!("SET LOCAL ROLE {role}")).await;
            let code = failure(&mut tx, sql.clone()).await;
            tx.rollback().await.map_err(db_err)?;
            let denied = code.as_deref() == Some(DENIED);
            let got = code.map_or_else(|| "it succeeded".to_owned(), |c| format!("SQLSTATE {c}"));
            r.check(name, denied, format!("as {role}: `{sql}` → {got} (want {DENIED} permission denied)"));
        }
        Ok(())
    }
}
