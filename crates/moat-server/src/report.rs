//! Audit reports: the four questions auditors ask, answered from one tenant's trail over a
//! period.
//!
//! - `access`: who read or wrote what (per actor and object: reads, writes, refusals, rows
//!   returned, columns they saw masked, the addresses they came from, first and last time);
//! - `admin`: every administrative change, by whom, from where, and the business justification
//!   the caller gave (`X-Moat-Justification`);
//! - `failed`: refused and failed attempts per actor and source address, with the patterns that
//!   suggest an attack (bursts, one address trying many accounts, one account tried from many
//!   addresses, repeated permission denials);
//! - `exports`: what left the platform as a file (CSV or Arrow query results, audit exports and
//!   reports), in what format, how many rows and bytes, who asked and why.
//!
//! A report is a fold over the trail's records in sequence order (so every store gives the same
//! answer) up to a stated sequence number, which an auditor can hold against a signed
//! checkpoint. The fold keeps one row per group (or per event for `admin` and `exports`) and
//! refuses to grow past a row limit rather than answer with a silently cut report. Encodings:
//! JSON, CSV and Parquet, from one typed table.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanBuilder, Int64Builder, StringBuilder, TimestampMillisecondBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use moat_core::MoatError;
use moat_store::AuditRecord;
use serde_json::{Value, json};

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportKind {
    Access,
    Admin,
    Failed,
    Exports,
}

impl ReportKind {
    pub const ALL: [Self; 4] = [Self::Access, Self::Admin, Self::Failed, Self::Exports];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Access => "access",
            Self::Admin => "admin",
            Self::Failed => "failed",
            Self::Exports => "exports",
        }
    }

    /// The one category of records the report reads; `None` = every category.
    pub fn category(self) -> Option<&'static str> {
        match self {
            Self::Access | Self::Exports => Some("data_access"),
            Self::Admin => Some("admin"),
            Self::Failed => None,
        }
    }

    pub fn columns(self) -> &'static [Column] {
        match self {
            Self::Access => ACCESS_COLUMNS,
            Self::Admin => ADMIN_COLUMNS,
            Self::Failed => FAILED_COLUMNS,
            Self::Exports => EXPORT_COLUMNS,
        }
    }
}

/// The type of a report column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Text,
    Int,
    /// Milliseconds since the epoch; RFC 3339 in JSON and CSV, a UTC timestamp in Parquet.
    Time,
    Bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
}

const fn col(name: &'static str, ty: ColType) -> Column {
    Column { name, ty }
}

use ColType::{Bool, Int, Text, Time};

const ACCESS_COLUMNS: &[Column] = &[
    col("actor", Text),
    col("role", Text),
    col("object", Text),
    col("reads", Int),
    col("writes", Int),
    col("failed", Int),
    col("denied", Int),
    col("rows_returned", Int),
    col("masked_columns", Text),
    col("source_ips", Text),
    col("first_at", Time),
    col("last_at", Time),
];

const ADMIN_COLUMNS: &[Column] = &[
    col("seq", Int),
    col("at", Time),
    col("actor", Text),
    col("role", Text),
    col("super_admin", Bool),
    col("action", Text),
    col("resource", Text),
    col("outcome", Text),
    col("source_ip", Text),
    col("justification", Text),
    col("details", Text),
];

const FAILED_COLUMNS: &[Column] = &[
    col("actor", Text),
    col("source_ip", Text),
    col("attempts", Int),
    col("failures", Int),
    col("denials", Int),
    col("lockouts", Int),
    col("peak_10min", Int),
    col("ip_actors", Int),
    col("actor_ips", Int),
    col("pattern", Text),
    col("actions", Text),
    col("codes", Text),
    col("first_at", Time),
    col("last_at", Time),
];

const EXPORT_COLUMNS: &[Column] = &[
    col("seq", Int),
    col("at", Time),
    col("actor", Text),
    col("role", Text),
    col("via", Text),
    col("action", Text),
    col("object", Text),
    col("format", Text),
    col("rows", Int),
    col("bytes", Int),
    col("status", Text),
    col("masked_columns", Text),
    col("source_ip", Text),
    col("justification", Text),
    col("reference", Text),
];

/// One value of a report row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Int(i64),
    Time(i64),
    Bool(bool),
}

impl Cell {
    fn text(s: impl Into<String>) -> Self {
        Self::Text(s.into())
    }
    fn opt_text(s: Option<&str>) -> Self {
        s.map_or(Self::Null, Self::text)
    }
    fn opt_int(v: Option<i64>) -> Self {
        v.map_or(Self::Null, Self::Int)
    }
    fn joined<'a>(items: impl IntoIterator<Item = &'a String>) -> Self {
        Self::Text(items.into_iter().map(String::as_str).collect::<Vec<_>>().join(","))
    }
}

pub type Row = Vec<Cell>;

