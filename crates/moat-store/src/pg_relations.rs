//! A tenant's own relations in PostgreSQL (schema `tenant_{uuid}`), read as the tenant's role.
//!
//! Every read is one transaction that is READ ONLY from its `BEGIN`, carries the tenant's
//! `app.tenant_id`, switches to the tenant's role (`SET LOCAL ROLE moat_tenant_{uuid}`: the
//! runtime role holds nothing on tenant schemas itself), sees only the tenant's schema on its
//! `search_path` and has a `statement_timeout`. So even a statement built wrongly could neither
//! write nor read another tenant's schema or a platform table: the database refuses it.
//! Statements are built by the caller from quoted identifiers and bound parameters only.

use std::time::Duration;

use futures::StreamExt;
use moat_core::ids::TenantId;
use moat_core::{MoatError, Result};
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::mpsc;

use super::{PgStore, db_err, quote_ident, tenant_role, tenant_schema};
use crate::{RelationColumn, RelationInfo, SqlValue, TenantRelations};

/// Rows buffered between the database and a slow reader.
const ROW_BUFFER: usize = 1_024;

/// A relation that cannot be read as asked, named by what went wrong (never the database's own
/// message, which may quote values).
fn read_err(e: sqlx::Error) -> MoatError {
    if let sqlx::Error::Database(d) = &e {
        let code = d.code().unwrap_or_default();
        tracing::warn!(sqlstate = %code, error = %e, "a tenant relation could not be read");
        return match code.as_ref() {
            "42501" => MoatError::forbidden("source_denied", "the tenant's database role may not read this relation"),
            "42P01" | "42703" => {
                MoatError::conflict("source_changed", "the relation or one of its columns is gone; register the table again")
            }
            "57014" => MoatError::unavailable("query_timeout", "the source did not answer within the query timeout"),
            _ => MoatError::unavailable("source_error", format!("the source refused the read (SQLSTATE {code})")),
        };
    }
    db_err(e)
}

async fn reader(pool: &PgPool, t: TenantId, timeout: Duration) -> std::result::Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN TRANSACTION READ ONLY").await?;
    sqlx::query(
        "SELECT set_config('app.tenant_id', $1, true), set_config('search_path', $2, true), set_config('statement_timeout', $3, true)",
    )
    .bind(t.to_string())
    .bind(quote_ident(&tenant_schema(t)))
    .bind(timeout.as_millis().max(1).to_string())
    .execute(&mut *tx)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET LOCAL ROLE {}", quote_ident(&tenant_role(t))))).execute(&mut *tx).await?;
    Ok(tx)
}

#[async_trait::async_trait]
impl TenantRelations for PgStore {
    async fn describe(&self, t: TenantId, relation: &str) -> Result<Option<RelationInfo>> {
        let mut tx = reader(&self.pool, t, Duration::from_secs(10)).await.map_err(read_err)?;
        let schema = tenant_schema(t);
        let rows = sqlx::query(
            "SELECT column_name::text AS name, udt_name::text AS type_name, numeric_precision::int4 AS precision, \
                    numeric_scale::int4 AS scale \
             FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
        )
        .bind(&schema)
        .bind(relation)
        .fetch_all(&mut *tx)
        .await
        .map_err(read_err)?;
        if rows.is_empty() {
            return Ok(None);
        }
        let columns = rows
            .iter()
            .map(|r| RelationColumn {
                name: r.get("name"),
                type_name: r.get("type_name"),
                precision: r.get("precision"),
                scale: r.get("scale"),
            })
            .collect();
        let class = sqlx::query(
            "SELECT reltuples, relkind::text AS kind, coalesce(array_to_string(reloptions, ','), '') AS options \
             FROM pg_catalog.pg_class WHERE oid = to_regclass($1)",
        )
        .bind(format!("{}.{}", quote_ident(&schema), quote_ident(relation)))
        .fetch_optional(&mut *tx)
        .await
        .map_err(read_err)?;
        tx.rollback().await.map_err(read_err)?;
        let Some(class) = class else { return Ok(None) };
        // A view reads with its owner's rights unless it is security_invoker: the tenant's role
        // would no longer decide what it reads.
        let options: String = class.get("options");
        if class.get::<String, _>("kind") == "v" && !options.split(',').any(|o| o == "security_invoker=true" || o == "security_invoker=on")
        {
            return Err(MoatError::invalid(
                "view_not_security_invoker",
                format!("view {relation:?} reads with its owner's rights; recreate it WITH (security_invoker = true)"),
            ));
        }
        let estimated_rows: f32 = class.get("reltuples");
        Ok(Some(RelationInfo { columns, estimated_rows: estimated_rows.max(0.0) as i64 }))
    }

    async fn read(&self, t: TenantId, select: String, params: Vec<SqlValue>, timeout: Duration) -> Result<mpsc::Receiver<Result<PgRow>>> {
        let mut tx = reader(&self.pool, t, timeout).await.map_err(read_err)?;
        let (send, rows) = mpsc::channel(ROW_BUFFER);
        tokio::spawn(async move {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(select));
            for p in params {
                q = match p {
                    SqlValue::Int(v) => q.bind(v),
                    SqlValue::Bool(v) => q.bind(v),
                    SqlValue::Text(v) => q.bind(v),
                };
            }
            let mut stream = q.fetch(&mut *tx);
            while let Some(row) = stream.next().await {
                let failed = row.is_err();
                // The reader went away (a limit, a cancel): stop reading; the transaction rolls back.
                if send.send(row.map_err(read_err)).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(rows)
    }
}
