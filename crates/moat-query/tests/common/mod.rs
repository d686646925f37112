//! The world the engine tests share: two tenants with the same table names and canary values.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::object_store::ObjectStoreExt;
use datafusion::object_store::path::Path as ObjectPath;
use moat_core::classification::Classification::{self, *};
use moat_core::ids::{Email, TenantId, UserId};
use moat_core::principal::{Principal, Scope};
use moat_core::role::Role;
use moat_query::ingest::{IngestLimits, csv_to_parquet};
use moat_query::policy::{ColumnMeta, MaskingPolicy, PiiCategory};
use moat_query::{Engine, EngineLimits, QueryOutput, TableSource, TableStorage};

pub const RAW_SSN: &str = "123-45-6789";
pub const RAW_EMAIL: &str = "canary.a@acme-secret.com";

pub async fn table(
    storage: &TableStorage,
    tenant: &str,
    name: &str,
    csv: &str,
    meta: &[(&str, Option<Classification>, PiiCategory, &str)],
) -> TableSource {
    let loc = format!("{tenant}/{name}/v1");
    let (r, bytes) = csv_to_parquet(csv.as_bytes(), Vec::new(), &BTreeMap::new(), &IngestLimits::default()).unwrap();
    storage.store().put(&ObjectPath::from(format!("{loc}/part-0.parquet")), bytes.into()).await.unwrap();
    let columns = r
        .schema
        .fields()
        .iter()
        .map(|f| {
            let (_, label, pii, entity) = meta.iter().find(|m| m.0 == f.name()).copied().unwrap_or((f.name(), None, PiiCategory::None, ""));
            ColumnMeta {
                name: f.name().clone(),
                classification: label,
                pii,
                entity: (!entity.is_empty()).then(|| entity.to_owned()),
                mask_override: None,
            }
        })
        .collect();
    TableSource { name: name.into(), location: loc, schema: r.schema, columns, provider: None, keys: None }
}

pub const CUSTOMER_META: &[(&str, Option<Classification>, PiiCategory, &str)] = &[
    ("id", Some(Public), PiiCategory::None, ""),
    ("name", Some(Confidential), PiiCategory::Direct, "person_name"),
    ("email", Some(Confidential), PiiCategory::Direct, "email"),
    ("ssn", Some(Restricted), PiiCategory::Direct, "ssn"),
    ("card", Some(Confidential), PiiCategory::Direct, "credit_card"),
    ("plan", Some(Internal), PiiCategory::None, ""),
    ("revenue", Some(Confidential), PiiCategory::None, ""),
    // zip: unclassified on purpose (counts as RESTRICTED)
];

pub struct World {
    pub storage: TableStorage,
    pub a: Vec<TableSource>,
    pub b: Vec<TableSource>,
    pub ta: TenantId,
    pub tb: TenantId,
}

impl World {
    pub fn engine(&self, limits: EngineLimits) -> Engine {
        Engine::new(limits, self.storage.clone(), None)
    }
}

pub async fn world() -> World {
    let storage = TableStorage::in_memory();
    let a_csv = format!(
        "id,name,email,ssn,card,plan,revenue,zip\n1,Ann Canary,{RAW_EMAIL},{RAW_SSN},4242424242424242,pro,1000,02139\n2,Bob Stone,bob@acme.com,987-65-4321,5555555555554444,free,20,94107\n3,Ann Canary,ann2@acme.com,111-22-3333,4000056655665556,pro,300,94107\n"
    );
    let b_csv = "id,name,email,ssn,card,plan,revenue,zip\n1,Globex Canary,spy@globex-secret.com,999-99-9999,4111111111111111,ent,5,10001\n";
    let a_orders = "order_id,customer_name,amount\n10,Ann Canary,5\n11,Bob Stone,7\n";
    let (ta, tb) = (TenantId::new(), TenantId::new());
    let a = vec![
        table(&storage, "a", "customers", &a_csv, CUSTOMER_META).await,
        table(
            &storage,
            "a",
            "orders",
            a_orders,
            &[
                ("order_id", Some(Public), PiiCategory::None, ""),
                ("customer_name", Some(Confidential), PiiCategory::Direct, "person_name"),
                ("amount", Some(Internal), PiiCategory::None, ""),
            ],
        )
        .await,
    ];
    let b = vec![table(&storage, "b", "customers", b_csv, CUSTOMER_META).await];
    World { storage, a, b, ta, tb }
}

pub fn who(t: TenantId, role: Role) -> Principal {
    Principal::for_tests(Scope::Tenant(t), UserId::new(), Email::parse("x@acme.example").unwrap(), role)
}

pub async fn q(
    engine: &Engine,
    p: &Principal,
    t: TenantId,
    tables: &[TableSource],
    sql: &str,
) -> Result<QueryOutput, moat_core::MoatError> {
    engine.execute(p, t, moat_query::Catalog::tables(tables), &MaskingPolicy::default(), sql).await
}

/// All cells as strings, row-major.
pub fn cells(o: &QueryOutput) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let opts = FormatOptions::default().with_null("NULL");
    for b in &o.batches {
        let fmts: Vec<ArrayFormatter> = b.columns().iter().map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap()).collect();
        for r in 0..b.num_rows() {
            rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    rows
}

pub fn flat(o: &QueryOutput) -> String {
    format!("{:?}", cells(o))
}