// ------------------------------------------------------------------ reading records

/// Who acted, as a report names them: the e-mail, else the user id, else the channel.
fn actor_name(r: &AuditRecord) -> String {
    let a = &r.actor;
    a["email"]
        .as_str()
        .or_else(|| a["user_id"].as_str())
        .map_or_else(|| format!("({})", a["via"].as_str().unwrap_or("unknown")), str::to_owned)
}

fn actor_str<'a>(r: &'a AuditRecord, key: &str) -> Option<&'a str> {
    r.actor[key].as_str()
}

fn detail_str<'a>(r: &'a AuditRecord, key: &str) -> Option<&'a str> {
    r.details[key].as_str()
}

fn detail_int(r: &AuditRecord, key: &str) -> Option<i64> {
    r.details[key].as_i64()
}

fn detail_strings(r: &AuditRecord, key: &str) -> Vec<String> {
    r.details[key].as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()).unwrap_or_default()
}

/// The error or refusal code a record names, whichever field its action uses.
fn code_of(r: &AuditRecord) -> Option<&str> {
    detail_str(r, "code").or_else(|| detail_str(r, "error")).or_else(|| detail_str(r, "reason"))
}

fn object_of_resource(resource: Option<&str>) -> String {
    let r = resource.unwrap_or("-");
    r.strip_prefix("table:").unwrap_or(r).to_owned()
}

/// Result formats whose answer is a file the caller keeps: the export log lists them.
fn is_file_format(format: Option<&str>) -> bool {
    matches!(format, Some("csv" | "arrow" | "parquet"))
}

/// A query's objects: the tables it read, or `(unresolved)` when it was refused before that
/// was known.
const UNRESOLVED: &str = "(unresolved)";

fn too_large(kind: ReportKind, max: usize) -> MoatError {
    MoatError::bad_request(
        "report_too_large",
        format!("the {} report has more than {max} rows; narrow the period with from and to", kind.as_str()),
    )
}

// ------------------------------------------------------------------ folds

#[derive(Debug, Default)]
struct AccessRow {
    role: Option<String>,
    reads: i64,
    writes: i64,
    failed: i64,
    denied: i64,
    rows: i64,
    masked: BTreeSet<String>,
    ips: BTreeSet<String>,
    first: i64,
    last: i64,
}

#[derive(Debug, Default)]
struct AccessFold {
    groups: BTreeMap<(String, String), AccessRow>,
    /// Streamed queries waiting for their `query.end` (which carries the row count).
    open: HashMap<String, (String, Vec<String>)>,
}

impl AccessFold {
    fn group(&mut self, actor: &str, object: &str, r: &AuditRecord, max: usize) -> Result<&mut AccessRow, MoatError> {
        let key = (actor.to_owned(), object.to_owned());
        if !self.groups.contains_key(&key) && self.groups.len() >= max {
            return Err(too_large(ReportKind::Access, max));
        }
        let g = self.groups.entry(key).or_insert_with(|| AccessRow { first: r.ts_ms, ..AccessRow::default() });
        g.first = g.first.min(r.ts_ms);
        g.last = g.last.max(r.ts_ms);
        if let Some(role) = actor_str(r, "role") {
            g.role = Some(role.to_owned());
        }
        if let Some(ip) = &r.source_ip {
            g.ips.insert(ip.clone());
        }
        Ok(g)
    }

    fn add(&mut self, r: &AuditRecord, max: usize) -> Result<(), MoatError> {
        let actor = actor_name(r);
        let count = |g: &mut AccessRow, write: bool| match r.outcome.as_str() {
            "success" if write => g.writes += 1,
            "success" => g.reads += 1,
            "denied" => g.denied += 1,
            _ => g.failed += 1,
        };
        match r.action.as_str() {
            "query.execute" => {
                let mut tables = detail_strings(r, "tables");
                if tables.is_empty() {
                    tables.push(UNRESOLVED.to_owned());
                }
                let masked = detail_strings(r, "columns_masked");
                for t in &tables {
                    let g = self.group(&actor, t, r, max)?;
                    count(g, false);
                    g.rows += detail_int(r, "rows").unwrap_or(0);
                    let prefix = format!("{t}.");
                    g.masked.extend(masked.iter().filter_map(|c| c.strip_prefix(&prefix)).map(str::to_owned));
                }
                if r.outcome == "success"
                    && detail_int(r, "rows").is_none()
                    && let Some(id) = detail_str(r, "query_id")
                {
                    self.open.insert(id.to_owned(), (actor, tables));
                }
            }
            "query.end" => {
                let Some((actor, tables)) = detail_str(r, "query_id").and_then(|id| self.open.remove(id)) else { return Ok(()) };
                let rows = detail_int(r, "rows").unwrap_or(0);
                for t in &tables {
                    if let Some(g) = self.groups.get_mut(&(actor.clone(), t.clone())) {
                        g.rows += rows;
                    }
                }
            }
            action => {
                let write = action == "table.write";
                let g = self.group(&actor, &object_of_resource(r.resource.as_deref()), r, max)?;
                count(g, write);
            }
        }
        Ok(())
    }

