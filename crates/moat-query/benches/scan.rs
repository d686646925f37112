//! Governed vs raw DataFusion over the same Parquet table: 10M rows (MOAT_BENCH_ROWS to change),
//! three masked columns for the caller (name → hash16, email → email_partial, ssn → last_four).
//! Prints the median of several alternating runs per query and the governed/raw ratio (goal:
//! ≤ 1.10× for the full scan). Then the same governed queries on the same rows written encrypted
//! (the tenant's DEK, Parquet modular encryption, as ingest writes them) against the plaintext
//! file: the cost of encryption at rest (goal: ≤ 1.15× for the full scan).
//! Run: `cargo bench -p moat-query --profile bench-fast --bench scan`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Float64Builder, Int64Builder, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::encryption::encrypt::FileEncryptionProperties;
use datafusion::prelude::{SessionConfig, SessionContext};
use moat_core::classification::Classification;
use moat_core::ids::{Email, TenantId, UserId};
use moat_core::keys::SecretKey;
use moat_core::principal::{Principal, Scope};
use moat_core::role::Role;
use moat_query::crypto::TenantKeyring;
use moat_query::policy::{ColumnMeta, MaskingPolicy, PiiCategory};
use moat_query::{Engine, EngineLimits, TableSource, TableStorage};

const FIRST: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Chris",
    "Karen",
    "Daniel",
    "Lisa",
    "Matthew",
    "Nancy",
    "Anthony",
    "Betty",
    "Mark",
    "Sandra",
    "Donald",
    "Ashley",
    "Steven",
    "Emily",
    "Paul",
    "Kimberly",
    "Andrew",
    "Donna",
    "Joshua",
    "Michelle",
    "Kenneth",
    "Carol",
];
const LAST: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
];
const REGIONS: &[&str] = &["north", "south", "east", "west", "central", "emea", "apac", "latam"];

fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("email", DataType::Utf8, true),
        Field::new("ssn", DataType::Utf8, true),
        Field::new("region", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
    ]))
}

fn write_table(dir: &std::path::Path, rows: usize, encryption: Option<Arc<FileEncryptionProperties>>) {
    let file = std::fs::File::create(dir.join("part-00000.parquet")).unwrap();
    // As ingest writes tables.
    let limits = moat_query::ingest::IngestLimits::default();
    let props = match encryption {
        Some(e) => moat_query::ingest::writer_properties_builder(&limits).with_file_encryption_properties(e).build(),
        None => moat_query::ingest::writer_properties(&limits),
    };
    let mut w = ArrowWriter::try_new(file, schema(), Some(props)).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let batch = 64 * 1024;
    let mut i = 0;
    while i < rows {
        let n = batch.min(rows - i);
        let (mut id, mut name, mut email, mut ssn, mut region, mut amount) = (
            Int64Builder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
            Float64Builder::new(),
        );
        for k in i..i + n {
            let (f, l) = (FIRST[(next() % FIRST.len() as u64) as usize], LAST[(next() % LAST.len() as u64) as usize]);
            id.append_value(k as i64);
            name.append_value(format!("{f} {l}"));
            email.append_value(format!("{}.{}{k}@example.com", f.to_lowercase(), l.to_lowercase()));
            ssn.append_value(format!("{:03}-{:02}-{:04}", 100 + next() % 800, 1 + next() % 98, k % 10_000));
            region.append_value(REGIONS[(next() % REGIONS.len() as u64) as usize]);
            amount.append_value((next() % 100_000) as f64 / 100.0);
        }
        let b = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(id.finish()),
                Arc::new(name.finish()),
                Arc::new(email.finish()),
                Arc::new(ssn.finish()),
                Arc::new(region.finish()),
                Arc::new(amount.finish()),
            ],
        )
        .unwrap();
        w.write(&b).unwrap();
        i += n;
    }
    w.close().unwrap();
}

