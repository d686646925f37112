//! Logical backup and restore of a PostgreSQL store's own schema (`moat backup` on
//! PostgreSQL).
//!
//! [`dump`]: the owner role copies every table of schema `moat` out of one database (`COPY …
//! TO STDOUT`, text format, one file per table) inside one `REPEATABLE READ, READ ONLY`
//! transaction in the platform scope, so the files are one moment of that database however
//! long the copy takes, and reads in the same snapshot what an archive needs beside them:
//! the tenants, where their tables' files are, their wrapped data keys, the size of every
//! audit trail. Servers keep serving and writing meanwhile.
//!
//! [`load`]: into a database that holds no moat data (an existing `moat` schema with rows in
//! any table is refused, `backup_target_not_empty`), the migrations first — as this moat knows
//! them —, then every table in an order that satisfies its foreign keys, in one transaction
//! that the caller also uses to re-wrap the data keys and then commits ([`Loaded`]). Dropping
//! a [`Loaded`] without committing leaves the database as the migrations made it. Column lists
//! travel with the rows, so an archive made before a migration that added columns loads into
//! the newer schema (new columns take their defaults); identity sequences are moved past the
//! loaded ids. The audit tables' triggers stay on (they refuse UPDATE and DELETE, not INSERT).
//!
//! `COPY FROM` is refused by PostgreSQL on a table whose row-level security binds the role
//! copying; the owner is bound only because the tables `FORCE` it, so the load lifts `FORCE`
//! for the one statement and sets it again inside the same transaction: nothing commits with
//! it lifted, and no other session sees it lifted.
//!
//! Not carried: relations in tenant schemas (`tenant_{uuid}`), which the platform team loads
//! and backs up with the database's own tools; [`Snapshot::relations`] lists them, and a
//! restore gives every tenant its schema and role again, empty.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use futures::StreamExt;
use moat_core::error::ErrorKind;
use moat_core::ids::TenantId;
use moat_core::{MoatError, Result};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{MIGRATIONS, PLATFORM, begin_in, begin_scoped, connect, db_err, migrate, pg_version, quote_ident, tenant_from_row};
use crate::shared::tenant_key_record;
use crate::{TenantKeyRecord, TenantRecord};

/// What one database's dump holds: the schema version it was made at and its tables, in the
/// order they load.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dump {
    pub schema_version: i64,
    pub tables: Vec<DumpedTable>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DumpedTable {
    /// The table in schema `moat`.
    pub table: String,
    pub columns: Vec<String>,
    pub rows: u64,
}

impl DumpedTable {
    /// The file of its rows inside a dump's directory.
    pub fn file_name(&self) -> String {
        format!("{}.copy", self.table)
    }
}

/// What a dump read, in the dump's own snapshot.
#[derive(Debug)]
pub struct Snapshot {
    pub dump: Dump,
    pub tenants: Vec<TenantRecord>,
    /// Catalog tables: tenant, name, location.
    pub tables: Vec<(TenantId, String, String)>,
    pub keys: Vec<TenantKeyRecord>,
    /// Records per audit trail.
    pub trails: BTreeMap<String, u64>,
    /// Relations in tenant schemas (`schema.relation`): not carried.
    pub relations: Vec<String>,
}

fn io_failed(what: &str, path: &Path, e: std::io::Error) -> MoatError {
    MoatError::unavailable("backup_io", format!("cannot {what} {}: {e}", path.display()))
}

fn no_store() -> MoatError {
    MoatError::invalid("backup_no_store", "the database holds no moat store (no schema moat); check store.admin_url")
}