    fn finish(self) -> Vec<Row> {
        self.groups
            .into_iter()
            .map(|((actor, object), g)| {
                vec![
                    Cell::Text(actor),
                    Cell::opt_text(g.role.as_deref()),
                    Cell::Text(object),
                    Cell::Int(g.reads),
                    Cell::Int(g.writes),
                    Cell::Int(g.failed),
                    Cell::Int(g.denied),
                    Cell::Int(g.rows),
                    Cell::joined(&g.masked),
                    Cell::joined(&g.ips),
                    Cell::Time(g.first),
                    Cell::Time(g.last),
                ]
            })
            .collect()
    }
}

fn admin_row(r: &AuditRecord) -> Row {
    let mut details = r.details.clone();
    let justification = details.as_object_mut().and_then(|m| m.remove("justification"));
    let details = match &details {
        Value::Null => String::new(),
        Value::Object(m) if m.is_empty() => String::new(),
        d => d.to_string(),
    };
    vec![
        Cell::Int(r.seq),
        Cell::Time(r.ts_ms),
        Cell::Text(actor_name(r)),
        Cell::opt_text(actor_str(r, "role")),
        Cell::Bool(r.actor["super_admin"].as_bool().unwrap_or(false)),
        Cell::text(&r.action),
        Cell::opt_text(r.resource.as_deref()),
        Cell::text(&r.outcome),
        Cell::opt_text(r.source_ip.as_deref()),
        Cell::opt_text(justification.as_ref().and_then(Value::as_str)),
        Cell::Text(details),
    ]
}

/// Failures within this window of one another count towards a burst.
const BURST_WINDOW_MS: i64 = 10 * 60 * 1000;
/// Failures from one actor and address within [`BURST_WINDOW_MS`] that read as guessing.
pub const BRUTE_FORCE_BURST: i64 = 10;
/// Distinct actors failing from one address that read as credential stuffing.
pub const STUFFING_ACTORS: i64 = 5;
/// Distinct addresses failing for one actor that read as a distributed attempt.
pub const DISTRIBUTED_IPS: i64 = 5;
/// Permission denials of one actor that read as probing for privileges.
pub const PROBING_DENIALS: i64 = 5;

#[derive(Debug, Default)]
struct FailedRow {
    failures: i64,
    denials: i64,
    lockouts: i64,
    peak: i64,
    window: VecDeque<i64>,
    actions: BTreeSet<String>,
    codes: BTreeSet<String>,
    first: i64,
    last: i64,
}

#[derive(Debug, Default)]
struct FailedFold {
    groups: BTreeMap<(String, String), FailedRow>,
}

impl FailedFold {
    fn add(&mut self, r: &AuditRecord, max: usize) -> Result<(), MoatError> {
        let lockout = r.action == "auth.lockout";
        if !lockout && r.outcome == "success" {
            return Ok(());
        }
        let key = (actor_name(r), r.source_ip.clone().unwrap_or_default());
        if !self.groups.contains_key(&key) && self.groups.len() >= max {
            return Err(too_large(ReportKind::Failed, max));
        }
        let g = self.groups.entry(key).or_insert_with(|| FailedRow { first: r.ts_ms, ..FailedRow::default() });
        g.first = g.first.min(r.ts_ms);
        g.last = g.last.max(r.ts_ms);
        if lockout {
            g.lockouts += 1;
            return Ok(());
        }
        if r.outcome == "denied" {
            g.denials += 1;
        } else {
            g.failures += 1;
        }
        g.actions.insert(r.action.clone());
        if let Some(c) = code_of(r) {
            g.codes.insert(c.to_owned());
        }
        // Records arrive in sequence order, which is time order within a trail.
        g.window.push_back(r.ts_ms);
        while g.window.front().is_some_and(|&t| t <= r.ts_ms - BURST_WINDOW_MS) {
            g.window.pop_front();
        }
        g.peak = g.peak.max(g.window.len() as i64);
        Ok(())
    }