fn meta(name: &str, label: Classification, pii: PiiCategory, entity: Option<&str>) -> ColumnMeta {
    ColumnMeta { name: name.into(), classification: Some(label), pii, entity: entity.map(Into::into), mask_override: None }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rows: usize = std::env::var("MOAT_BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let runs: usize = std::env::var("MOAT_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().unwrap();
    let table_dir = dir.path().join("t/v1");
    std::fs::create_dir_all(&table_dir).unwrap();
    let t0 = Instant::now();
    write_table(&table_dir, rows, None);
    let size = std::fs::metadata(table_dir.join("part-00000.parquet")).unwrap().len();
    println!("table: {rows} rows, {:.1} MiB Parquet, written in {:.1} s", size as f64 / 1048576.0, t0.elapsed().as_secs_f64());
    // The same rows encrypted under a tenant DEK, as ingest writes them.
    let tenant = TenantId::new();
    let dek1 = SecretKey::generate().unwrap();
    let keyring = Arc::new(TenantKeyring::new(tenant, [(1, dek1.clone())].into(), 1).unwrap());
    let enc_dir = dir.path().join("t/v2");
    std::fs::create_dir_all(&enc_dir).unwrap();
    let t0 = Instant::now();
    write_table(&enc_dir, rows, Some(keyring.encryption_for("t/v2/part-00000.parquet").unwrap()));
    let enc_size = std::fs::metadata(enc_dir.join("part-00000.parquet")).unwrap().len();
    println!("encrypted: {:.1} MiB Parquet, written in {:.1} s", enc_size as f64 / 1048576.0, t0.elapsed().as_secs_f64());

    let partitions = std::thread::available_parallelism().map_or(2, usize::from).min(16);
    // Raw: plain DataFusion on the same file, same parallelism, the same Parquet filter pushdown
    // as the engine (so the ratio is the cost of governance, not of a setting).
    let mut raw_config = SessionConfig::new().with_target_partitions(partitions);
    raw_config.options_mut().execution.parquet.pushdown_filters = true;
    raw_config.options_mut().execution.parquet.reorder_filters = true;
    let raw = SessionContext::new_with_config(raw_config);
    let url = datafusion::datasource::listing::ListingTableUrl::parse(format!("{}/", table_dir.display())).unwrap();
    let opts = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    raw.register_table(
        "t",
        Arc::new(ListingTable::try_new(ListingTableConfig::new(url).with_listing_options(opts).with_schema(schema())).unwrap()),
    )
    .unwrap();

    // Governed: the engine, as a Viewer for whom name, email and ssn are masked.
    let storage = TableStorage::local(dir.path()).unwrap();
    let limits = EngineLimits {
        max_rows: 10_000_000,
        max_result_bytes: 1 << 34,
        timeout_ms: 600_000,
        target_partitions: partitions,
        ..Default::default()
    };
    let engine = Engine::new(limits, storage.clone(), None);
    let who = Principal::for_tests(Scope::Tenant(tenant), UserId::new(), Email::parse("bench@moat.example").unwrap(), Role::Viewer);
    let source = TableSource {
        name: "t".into(),
        location: "t/v1".into(),
        schema: schema(),
        columns: vec![
            meta("id", Classification::Public, PiiCategory::None, None),
            meta("name", Classification::Confidential, PiiCategory::Direct, Some("person_name")),
            meta("email", Classification::Confidential, PiiCategory::Direct, Some("email")),
            meta("ssn", Classification::Confidential, PiiCategory::Direct, Some("ssn")),
            meta("region", Classification::Internal, PiiCategory::None, None),
            meta("amount", Classification::Internal, PiiCategory::None, None),
        ],
        provider: None,
        keys: None,
    };
    let encrypted = [TableSource { location: "t/v2".into(), keys: Some(keyring.clone()), ..source.clone() }];
    let tables = [source];
    let policy = MaskingPolicy::default();

    let queries = [
        ("full scan, every masked value computed", "SELECT max(name), max(email), max(ssn), sum(amount) FROM t"),
        ("full scan, all columns, count", "SELECT count(name), count(DISTINCT region), count(email), count(ssn), sum(amount) FROM t"),
        ("selective filter on an unmasked column", "SELECT id, name, email, ssn FROM t WHERE amount > 999.5"),
        ("aggregate of unmasked columns", "SELECT region, count(*), sum(amount) FROM t GROUP BY region ORDER BY region"),
    ];
    // MOAT_BENCH_EXPLAIN=1: print EXPLAIN ANALYZE of both sides of each query (the governed side
    // as the engine builds it: the Viewer's masks at the scan, same session settings) and stop.
    if std::env::var("MOAT_BENCH_EXPLAIN").is_ok() {
        let mut config = SessionConfig::new().with_target_partitions(partitions);
        config.options_mut().execution.parquet.pushdown_filters = true;
        config.options_mut().execution.parquet.reorder_filters = true;
        let governed = SessionContext::new_with_config(config);
        let url = datafusion::datasource::listing::ListingTableUrl::parse(format!("{}/", table_dir.display())).unwrap();
        let opts = ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let listing =
            Arc::new(ListingTable::try_new(ListingTableConfig::new(url).with_listing_options(opts).with_schema(schema())).unwrap());
        let decisions: Vec<moat_query::MaskDecision> =
            tables[0].columns.iter().map(|c| moat_query::policy::decide(Role::Viewer, Classification::Internal, c, &policy)).collect();
        governed.register_table("t", Arc::new(moat_query::governed::GovernedTable::new(listing, &decisions))).unwrap();
        for (label, sql) in &queries {
            for (side, ctx) in [("raw", &raw), ("moat", &governed)] {
                let out = ctx.sql(&format!("EXPLAIN ANALYZE {sql}")).await.unwrap().collect().await.unwrap();
                println!("--- {label} ({side})\n{}", datafusion::arrow::util::pretty::pretty_format_batches(&out).unwrap());
            }
        }
        return;
    }
    // MOAT_BENCH_QUERY=<words of a label>: only those queries (for profiling one of them).
    let only = std::env::var("MOAT_BENCH_QUERY").unwrap_or_default();
    // MOAT_BENCH_SIDE=raw|moat: run one side only (the ratio is then meaningless).
    let side = std::env::var("MOAT_BENCH_SIDE").unwrap_or_default();
    println!("{:<42} {:>10} {:>10} {:>7}", "query", "raw ms", "moat ms", "ratio");
    for (label, sql) in queries.into_iter().filter(|(l, _)| l.contains(only.as_str())) {
        let (mut r, mut g) = (Vec::new(), Vec::new());
        let (mut raw_rows, mut gov_rows) = (0, 0);
        for i in 0..runs + 1 {
            let s = Instant::now();
            if side != "moat" {
                let out = raw.sql(sql).await.unwrap().collect().await.unwrap();
                raw_rows = out.iter().map(|b| b.num_rows()).sum::<usize>();
            }
            let rt = s.elapsed();
            let s = Instant::now();
            if side != "raw" {
                gov_rows = engine.execute(&who, tenant, moat_query::Catalog::tables(&tables), &policy, sql).await.unwrap().row_count;
            }
            let gt = s.elapsed();
            if i > 0 {
                // The first round warms the page cache.
                r.push(rt);
                g.push(gt);
            }
        }
        if side.is_empty() {
            assert_eq!(raw_rows, gov_rows, "{label}: same number of rows");
        }
        let (r, g) = (median(r), median(g));
        println!("{label:<42} {:>10.1} {:>10.1} {:>6.2}x", r.as_secs_f64() * 1e3, g.as_secs_f64() * 1e3, g.as_secs_f64() / r.as_secs_f64());
    }
    if !side.is_empty() {
        return;
    }
    // Encryption at rest: governed on the plaintext file vs governed on the encrypted one.
    println!("\n{:<42} {:>10} {:>10} {:>7}", "query (governed)", "plain ms", "enc ms", "ratio");
    for (label, sql) in queries.into_iter().filter(|(l, _)| l.contains(only.as_str())) {
        let (mut p, mut e) = (Vec::new(), Vec::new());
        let (mut plain_rows, mut enc_rows) = (0, 0);
        for i in 0..runs + 1 {
            let s = Instant::now();
            plain_rows = engine.execute(&who, tenant, moat_query::Catalog::tables(&tables), &policy, sql).await.unwrap().row_count;
            let pt = s.elapsed();
            let s = Instant::now();
            enc_rows = engine.execute(&who, tenant, moat_query::Catalog::tables(&encrypted), &policy, sql).await.unwrap().row_count;
            let et = s.elapsed();
            if i > 0 {
                p.push(pt);
                e.push(et);
            }
        }
        assert_eq!(plain_rows, enc_rows, "{label}: same number of rows");
        let (p, e) = (median(p), median(e));
        println!("{label:<42} {:>10.1} {:>10.1} {:>6.2}x", p.as_secs_f64() * 1e3, e.as_secs_f64() * 1e3, e.as_secs_f64() / p.as_secs_f64());
    }

    // Data-key rotation's copy of a table, as `rotation::copy_table` makes it: the rows read
    // back under DEK v1 in batches of 8,192, written as a new version under DEK v2.
    let rotated = Arc::new(TenantKeyring::new(tenant, [(1, dek1), (2, SecretKey::generate().unwrap())].into(), 2).unwrap());
    let key = "t/v3/part-00000.parquet";
    let encryption = rotated.encryption_for(key).unwrap();
    let t0 = Instant::now();
    let mut stream = storage.read_rows("t/v2", 8_192, Some(keyring)).await.unwrap();
    let handle = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || {
        use futures::StreamExt;
        let schema = stream.schema();
        let batches =
            std::iter::from_fn(move || handle.block_on(stream.next()).map(|b| b.map_err(|e| moat_query::crypto::read_back_error("t", &e))));
        let limits = moat_query::ingest::IngestLimits::default();
        let prepared = moat_query::ingest::Prepared::from_batches(schema, batches);
        let (report, writer) = moat_query::ingest::write_parquet(prepared, storage.writer(key), &limits, Some(encryption)).unwrap();
        writer.finish().unwrap();
        report
    })
    .await
    .unwrap();
    let took = t0.elapsed().as_secs_f64();
    assert_eq!(report.rows as usize, rows);
    println!(
        "\nre-encryption (rotation's table copy, v1 -> v2): {} rows, {:.1} MB written in {:.1} s = {:.1} MB/s ({:.1} MB/s of encrypted input)",
        report.rows,
        report.bytes_written as f64 / 1e6,
        took,
        report.bytes_written as f64 / 1e6 / took,
        enc_size as f64 / 1e6 / took
    );
}
