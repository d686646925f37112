//! What PostgreSQL clients expect of a session beyond SQL: a `pg_catalog` (psql's `\dt`, `\d`,
//! `\l`, SQLAlchemy reflection, DBeaver and Metabase introspection) and the functions they call
//! (`current_database()`, `format_type`, `pg_table_is_visible`, …), from
//! `datafusion-pg-catalog`.
//!
//! Tenant scope holds because every dynamic `pg_catalog` table (`pg_class`, `pg_attribute`,
//! `pg_namespace`, `pg_database`, `pg_tables`, `pg_views`) is computed from the session's own
//! catalog, which holds only the caller's tenant's governed tables, under the one database name
//! the caller connected to. The static tables (`pg_type`, `pg_proc`, …) are PostgreSQL's
//! built-in rows, the same for everyone; row counts are never reported (`reltuples` is 0);
//! `pg_database` lists the caller's database alone.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int16Builder, Int32Array, ListBuilder, RecordBatch, StringArray, StringBuilder, new_null_array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, SchemaRef};
use datafusion::catalog::{CatalogProviderList, SchemaProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::{MemTable, TableProvider, TableType, ViewTable, provider_as_source};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility};
use datafusion::prelude::SessionContext;
use datafusion::prelude::{col, lit};
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{self as pgc, PgCatalogSchemaProvider, PgCatalogStaticTables};

/// The session's catalog, shown to `pg_catalog` under the database name the client connected
/// with (the tenant's slug) instead of the engine's internal name.
#[derive(Debug, Clone)]
struct Database {
    inner: Arc<dyn CatalogProviderList>,
    /// The engine's catalog name.
    internal: String,
    /// The name clients see.
    shown: String,
}

impl Database {
    fn internal<'a>(&'a self, catalog_name: &str) -> Option<&'a str> {
        (catalog_name == self.shown).then_some(self.internal.as_str())
    }
}

#[async_trait]
impl CatalogInfo for Database {
    async fn catalog_names(&self) -> Result<Vec<String>, DataFusionError> {
        Ok(vec![self.shown.clone()])
    }

    // Names come sorted: OIDs are handed out in the order of a first visit, so a stable order
    // gives a table the same OID in every statement (see [`warm_oids`]).
    async fn schema_names(&self, catalog_name: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self.internal(catalog_name).and_then(|c| self.inner.catalog(c)).map(|c| sorted(c.schema_names())))
    }

    async fn table_names(&self, catalog_name: &str, schema_name: &str) -> Result<Option<Vec<String>>, DataFusionError> {
        Ok(self
            .internal(catalog_name)
            .and_then(|c| self.inner.catalog(c))
            .and_then(|c| c.schema(schema_name))
            .map(|s| sorted(s.table_names())))
    }

    async fn table_schema(&self, catalog_name: &str, schema_name: &str, table_name: &str) -> Result<Option<SchemaRef>, DataFusionError> {
        match self.internal(catalog_name).and_then(|c| self.inner.catalog(c)).and_then(|c| c.schema(schema_name)) {
            Some(schema) => Ok(schema.table(table_name).await?.map(|t| t.schema())),
            None => Ok(None),
        }
    }

    async fn table_type(&self, catalog_name: &str, schema_name: &str, table_name: &str) -> Result<Option<TableType>, DataFusionError> {
        match self.internal(catalog_name).and_then(|c| self.inner.catalog(c)).and_then(|c| c.schema(schema_name)) {
            Some(schema) => schema.table_type(table_name).await,
            None => Ok(None),
        }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_unstable();
    v
}

/// Columns PostgreSQL types `int2vector` or `int2[]` (key and option positions), which the
/// library's built-in rows carry as text (`1 2`): lists of smallint, so that clients can
/// subscript them (`con.conkey[pos.n]`, PgJDBC's key and index queries).
const SMALL_INT_ARRAYS: &[&str] = &["indkey", "indoption", "conkey", "confkey"];