    fn finish(self) -> Vec<Row> {
        let mut ip_actors: HashMap<&str, i64> = HashMap::new();
        let mut actor_ips: HashMap<&str, i64> = HashMap::new();
        for ((actor, ip), g) in &self.groups {
            if g.failures + g.denials > 0 {
                *ip_actors.entry(ip.as_str()).or_default() += 1;
                *actor_ips.entry(actor.as_str()).or_default() += 1;
            }
        }
        let mut rows = Vec::with_capacity(self.groups.len());
        for ((actor, ip), g) in &self.groups {
            let by_ip = if ip.is_empty() { 0 } else { ip_actors.get(ip.as_str()).copied().unwrap_or(0) };
            let by_actor = actor_ips.get(actor.as_str()).copied().unwrap_or(0);
            let mut pattern = Vec::new();
            if g.peak >= BRUTE_FORCE_BURST {
                pattern.push("brute_force");
            }
            if by_ip >= STUFFING_ACTORS {
                pattern.push("credential_stuffing");
            }
            if by_actor >= DISTRIBUTED_IPS {
                pattern.push("distributed");
            }
            if g.denials >= PROBING_DENIALS && g.actions.contains("authz.denied") {
                pattern.push("privilege_probing");
            }
            if g.lockouts > 0 {
                pattern.push("lockout");
            }
            rows.push(vec![
                Cell::text(actor),
                if ip.is_empty() { Cell::Null } else { Cell::text(ip) },
                Cell::Int(g.failures + g.denials),
                Cell::Int(g.failures),
                Cell::Int(g.denials),
                Cell::Int(g.lockouts),
                Cell::Int(g.peak),
                Cell::Int(by_ip),
                Cell::Int(by_actor),
                Cell::Text(pattern.join(",")),
                Cell::joined(&g.actions),
                Cell::joined(&g.codes),
                Cell::Time(g.first),
                Cell::Time(g.last),
            ]);
        }
        rows
    }
}

#[derive(Debug, Default)]
struct ExportsFold {
    rows: Vec<Row>,
    /// Streamed results waiting for their `query.end`: row index by query id.
    open: HashMap<String, usize>,
}

/// Column positions in [`EXPORT_COLUMNS`] that a `query.end` fills in.
const EXPORT_ROWS: usize = 8;
const EXPORT_BYTES: usize = 9;
const EXPORT_STATUS: usize = 10;

impl ExportsFold {
    fn add(&mut self, r: &AuditRecord, max: usize) -> Result<(), MoatError> {
        if r.action == "query.end" {
            if let Some(i) = detail_str(r, "query_id").and_then(|id| self.open.remove(id)) {
                let row = &mut self.rows[i];
                row[EXPORT_ROWS] = Cell::opt_int(detail_int(r, "rows"));
                row[EXPORT_BYTES] = Cell::opt_int(detail_int(r, "bytes"));
                let status = match (r.outcome.as_str(), r.details["truncated"].as_bool()) {
                    ("success", Some(true)) => "truncated",
                    ("success", _) => "complete",
                    _ => "cut_off",
                };
                row[EXPORT_STATUS] = Cell::text(status);
            }
            return Ok(());
        }
        if r.outcome != "success" {
            return Ok(());
        }
        let (object, format, status) = match r.action.as_str() {
            "query.execute" if is_file_format(detail_str(r, "format")) => {
                (detail_strings(r, "tables").join(","), detail_str(r, "format").map(str::to_owned), "unknown")
            }
            "audit.export" => ("audit:log".to_owned(), detail_str(r, "format").map(str::to_owned), "complete"),
            "audit.report" => {
                (format!("audit:report:{}", detail_str(r, "report").unwrap_or("?")), detail_str(r, "format").map(str::to_owned), "complete")
            }
            _ => return Ok(()),
        };
        if self.rows.len() >= max {
            return Err(too_large(ReportKind::Exports, max));
        }
        if r.action == "query.execute"
            && let Some(id) = detail_str(r, "query_id")
        {
            self.open.insert(id.to_owned(), self.rows.len());
        }
        self.rows.push(vec![
            Cell::Int(r.seq),
            Cell::Time(r.ts_ms),
            Cell::Text(actor_name(r)),
            Cell::opt_text(actor_str(r, "role")),
            Cell::opt_text(actor_str(r, "via")),
            Cell::text(&r.action),
            Cell::Text(object),
            Cell::opt_text(format.as_deref()),
            Cell::opt_int(detail_int(r, "rows")),
            Cell::opt_int(detail_int(r, "bytes")),
            Cell::text(status),
            Cell::Text(detail_strings(r, "columns_masked").join(",")),
            Cell::opt_text(r.source_ip.as_deref()),
            Cell::opt_text(detail_str(r, "justification")),
            Cell::opt_text(detail_str(r, "query_id")),
        ]);
        Ok(())
    }
}

/// Builds one report from records fed in sequence order.
#[derive(Debug)]
pub struct ReportBuilder {
    fold: Fold,
    max_rows: usize,
    records: u64,
}

#[derive(Debug)]
enum Fold {
    Access(AccessFold),
    Admin(Vec<Row>),
    Failed(FailedFold),
    Exports(ExportsFold),
}