/// The tables of schema `moat` (but the migrations' own), with their columns and the tables
/// their foreign keys name.
async fn tables(tx: &mut Transaction<'static, Postgres>) -> Result<Vec<(String, Vec<String>, Vec<String>)>> {
    let rows = sqlx::query(
        "SELECT c.relname::text AS name, \
           ARRAY(SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum) AS columns, \
           ARRAY(SELECT DISTINCT f.relname::text FROM pg_constraint k JOIN pg_class f ON f.oid = k.confrelid \
                 WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.confrelid <> c.oid) AS refs \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'moat' AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.relname <> 'schema_migrations' \
         ORDER BY c.relname",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(db_err)?;
    Ok(rows.iter().map(|r| (r.get("name"), r.get("columns"), r.get("refs"))).collect())
}

/// `tables` ordered so that every table comes after those its foreign keys name (by name
/// among the ready ones, so the order is stable).
fn load_order(tables: Vec<(String, Vec<String>, Vec<String>)>) -> Result<Vec<(String, Vec<String>)>> {
    let names: BTreeSet<String> = tables.iter().map(|t| t.0.clone()).collect();
    let mut left: Vec<_> = tables;
    left.sort_by(|a, b| a.0.cmp(&b.0));
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let (ready, rest): (Vec<_>, Vec<_>) =
            left.into_iter().partition(|(_, _, refs)| refs.iter().all(|r| placed.contains(r) || !names.contains(r)));
        if ready.is_empty() {
            let stuck: Vec<_> = rest.iter().map(|t| t.0.as_str()).collect();
            return Err(MoatError::new(
                ErrorKind::Internal,
                "backup_schema_cycle",
                format!("the store's foreign keys form a cycle among {stuck:?}"),
            ));
        }
        for (name, columns, _) in ready {
            placed.insert(name.clone());
            order.push((name, columns));
        }
        left = rest;
    }
    Ok(order)
}

fn column_list(columns: &[String]) -> String {
    columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ")
}

/// Copies the moat schema of the database at `admin_url` (the owner role) into `dir` (one
/// file per table, created owner-only), and reads what the archive needs, all in one snapshot.
pub async fn dump(admin_url: &str, dir: &Path) -> Result<Snapshot> {
    let pool = connect(admin_url, 1).await?;
    let result = dump_in(&pool, dir).await;
    pool.close().await;
    result
}

async fn dump_in(pool: &PgPool, dir: &Path) -> Result<Snapshot> {
    let mut tx = begin_scoped(pool, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", PLATFORM).await.map_err(db_err)?;
    let has_schema: bool =
        sqlx::query_scalar("SELECT to_regclass('moat.schema_migrations') IS NOT NULL").fetch_one(&mut *tx).await.map_err(db_err)?;
    if !has_schema {
        return Err(no_store());
    }
    let schema_version: i64 =
        sqlx::query_scalar("SELECT COALESCE(max(version), 0) FROM moat.schema_migrations").fetch_one(&mut *tx).await.map_err(db_err)?;
    let order = load_order(tables(&mut tx).await?)?;
    tokio::fs::create_dir_all(dir).await.map_err(|e| io_failed("create", dir, e))?;
    let mut dumped = Vec::with_capacity(order.len());
    for (table, columns) in order {
        let mut t = DumpedTable { table, columns, rows: 0 };
        t.rows = copy_out(&mut tx, &t, &dir.join(t.file_name())).await?;
        dumped.push(t);
    }

    let tenants = sqlx::query("SELECT * FROM tenants ORDER BY slug").fetch_all(&mut *tx).await.map_err(db_err)?;
    let tenants: Vec<TenantRecord> = tenants.iter().map(tenant_from_row).collect();
    let tables = sqlx::query("SELECT tenant_id, name, location FROM catalog_tables ORDER BY tenant_id, name")
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| (TenantId(r.get("tenant_id")), r.get("name"), r.get("location")))
        .collect();
    let keys = sqlx::query("SELECT * FROM tenant_keys ORDER BY tenant_id, version")
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| tenant_key_record!(r, TenantId(r.get("tenant_id")), i32))
        .collect::<Result<Vec<_>>>()?;
    let trails = sqlx::query("SELECT trail, size FROM audit_trails ORDER BY trail")
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?
        .iter()
        .map(|r| (r.get::<String, _>("trail"), u64::try_from(r.get::<i64, _>("size")).unwrap_or(0)))
        .collect();
    let relations = sqlx::query_scalar(
        "SELECT n.nspname::text || '.' || c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname LIKE 'tenant\\_%' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition ORDER BY 1",
    )
    .fetch_all(&mut *tx)
    .await
    .map_err(db_err)?;
    tx.rollback().await.map_err(db_err)?;
    Ok(Snapshot { dump: Dump { schema_version, tables: dumped }, tenants, tables, keys, trails, relations })
}