fn small_int_arrays(name: &str, table: Arc<dyn TableProvider>) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let schema = table.schema();
    let columns: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| {
            let column = col(datafusion::common::Column::from_name(f.name()));
            match SMALL_INT_ARRAYS.contains(&f.name().as_str()) && f.data_type() == &DataType::Utf8 {
                true => ScalarUDF::new_from_impl(SmallIntArray::default()).call(vec![column]).alias(f.name()),
                false => column,
            }
        })
        .collect();
    let plan = LogicalPlanBuilder::scan(name, provider_as_source(table), None)?.project(columns)?.build()?;
    Ok(Arc::new(ViewTable::new(plan, None)))
}

/// Text such as `1 2` or `{1,2}` as a list of smallint (NULL stays NULL).
#[derive(Debug, PartialEq, Eq, Hash)]
struct SmallIntArray {
    signature: Signature,
}

impl Default for SmallIntArray {
    fn default() -> Self {
        Self { signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for SmallIntArray {
    fn name(&self) -> &str {
        "moat_int2vector"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::new_list(DataType::Int16, true))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let Some(texts) = arrays.first() else { return Err(DataFusionError::Plan("moat_int2vector takes one argument".to_owned())) };
        let mut out = ListBuilder::new(Int16Builder::new());
        for text in texts.as_string::<i32>() {
            match text {
                Some(t) => {
                    for n in t.trim_matches(['{', '}']).split([' ', ',']).filter(|n| !n.is_empty()) {
                        out.values().append_option(n.parse::<i16>().ok());
                    }
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `pg_catalog` as the library builds it, but `pg_database` holds the caller's database only
/// (the library always adds a `postgres` row for tools that expect one) and `pg_settings`
/// moat's [`SETTINGS`].
#[derive(Debug)]
struct TenantPgCatalog {
    inner: PgCatalogSchemaProvider<Database, EmptyContextProvider>,
    database: String,
}

#[async_trait]
impl SchemaProvider for TenantPgCatalog {
    fn table_names(&self) -> Vec<String> {
        self.inner.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let table = self.inner.table(name).await?;
        match table {
            Some(t) if name.eq_ignore_ascii_case("pg_database") => {
                let plan = LogicalPlanBuilder::scan("pg_database", provider_as_source(t), None)?
                    .filter(col("datname").eq(lit(self.database.clone())))?
                    .build()?;
                Ok(Some(Arc::new(ViewTable::new(plan, None))))
            }
            Some(t) if name.eq_ignore_ascii_case("pg_settings") => pg_settings(t.schema()).map(Some),
            Some(t) if name.eq_ignore_ascii_case("pg_index") || name.eq_ignore_ascii_case("pg_constraint") => {
                small_int_arrays(name, t).map(Some)
            }
            other => Ok(other),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner.table_exist(name)
    }
}

/// Hands out the OIDs of the session's catalog, schemas and tables in one fixed order (the
/// library numbers them at first sight, per session): run before a statement that reads
/// `pg_catalog`, so that the OID a client got from `pg_class` in one statement names the same
/// table in the next (`\d`, SQLAlchemy and DBeaver join on them).
pub async fn warm_oids(ctx: &SessionContext) -> Result<(), DataFusionError> {
    ctx.sql("SELECT count(*) FROM pg_catalog.pg_class").await?.collect().await?;
    Ok(())
}

/// PostgreSQL's built-in catalog rows, decoded once per process.
fn static_tables() -> Result<Arc<PgCatalogStaticTables>, DataFusionError> {
    static TABLES: OnceLock<Option<Arc<PgCatalogStaticTables>>> = OnceLock::new();
    TABLES
        .get_or_init(|| match PgCatalogStaticTables::try_new() {
            Ok(t) => Some(Arc::new(t)),
            Err(e) => {
                tracing::error!(error = %e, "the built-in pg_catalog tables do not load");
                None
            }
        })
        .clone()
        .ok_or_else(|| DataFusionError::Internal("pg_catalog is unavailable".to_owned()))
}

/// The catalog functions clients call, built once (`current_database()` is per session).
fn functions() -> &'static [ScalarUDF] {
    static UDFS: OnceLock<Vec<ScalarUDF>> = OnceLock::new();
    UDFS.get_or_init(|| {
        use datafusion_pg_catalog::pg_catalog::{array_bounds_udf, format_type, has_privilege_udf, pg_get_expr_udf, quote_ident_udf};
        let mut v = vec![
            pgc::create_current_schema_udf(),
            pgc::create_current_schemas_udf(),
            pgc::create_pg_get_userbyid_udf(),
            pgc::create_pg_table_is_visible(),
            format_type::create_format_type_udf(),
            pgc::create_session_user_udf(),
            pg_get_expr_udf::create_pg_get_expr_udf(),
            pgc::create_pg_get_partkeydef_udf(),
            pgc::create_pg_relation_is_publishable_udf(),
            pgc::create_pg_get_statisticsobjdef_columns_udf(),
            pgc::create_pg_encoding_to_char_udf(),
            pgc::create_pg_backend_pid_udf(),
            pgc::create_pg_relation_size_udf(),
            pgc::create_pg_total_relation_size_udf(),
            pgc::create_pg_stat_get_numscans(),
            pgc::create_pg_get_constraintdef(),
            pgc::create_pg_get_partition_ancestors_udf(),
            quote_ident_udf::create_quote_ident_udf(),
            quote_ident_udf::create_parse_ident_udf(),
            array_bounds_udf::create_array_upper_udf(),
            array_bounds_udf::create_array_lower_udf(),
        ];
        for name in ["has_table_privilege", "has_schema_privilege", "has_database_privilege", "has_any_column_privilege"] {
            v.push(has_privilege_udf::create_has_privilege_udf(name));
        }
        v
    })
}

/// The PostgreSQL version moat speaks as; drivers (SQLAlchemy, JDBC) read it from `version()`.
pub const PG_VERSION: &str = "16.6";

/// The server settings clients read, by PostgreSQL's name, and their values under moat: what
/// `SHOW` answers and what `pg_settings` lists (PgJDBC reads `max_index_keys` there). Output is
/// always UTF-8, ISO dates, UTC; transactions are read-only.
pub const SETTINGS: &[(&str, &str)] = &[
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
    ("standard_conforming_strings", "on"),
    ("client_encoding", "UTF8"),
    ("server_encoding", "UTF8"),
    ("DateStyle", "ISO, MDY"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("search_path", "public"),
    ("integer_datetimes", "on"),
    ("max_identifier_length", "63"),
    ("max_index_keys", "32"),
    ("max_function_args", "100"),
    ("block_size", "8192"),
    ("server_version", PG_VERSION),
    ("server_version_num", "160006"),
    ("is_superuser", "off"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "1"),
    ("lc_collate", "C.UTF-8"),
    ("lc_ctype", "C.UTF-8"),
];

/// A setting by the name a client wrote (any case; `SHOW`'s spaced spellings too).
pub fn setting(written: &str) -> Option<(&'static str, &'static str)> {
    let name = match written.trim().to_ascii_lowercase().as_str() {
        "transaction isolation level" => "transaction_isolation".to_owned(),
        "time zone" => "timezone".to_owned(),
        other => other.to_owned(),
    };
    SETTINGS.iter().find(|(n, _)| n.eq_ignore_ascii_case(&name)).copied()
}

/// `pg_settings` with moat's [`SETTINGS`] (the library's lists one), in the library's columns.
fn pg_settings(schema: SchemaRef) -> Result<Arc<dyn TableProvider>, DataFusionError> {
    let names: Vec<&str> = SETTINGS.iter().map(|(n, _)| *n).collect();
    let values: Vec<&str> = SETTINGS.iter().map(|(_, v)| *v).collect();
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "name" => cast(&StringArray::from(names.clone()), f.data_type()),
            "setting" | "reset_val" | "boot_val" => cast(&StringArray::from(values.clone()), f.data_type()),
            _ => Ok(new_null_array(f.data_type(), SETTINGS.len())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
}

/// `version()` as PostgreSQL words it (DataFusion's own names DataFusion, which drivers reject).
fn version() -> ScalarUDF {
    let text = format!("PostgreSQL {PG_VERSION} (moat {}) on x86_64-pc-linux-gnu, 64-bit", env!("CARGO_PKG_VERSION"));
    datafusion::logical_expr::create_udf(
        "version",
        Vec::new(),
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::Utf8(Some(text.clone()))))),
    )
}

/// Built-in type names and their OIDs, from the static `pg_type`.
fn type_oids() -> &'static HashMap<String, i32> {
    static OIDS: OnceLock<HashMap<String, i32>> = OnceLock::new();
    OIDS.get_or_init(|| {
        let mut oids = HashMap::new();
        let Ok(tables) = static_tables() else { return oids };
        for batch in tables.pg_type.data() {
            let (Some(oid), Some(name)) = (batch.column_by_name("oid"), batch.column_by_name("typname")) else { continue };
            let (Ok(oid), Ok(name)) = (cast(oid, &DataType::Int32), cast(name, &DataType::Utf8)) else { continue };
            let (oid, name) = (oid.as_primitive::<Int32Type>(), name.as_string::<i32>());
            for i in 0..batch.num_rows() {
                if oid.is_valid(i) && name.is_valid(i) {
                    oids.insert(name.value(i).to_owned(), oid.value(i));
                }
            }
        }
        oids
    })
}

/// The `pg_type` name of a type as SQL writes it (`integer` is `int4`).
fn type_name(written: &str) -> String {
    let n = written.trim().trim_matches('"').to_ascii_lowercase();
    let n = n.strip_prefix("pg_catalog.").unwrap_or(&n);
    match n {
        "integer" | "int" => "int4",
        "smallint" => "int2",
        "bigint" => "int8",
        "real" => "float4",
        "double precision" => "float8",
        "boolean" => "bool",
        "character varying" => "varchar",
        "character" | "char" => "bpchar",
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        "time without time zone" => "time",
        "time with time zone" => "timetz",
        "decimal" => "numeric",
        other => other,
    }
    .to_owned()
}

/// `to_regtype(name)`: the OID of a built-in type, or NULL (drivers probe for extension types
/// such as `hstore` this way).
fn to_regtype() -> ScalarUDF {
    datafusion::logical_expr::create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let Some(names) = arrays.first() else { return Err(DataFusionError::Plan("to_regtype takes one argument".to_owned())) };
            let names = cast(names, &DataType::Utf8)?;
            let oids: Int32Array =
                names.as_string::<i32>().iter().map(|n| n.and_then(|n| type_oids().get(&type_name(n)).copied())).collect();
            Ok(ColumnarValue::Array(Arc::new(oids)))
        }),
    )
}

/// A catalog function whose answer under moat is a constant (whatever its arguments).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Constant {
    name: &'static str,
    value: ScalarValue,
    signature: Signature,
}

impl ScalarUDFImpl for Constant {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(self.value.data_type())
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

/// `json_build_object(k1, v1, …)`: a JSON object of text values (introspection queries of
/// SQLAlchemy and DBeaver build identity and collation details with it).
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Plan("json_build_object takes key/value pairs".to_owned()));
        }
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let texts = arrays.iter().map(|a| cast(a, &DataType::Utf8)).collect::<Result<Vec<_>, _>>()?;
        let at = |a: &ArrayRef, row: usize| if a.len() == 1 { 0 } else { row };
        let mut out = StringBuilder::new();
        for row in 0..args.number_rows {
            let mut object = serde_json::Map::new();
            for pair in texts.chunks(2) {
                let (k, v) = (pair[0].as_string::<i32>(), pair[1].as_string::<i32>());
                let (ki, vi) = (at(&pair[0], row), at(&pair[1], row));
                if k.is_null(ki) {
                    continue;
                }
                let value = if v.is_null(vi) { serde_json::Value::Null } else { serde_json::Value::String(v.value(vi).to_owned()) };
                object.insert(k.value(ki).to_owned(), value);
            }
            out.append_value(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `information_schema._pg_expandarray(array)`: in PostgreSQL a set-returning function of
/// `(x, n)` rows. PgJDBC's key and index queries apply it to `pg_index.indkey` and keep the rows
/// whose `x` is a column of the table asked about. moat's tables have no keys or indexes, so it
/// answers a NULL row (PostgreSQL's row type, for planning): those queries find no keys, which
/// is true of every table a client can query. (The built-in catalog tables' own keys are not
/// expanded.)
#[derive(Debug, PartialEq, Eq, Hash)]
struct ExpandArray {
    signature: Signature,
}

impl ScalarUDFImpl for ExpandArray {
    fn name(&self) -> &str {
        "_pg_expandarray"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType, DataFusionError> {
        let element = match args.first() {
            Some(DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _)) => f.data_type().clone(),
            _ => DataType::Int32,
        };
        Ok(DataType::Struct(vec![Field::new("x", element, true), Field::new("n", DataType::Int32, true)].into()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        Ok(ColumnarValue::Array(new_null_array(args.return_type(), args.number_rows)))
    }
}

/// Catalog functions drivers call that moat answers with what is true of it: no serial
/// sequences, every collation visible, no index definitions.
fn stand_ins() -> &'static [ScalarUDF] {
    static UDFS: OnceLock<Vec<ScalarUDF>> = OnceLock::new();
    UDFS.get_or_init(|| {
        let constant =
            |name, value| ScalarUDF::new_from_impl(Constant { name, value, signature: Signature::variadic_any(Volatility::Immutable) });
        vec![
            constant("pg_get_serial_sequence", ScalarValue::Utf8(None)),
            constant("pg_get_indexdef", ScalarValue::Utf8(None)),
            constant("pg_collation_is_visible", ScalarValue::Boolean(Some(true))),
            constant("pg_type_is_visible", ScalarValue::Boolean(Some(true))),
            constant("pg_function_is_visible", ScalarValue::Boolean(Some(true))),
            ScalarUDF::new_from_impl(JsonBuildObject { signature: Signature::variadic_any(Volatility::Immutable) }),
            ScalarUDF::new_from_impl(ExpandArray { signature: Signature::any(1, Volatility::Immutable) }),
        ]
    })
}

/// Installs `pg_catalog` and the catalog functions in `ctx`, whose catalog `internal` is shown
/// to clients as `database`. The session's state must already carry
/// [`datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner`].
pub fn install(ctx: &SessionContext, internal: &str, database: &str) -> Result<(), DataFusionError> {
    let shown = Database { inner: ctx.state().catalog_list().clone(), internal: internal.to_owned(), shown: database.to_owned() };
    let statics = static_tables()?;
    let inner = PgCatalogSchemaProvider::try_new(shown, statics.clone(), EmptyContextProvider)?;
    let provider = TenantPgCatalog { inner, database: database.to_owned() };
    ctx.catalog(internal)
        .ok_or_else(|| DataFusionError::Internal(format!("catalog {internal} is missing")))?
        .register_schema("pg_catalog", Arc::new(provider))?;
    ctx.register_udf(pgc::create_current_database_udf(database));
    ctx.register_udf(version());
    ctx.register_udf(to_regtype());
    for f in stand_ins() {
        ctx.register_udf(f.clone());
    }
    for f in functions() {
        ctx.register_udf(f.clone());
    }
    ctx.register_udtf("pg_get_keywords", statics.pg_get_keywords.clone());
    datafusion_pg_catalog::pg_catalog::generate_series_arg_coercion::CoerceIntArgsToBigInt::widen(ctx);
    Ok(())
}