impl ReportBuilder {
    /// A report that refuses (`report_too_large`) to grow past `max_rows` rows.
    pub fn new(kind: ReportKind, max_rows: usize) -> Self {
        let fold = match kind {
            ReportKind::Access => Fold::Access(AccessFold::default()),
            ReportKind::Admin => Fold::Admin(Vec::new()),
            ReportKind::Failed => Fold::Failed(FailedFold::default()),
            ReportKind::Exports => Fold::Exports(ExportsFold::default()),
        };
        Self { fold, max_rows, records: 0 }
    }

    pub fn add(&mut self, r: &AuditRecord) -> Result<(), MoatError> {
        self.records += 1;
        let max = self.max_rows;
        match &mut self.fold {
            Fold::Access(f) => f.add(r, max),
            Fold::Admin(rows) if r.category == "admin" => {
                if rows.len() >= max {
                    return Err(too_large(ReportKind::Admin, max));
                }
                rows.push(admin_row(r));
                Ok(())
            }
            Fold::Admin(_) => Ok(()),
            Fold::Failed(f) => f.add(r, max),
            Fold::Exports(f) => f.add(r, max),
        }
    }

    /// Records read so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn finish(self) -> Vec<Row> {
        match self.fold {
            Fold::Access(f) => f.finish(),
            Fold::Admin(rows) => rows,
            Fold::Failed(f) => f.finish(),
            Fold::Exports(f) => f.rows,
        }
    }
}

// ------------------------------------------------------------------ encodings

/// What a report covers, stated in every encoding.
#[derive(Debug, Clone)]
pub struct ReportMeta {
    pub kind: ReportKind,
    pub trail: String,
    /// Inclusive start and exclusive end of the period, Unix milliseconds.
    pub from_ms: i64,
    pub to_ms: i64,
    pub generated_at_ms: i64,
    /// The trail's size when the report was made: records after it are not in the report.
    pub through_seq: i64,
    /// Records of the period that were read.
    pub records_read: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Json,
    Csv,
    Parquet,
}

impl ReportFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Self::Json),
            "csv" => Some(Self::Csv),
            "parquet" => Some(Self::Parquet),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Csv => "csv",
            Self::Parquet => "parquet",
        }
    }
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }
}

pub use moat_core::clock::rfc3339_ms;

fn cell_json(c: &Cell) -> Value {
    match c {
        Cell::Null => Value::Null,
        Cell::Text(s) => json!(s),
        Cell::Int(i) => json!(i),
        Cell::Time(ms) => json!(rfc3339_ms(*ms)),
        Cell::Bool(b) => json!(b),
    }
}

fn meta_pairs(m: &ReportMeta) -> Vec<(&'static str, String)> {
    vec![
        ("report", m.kind.as_str().to_owned()),
        ("trail", m.trail.clone()),
        ("from", rfc3339_ms(m.from_ms)),
        ("to", rfc3339_ms(m.to_ms)),
        ("generated_at", rfc3339_ms(m.generated_at_ms)),
        ("through_seq", m.through_seq.to_string()),
        ("records_read", m.records_read.to_string()),
    ]
}

/// `{report, trail, from, to, generated_at, through_seq, records_read, columns, rows:[{…}]}`.
pub fn to_json(m: &ReportMeta, rows: &[Row]) -> Value {
    let cols = m.kind.columns();
    let rows: Vec<Value> =
        rows.iter().map(|r| Value::Object(cols.iter().zip(r).map(|(c, v)| (c.name.to_owned(), cell_json(v))).collect())).collect();
    json!({
        "report": m.kind.as_str(),
        "trail": m.trail,
        "from": rfc3339_ms(m.from_ms),
        "to": rfc3339_ms(m.to_ms),
        "generated_at": rfc3339_ms(m.generated_at_ms),
        "through_seq": m.through_seq,
        "records_read": m.records_read,
        "columns": cols.iter().map(|c| json!({"name": c.name, "type": match c.ty {
            Text => "text", Int => "integer", Time => "timestamp", Bool => "boolean" }})).collect::<Vec<_>>(),
        "rows": rows,
    })
}

fn arrow_type(t: ColType) -> DataType {
    match t {
        Text => DataType::Utf8,
        Int => DataType::Int64,
        Time => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        Bool => DataType::Boolean,
    }
}