/// Writes one table's rows to `path`; how many.
async fn copy_out(tx: &mut Transaction<'static, Postgres>, t: &DumpedTable, path: &Path) -> Result<u64> {
    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let file = opts.open(path).await.map_err(|e| io_failed("create", path, e))?;
    let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
    let sql = format!("COPY (SELECT {} FROM moat.{}) TO STDOUT", column_list(&t.columns), quote_ident(&t.table));
    let mut stream = tx.copy_out_raw(&sql).await.map_err(db_err)?;
    let mut rows = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(db_err)?;
        // Text format: one line per row (newlines inside values are escaped).
        rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
        out.write_all(&chunk).await.map_err(|e| io_failed("write", path, e))?;
    }
    drop(stream);
    out.flush().await.map_err(|e| io_failed("write", path, e))?;
    out.into_inner().sync_all().await.map_err(|e| io_failed("write", path, e))?;
    Ok(rows)
}

/// A dump loaded into a database, not yet committed.
pub struct Loaded {
    tx: Transaction<'static, Postgres>,
    pool: PgPool,
}

impl Loaded {
    /// Wraps data key `version` of `tenant` anew (a restore's new master key); false when the
    /// loaded rows hold no such live key.
    pub async fn rewrap_tenant_key(&mut self, tenant: TenantId, version: u32, kek: &str, wrapped: &[u8]) -> Result<bool> {
        let r = sqlx::query("UPDATE tenant_keys SET kek = $1, wrapped = $2 WHERE tenant_id = $3 AND version = $4 AND destroyed_at IS NULL")
            .bind(kek)
            .bind(wrapped)
            .bind(tenant.0)
            .bind(pg_version(version))
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn commit(self) -> Result<()> {
        let r = self.tx.commit().await.map_err(db_err);
        self.pool.close().await;
        r
    }
}

/// Loads the dump in `dir` (described by `dump`) into the database at `admin_url` (the owner
/// role), which must hold no moat data; returns the open transaction.
pub async fn load(admin_url: &str, dump: &Dump, dir: &Path) -> Result<Loaded> {
    let newest = MIGRATIONS.last().map_or(0, |m| m.0);
    if dump.schema_version > newest {
        return Err(MoatError::invalid(
            "backup_version_unsupported",
            format!(
                "the archive's store is at schema version {} and this moat knows versions up to {newest}; restore with a newer moat",
                dump.schema_version
            ),
        ));
    }
    let pool = connect(admin_url, 1).await?;
    match load_in(&pool, dump, dir).await {
        Ok(tx) => Ok(Loaded { tx, pool }),
        Err(e) => {
            pool.close().await;
            Err(e)
        }
    }
}

async fn load_in(pool: &PgPool, dump: &Dump, dir: &Path) -> Result<Transaction<'static, Postgres>> {
    refuse_unless_empty(pool, dump).await?;
    migrate(pool).await?;
    let mut tx = begin_in(pool, PLATFORM).await.map_err(db_err)?;
    for t in &dump.tables {
        let table = format!("moat.{}", quote_ident(&t.table));
        let forced: bool = sqlx::query_scalar("SELECT relforcerowsecurity FROM pg_class WHERE oid = to_regclass($1)")
            .bind(&table)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?
            .ok_or_else(|| {
                MoatError::invalid(
                    "backup_version_unsupported",
                    format!("the archive holds table {} which this moat's store does not have", t.table),
                )
            })?;
        if forced {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let path = dir.join(t.file_name());
        let loaded = copy_in(&mut tx, &table, t, &path).await?;
        if loaded != t.rows {
            return Err(MoatError::invalid(
                "backup_corrupt",
                format!("table {}: the archive lists {} rows and holds {loaded}", t.table, t.rows),
            ));
        }
        if forced {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ALTER TABLE {table} FORCE ROW LEVEL SECURITY")))
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        let identities: Vec<String> = sqlx::query_scalar(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = to_regclass($1) AND attidentity <> '' AND NOT attisdropped",
        )
        .bind(&table)
        .fetch_all(&mut *tx)
        .await
        .map_err(db_err)?;
        for col in identities {
            let q = quote_ident(&col);
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), COALESCE(max({q}), 0) + 1, false) FROM {table}"
            )))
            .bind(&table)
            .bind(&col)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        }
    }
    Ok(tx)
}

