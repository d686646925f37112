//! SQL in, result out: the governed surface as sqllogictest files, one directory per role
//! (`tests/slt/<role>/*.slt`), each file run as that role of tenant A while tenant B holds the
//! same table names with its own canaries. An error reads `<code>: <message>`, so a file asserts
//! the stable code with `statement error <code>`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use common::*;
use datafusion::arrow::datatypes::DataType;
use moat_core::ids::TenantId;
use moat_core::principal::Principal;
use moat_core::role::Role;
use moat_query::policy::MaskingPolicy;
use moat_query::{Engine, EngineLimits, TableSource};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType, Runner};

#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

#[derive(Clone)]
struct Governed {
    engine: Arc<Engine>,
    who: Principal,
    tenant: TenantId,
    tables: Vec<TableSource>,
}

#[async_trait]
impl AsyncDB for Governed {
    type Error = Refused;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Refused> {
        let out = self
            .engine
            .execute(&self.who, self.tenant, moat_query::Catalog::tables(&self.tables), &MaskingPolicy::default(), sql)
            .await
            .map_err(|e| Refused(format!("{}: {}", e.code, e.message)))?;
        let types = out
            .schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                t if t.is_integer() => DefaultColumnType::Integer,
                DataType::Float16 | DataType::Float32 | DataType::Float64 | DataType::Decimal128(..) => DefaultColumnType::FloatingPoint,
                _ => DefaultColumnType::Text,
            })
            .collect();
        let rows =
            cells(&out).into_iter().map(|r| r.into_iter().map(|c| if c.is_empty() { "(empty)".into() } else { c }).collect()).collect();
        Ok(DBOutput::Rows { types, rows })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "moat"
    }
}

fn files(role: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt").join(role);
    let mut out: Vec<PathBuf> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "slt")).collect();
    out.sort();
    out
}

#[tokio::test]
async fn governed_surface() {
    let w = world().await;
    let engine = Arc::new(w.engine(EngineLimits::default()));
    let mut ran = 0;
    for (dir, role) in [("admin", Role::Admin), ("editor", Role::Editor), ("viewer", Role::Viewer)] {
        let files = files(dir);
        assert!(!files.is_empty(), "no .slt files for {dir}");
        for file in files {
            let db = Governed { engine: engine.clone(), who: who(w.ta, role), tenant: w.ta, tables: w.a.clone() };
            let mut runner = Runner::new(move || {
                let db = db.clone();
                async move { Ok::<_, Refused>(db) }
            });
            if let Err(e) = runner.run_file_async(&file).await {
                panic!("{}: {}", file.display(), e.display(false));
            }
            ran += 1;
        }
    }
    assert!(ran >= 3);
}