/// The report as one Arrow batch, its period and coverage in the schema's metadata.
pub fn to_batch(m: &ReportMeta, rows: &[Row]) -> Result<RecordBatch, MoatError> {
    let cols = m.kind.columns();
    let fields: Vec<Field> = cols.iter().map(|c| Field::new(c.name, arrow_type(c.ty), true)).collect();
    let metadata = meta_pairs(m).into_iter().map(|(k, v)| (format!("moat.{k}"), v)).collect();
    let schema = Arc::new(Schema::new_with_metadata(fields, metadata));
    let arrays: Vec<ArrayRef> = cols
        .iter()
        .enumerate()
        .map(|(i, c)| -> ArrayRef {
            let cells = rows.iter().map(|r| r.get(i).unwrap_or(&Cell::Null));
            match c.ty {
                Text => {
                    let mut b = StringBuilder::new();
                    cells.for_each(|v| b.append_option(if let Cell::Text(s) = v { Some(s) } else { None }));
                    Arc::new(b.finish())
                }
                Int => {
                    let mut b = Int64Builder::new();
                    cells.for_each(|v| b.append_option(if let Cell::Int(n) = v { Some(*n) } else { None }));
                    Arc::new(b.finish())
                }
                Time => {
                    let mut b = TimestampMillisecondBuilder::new().with_timezone("UTC");
                    cells.for_each(|v| b.append_option(if let Cell::Time(n) = v { Some(*n) } else { None }));
                    Arc::new(b.finish())
                }
                Bool => {
                    let mut b = BooleanBuilder::new();
                    cells.for_each(|v| b.append_option(if let Cell::Bool(x) = v { Some(*x) } else { None }));
                    Arc::new(b.finish())
                }
            }
        })
        .collect();
    RecordBatch::try_new(schema, arrays).map_err(|e| {
        tracing::error!(error = %e, "report batch");
        MoatError::internal("report_encoding")
    })
}

/// CSV with a header row; times in RFC 3339.
pub fn to_csv(m: &ReportMeta, rows: &[Row]) -> Result<Vec<u8>, MoatError> {
    let batch = to_batch(m, rows)?;
    let mut out = Vec::new();
    let mut w = arrow_csv::WriterBuilder::new().with_header(true).build(&mut out);
    w.write(&batch).map_err(|e| {
        tracing::error!(error = %e, "report csv");
        MoatError::internal("report_encoding")
    })?;
    drop(w);
    Ok(out)
}