/// Refuses a database whose moat schema holds rows in any table an archive loads.
async fn refuse_unless_empty(pool: &PgPool, dump: &Dump) -> Result<()> {
    let mut tx = begin_in(pool, PLATFORM).await.map_err(db_err)?;
    for t in &dump.tables {
        let table = format!("moat.{}", quote_ident(&t.table));
        let exists: bool =
            sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(&table).fetch_one(&mut *tx).await.map_err(db_err)?;
        if !exists {
            continue;
        }
        let any: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT EXISTS (SELECT 1 FROM {table})")))
            .fetch_one(&mut *tx)
            .await
            .map_err(db_err)?;
        if any {
            return Err(MoatError::conflict(
                "backup_target_not_empty",
                format!(
                    "the target database already holds moat data (table moat.{} has rows); restore into a new, empty database",
                    t.table
                ),
            ));
        }
    }
    tx.rollback().await.map_err(db_err)
}

/// Sends one table's file to `COPY … FROM STDIN`; the rows loaded.
async fn copy_in(tx: &mut Transaction<'static, Postgres>, table: &str, t: &DumpedTable, path: &Path) -> Result<u64> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| io_failed("read", path, e))?;
    let sql = format!("COPY {table} ({}) FROM STDIN", column_list(&t.columns));
    let mut copy = tx.copy_in_raw(&sql).await.map_err(|e| load_err(e, &t.table))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let _ = copy.abort("the archive's file could not be read").await;
                return Err(io_failed("read", path, e));
            }
        };
        if n == 0 {
            break;
        }
        copy.send(&buf[..n]).await.map_err(|e| load_err(e, &t.table))?;
    }
    copy.finish().await.map_err(|e| load_err(e, &t.table))
}

/// A load the database refused: the table and the SQLSTATE, never the database's message
/// (which may quote a row).
fn load_err(e: sqlx::Error, table: &str) -> MoatError {
    if let sqlx::Error::Database(d) = &e {
        let code = d.code().unwrap_or_default().into_owned();
        tracing::error!(table, sqlstate = %code, error = %e, "a table of the archive could not be loaded");
        return MoatError::invalid(
            "backup_load_failed",
            format!("table moat.{table} of the archive could not be loaded (SQLSTATE {code}); see the log"),
        );
    }
    db_err(e)
}

#[cfg(test)]
mod tests {
    use super::load_order;

    fn t(name: &str, refs: &[&str]) -> (String, Vec<String>, Vec<String>) {
        (name.to_owned(), vec![], refs.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn tables_load_after_those_they_reference() {
        let order = load_order(vec![
            t("api_keys", &["tenants", "users"]),
            t("audit_log", &[]),
            t("sessions", &["tenants", "users"]),
            t("refresh_tokens", &["sessions", "tenants"]),
            t("tenants", &[]),
            t("users", &["tenants"]),
            t("external", &["not_in_moat"]),
        ])
        .expect("acyclic");
        let names: Vec<&str> = order.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["audit_log", "external", "tenants", "users", "api_keys", "sessions", "refresh_tokens"]);
        let e = load_order(vec![t("a", &["b"]), t("b", &["a"])]).expect_err("a cycle");
        assert_eq!(e.code, "backup_schema_cycle");
    }
}