/// One Parquet file; the period and coverage are also file key-value metadata.
pub fn to_parquet(m: &ReportMeta, rows: &[Row]) -> Result<Vec<u8>, MoatError> {
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::metadata::KeyValue;
    let batch = to_batch(m, rows)?;
    let failed = |e: datafusion::parquet::errors::ParquetError| {
        tracing::error!(error = %e, "report parquet");
        MoatError::internal("report_encoding")
    };
    let mut out = Vec::new();
    let mut w = ArrowWriter::try_new(&mut out, batch.schema(), None).map_err(failed)?;
    for (k, v) in meta_pairs(m) {
        w.append_key_value_metadata(KeyValue::new(format!("moat.{k}"), v));
    }
    w.write(&batch).map_err(failed)?;
    w.close().map_err(failed)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// A stored record as the store would return it; the category follows from the action as
    /// moat records them.
    fn rec(seq: i64, ts_ms: i64, action: &str, outcome: &str, actor: Value, ip: &str, details: Value) -> AuditRecord {
        let category = match action.split('.').next() {
            Some("auth") => "auth",
            Some("authz") => "authz",
            Some("query" | "audit") => "data_access",
            _ => "admin",
        };
        AuditRecord {
            seq,
            trail: "t".into(),
            ts_ms,
            event_id: format!("e{seq}"),
            category: category.into(),
            action: action.into(),
            outcome: outcome.into(),
            actor,
            resource: None,
            source_ip: (!ip.is_empty()).then(|| ip.to_owned()),
            user_agent: None,
            request_id: None,
            details,
            hash: String::new(),
        }
    }

    fn user(email: &str, role: &str) -> Value {
        json!({"email": email, "role": role, "user_id": "u", "via": "session", "super_admin": false})
    }

    fn build(kind: ReportKind, records: &[AuditRecord]) -> Vec<Row> {
        let mut b = ReportBuilder::new(kind, 1000);
        for r in records {
            b.add(r).unwrap();
        }
        b.finish()
    }

    fn field<'a>(kind: ReportKind, row: &'a Row, name: &str) -> &'a Cell {
        let i = kind.columns().iter().position(|c| c.name == name).unwrap();
        &row[i]
    }

    #[test]
    fn access_groups_queries_per_actor_and_table_and_adds_streamed_rows() {
        let ann = user("ann@a.example", "editor");
        let q = |seq, id: &str, tables: Value, details: Value| {
            let mut d = json!({"query_id": id, "tables": tables, "columns_masked": ["customers.ssn", "orders.card"]});
            d.as_object_mut().unwrap().extend(details.as_object().unwrap().clone());
            rec(seq, seq * 1000, "query.execute", "success", ann.clone(), "10.0.0.1", d)
        };
        let records = vec![
            q(1, "q1", json!(["customers"]), json!({"rows": 10, "format": "json"})),
            q(2, "q2", json!(["customers", "orders"]), json!({"format": "csv"})),
            rec(3, 3000, "query.end", "success", ann.clone(), "10.0.0.2", json!({"query_id": "q2", "rows": 5})),
            rec(4, 4000, "query.execute", "denied", ann.clone(), "10.0.0.2", json!({"query_id": "q3", "error": "x"})),
        ];
        let rows = build(ReportKind::Access, &records);
        assert_eq!(rows.len(), 3, "{rows:?}");
        let k = ReportKind::Access;
        let (unresolved, customers, orders) = (&rows[0], &rows[1], &rows[2]);
        assert_eq!(field(k, unresolved, "object"), &Cell::text(UNRESOLVED));
        assert_eq!(field(k, unresolved, "denied"), &Cell::Int(1));
        assert_eq!(field(k, customers, "object"), &Cell::text("customers"));
        assert_eq!(field(k, customers, "reads"), &Cell::Int(2));
        assert_eq!(field(k, customers, "rows_returned"), &Cell::Int(15));
        assert_eq!(field(k, customers, "masked_columns"), &Cell::text("ssn"));
        assert_eq!(field(k, customers, "source_ips"), &Cell::text("10.0.0.1"));
        assert_eq!(field(k, customers, "first_at"), &Cell::Time(1000));
        assert_eq!(field(k, customers, "last_at"), &Cell::Time(2000));
        assert_eq!(field(k, orders, "rows_returned"), &Cell::Int(5));
        assert_eq!(field(k, orders, "masked_columns"), &Cell::text("card"));
    }

    #[test]
    fn failed_names_bursts_stuffing_distribution_and_probing() {
        let mut records = Vec::new();
        let mut seq = 0;
        let mut push = |action: &str, outcome: &str, actor: Value, ip: &str, ts: i64, d: Value| {
            seq += 1;
            records.push(rec(seq, ts, action, outcome, actor, ip, d));
        };
        // Twelve wrong passwords for ann from one address within two minutes, then a lockout.
        for i in 0..12 {
            push(
                "auth.login",
                "failure",
                json!({"email": "ann@a.example", "via": "anonymous"}),
                "6.6.6.6",
                i * 10_000,
                json!({"reason": "bad_password"}),
            );
        }
        push("auth.lockout", "success", json!({"email": "ann@a.example", "via": "anonymous"}), "6.6.6.6", 130_000, json!({}));
        // One address trying six accounts once each (spread out: no burst).
        for i in 0..6 {
            push(
                "auth.login",
                "failure",
                json!({"email": format!("u{i}@a.example"), "via": "anonymous"}),
                "7.7.7.7",
                i * 3_600_000,
                json!({"reason": "unknown_user"}),
            );
        }
        // bob from five addresses.
        for i in 0..5 {
            push(
                "auth.login",
                "failure",
                json!({"email": "bob@a.example", "via": "anonymous"}),
                &format!("8.8.8.{i}"),
                i * 3_600_000,
                json!({"reason": "bad_password"}),
            );
        }
        // A viewer knocking on admin endpoints; and a success, which is not a failure.
        for i in 0..5 {
            push("authz.denied", "denied", user("eve@a.example", "viewer"), "9.9.9.9", i * 3_600_000, json!({"code": "forbidden"}));
        }
        push("auth.login", "success", user("eve@a.example", "viewer"), "9.9.9.9", 1, json!({}));
        let rows = build(ReportKind::Failed, &records);
        let k = ReportKind::Failed;
        let find = |actor: &str, ip: &str| {
            rows.iter().find(|r| field(k, r, "actor") == &Cell::text(actor) && field(k, r, "source_ip") == &Cell::text(ip)).unwrap()
        };
        let ann = find("ann@a.example", "6.6.6.6");
        assert_eq!(field(k, ann, "attempts"), &Cell::Int(12));
        assert_eq!(field(k, ann, "lockouts"), &Cell::Int(1));
        assert_eq!(field(k, ann, "peak_10min"), &Cell::Int(12));
        assert_eq!(field(k, ann, "pattern"), &Cell::text("brute_force,lockout"));
        assert_eq!(field(k, ann, "codes"), &Cell::text("bad_password"));
        let stuffed = find("u3@a.example", "7.7.7.7");
        assert_eq!(field(k, stuffed, "ip_actors"), &Cell::Int(6));
        assert_eq!(field(k, stuffed, "peak_10min"), &Cell::Int(1));
        assert_eq!(field(k, stuffed, "pattern"), &Cell::text("credential_stuffing"));
        let bob = find("bob@a.example", "8.8.8.4");
        assert_eq!(field(k, bob, "actor_ips"), &Cell::Int(5));
        assert_eq!(field(k, bob, "pattern"), &Cell::text("distributed"));
        let eve = find("eve@a.example", "9.9.9.9");
        assert_eq!(field(k, eve, "denials"), &Cell::Int(5));
        assert_eq!(field(k, eve, "pattern"), &Cell::text("privilege_probing"));
        assert_eq!(rows.len(), 1 + 6 + 5 + 1);
    }

    #[test]
    fn exports_list_file_results_with_their_end_and_skip_interactive_answers() {
        let ann = user("ann@a.example", "editor");
        let records = vec![
            rec(1, 1, "query.execute", "success", ann.clone(), "", json!({"query_id": "a", "format": "json", "rows": 3, "tables": ["t"]})),
            rec(
                2,
                2,
                "query.execute",
                "success",
                ann.clone(),
                "",
                json!({"query_id": "b", "format": "csv", "tables": ["t"], "justification": "quarterly close"}),
            ),
            rec(3, 3, "query.execute", "success", ann.clone(), "", json!({"query_id": "c", "format": "arrow", "tables": ["t"]})),
            rec(4, 4, "query.end", "success", ann.clone(), "", json!({"query_id": "b", "rows": 7, "bytes": 99, "truncated": false})),
            rec(5, 5, "query.end", "failure", ann.clone(), "", json!({"query_id": "c", "rows": 1, "bytes": 9, "error": "x"})),
            rec(6, 6, "audit.export", "success", ann.clone(), "", json!({"format": "moat-audit-bundle/v1"})),
            rec(7, 7, "query.execute", "success", ann.clone(), "", json!({"query_id": "d", "format": "csv", "tables": ["t"]})),
        ];
        let rows = build(ReportKind::Exports, &records);
        let k = ReportKind::Exports;
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(field(k, &rows[0], "rows"), &Cell::Int(7));
        assert_eq!(field(k, &rows[0], "status"), &Cell::text("complete"));
        assert_eq!(field(k, &rows[0], "justification"), &Cell::text("quarterly close"));
        assert_eq!(field(k, &rows[1], "status"), &Cell::text("cut_off"));
        assert_eq!(field(k, &rows[2], "object"), &Cell::text("audit:log"));
        assert_eq!(field(k, &rows[3], "status"), &Cell::text("unknown"));
        assert_eq!(field(k, &rows[3], "rows"), &Cell::Null);
    }

    #[test]
    fn admin_rows_carry_the_justification_apart_from_the_details() {
        let r = rec(
            9,
            5,
            "user.create",
            "success",
            user("root@a.example", "admin"),
            "1.2.3.4",
            json!({"role": "viewer", "justification": "new hire"}),
        );
        let rows = build(ReportKind::Admin, &[r]);
        let k = ReportKind::Admin;
        assert_eq!(field(k, &rows[0], "justification"), &Cell::text("new hire"));
        assert_eq!(field(k, &rows[0], "details"), &Cell::text(r#"{"role":"viewer"}"#));
    }

    #[test]
    fn the_export_columns_a_query_end_fills_are_where_the_fold_writes() {
        let names: Vec<&str> = [EXPORT_ROWS, EXPORT_BYTES, EXPORT_STATUS].iter().map(|&i| EXPORT_COLUMNS[i].name).collect();
        assert_eq!(names, ["rows", "bytes", "status"]);
    }

    #[test]
    fn a_report_past_its_row_limit_is_refused_not_cut() {
        let mut b = ReportBuilder::new(ReportKind::Admin, 2);
        let r = rec(1, 1, "user.create", "success", user("a@a.example", "admin"), "", Value::Null);
        b.add(&r).unwrap();
        b.add(&r).unwrap();
        assert_eq!(b.add(&r).unwrap_err().code, "report_too_large");
    }

    #[test]
    fn every_encoding_carries_every_row_and_the_coverage() {
        let meta = ReportMeta {
            kind: ReportKind::Admin,
            trail: "t".into(),
            from_ms: 0,
            to_ms: 86_400_000,
            generated_at_ms: 86_400_000,
            through_seq: 9,
            records_read: 1,
        };
        let rows =
            build(ReportKind::Admin, &[rec(9, 5, "user.create", "success", user("a@a.example", "admin"), "", json!({"x": "a,\"b\""}))]);
        let j = to_json(&meta, &rows);
        assert_eq!(j["rows"][0]["at"], "1970-01-01T00:00:00.005Z");
        assert_eq!(j["through_seq"], 9);
        let csv = String::from_utf8(to_csv(&meta, &rows).unwrap()).unwrap();
        let mut lines = csv.lines();
        assert_eq!(lines.next().unwrap(), "seq,at,actor,role,super_admin,action,resource,outcome,source_ip,justification,details");
        assert!(lines.next().unwrap().starts_with("9,1970-01-01T00:00:00.005"), "{csv}");
        let pq = to_parquet(&meta, &rows).unwrap();
        assert_eq!(&pq[..4], b"PAR1");
        let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(pq)).unwrap();
        let kv = reader.metadata().file_metadata().key_value_metadata().unwrap().clone();
        assert!(kv.iter().any(|k| k.key == "moat.through_seq" && k.value.as_deref() == Some("9")));
        let batches: Vec<_> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(batches.iter().map(RecordBatch::num_rows).sum::<usize>(), 1);
    }
}
