//! CSV or Parquet in, Parquet out, streaming: for CSV a bounded sample decides the schema (with
//! explicit overrides); then the rest flows through in record batches, so memory stays bounded
//! whatever the file size. Column names are normalised to SQL-friendly lower_snake_case. Any
//! problem is an error naming the row, column or rule; the caller writes into a fresh version and
//! discards it on error, so the previous version stays intact.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::sync::Arc;

use arrow_csv::ReaderBuilder;
use arrow_csv::reader::Format;
use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::encryption::encrypt::FileEncryptionProperties;
use datafusion::parquet::file::properties::{WriterProperties, WriterPropertiesBuilder};
use moat_core::MoatError;

#[derive(Debug, Clone)]
pub struct IngestLimits {
    pub max_columns: usize,
    /// Bytes read up front to infer the schema.
    pub sample_bytes: usize,
    pub batch_rows: usize,
    pub row_group_rows: usize,
}

impl Default for IngestLimits {
    fn default() -> Self {
        Self { max_columns: 1_000, sample_bytes: 1024 * 1024, batch_rows: 8_192, row_group_rows: 128 * 1024 }
    }
}

#[derive(Debug, Clone)]
pub struct IngestReport {
    pub schema: SchemaRef,
    pub rows: u64,
    pub bytes_written: u64,
    /// (as written in the header, as stored) for every renamed column.
    pub renamed: Vec<(String, String)>,
}

fn bad(code: &'static str, msg: impl Into<String>) -> MoatError {
    MoatError::invalid(code, msg)
}

/// `Customer Name` → `customer_name`; `None` when nothing usable is left.
pub fn normalize_column(name: &str) -> Option<String> {
    let mut out = String::with_capacity(name.len());
    for c in name.trim().chars() {
        if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches('_').to_owned();
    if out.is_empty() {
        return None;
    }
    Some(if out.starts_with(|c: char| c.is_ascii_digit()) { format!("c_{out}") } else { out })
}

/// Type names accepted in overrides.
pub fn parse_type(name: &str) -> Option<DataType> {
    Some(match name.to_ascii_lowercase().as_str() {
        "text" | "string" | "utf8" | "varchar" => DataType::Utf8,
        "int" | "integer" | "bigint" | "int64" => DataType::Int64,
        "double" | "float" | "float64" | "real" => DataType::Float64,
        "bool" | "boolean" => DataType::Boolean,
        "date" => DataType::Date32,
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        _ => return None,
    })
}

/// Strips what arrow appends after an error ("Row data: [...]"): the uploader's values do not
/// belong in messages that may be logged.
fn csv_error(e: impl std::fmt::Display) -> MoatError {
    let msg = e.to_string();
    let msg = msg.split(". Row data").next().unwrap_or(&msg).trim_start_matches("Csv error: ").trim_start_matches("Parser error: ");
    bad("invalid_csv", crate::scrub::scrub(msg))
}

/// A table about to be written: its final schema, the columns renamed on the way, and its
/// batches (pulled one at a time, so memory stays bounded).
pub struct Prepared<'a> {
    pub schema: SchemaRef,
    pub renamed: Vec<(String, String)>,
    batches: Box<dyn Iterator<Item = Result<RecordBatch, MoatError>> + Send + 'a>,
}

impl<'a> Prepared<'a> {
    /// Batches already typed (a table read back to be written again, e.g. re-encrypted).
    pub fn from_batches(schema: SchemaRef, batches: impl Iterator<Item = Result<RecordBatch, MoatError>> + Send + 'a) -> Self {
        Self { schema, renamed: Vec::new(), batches: Box::new(batches) }
    }

    /// Lets `f` see every batch on its way to the writer (to sample rows while importing).
    pub fn inspect<'b>(self, mut f: impl FnMut(&RecordBatch) + Send + 'b) -> Prepared<'b>
    where
        'a: 'b,
    {
        let batches = Box::new(self.batches.inspect(move |b| {
            if let Ok(b) = b {
                f(b);
            }
        }));
        Prepared { schema: self.schema, renamed: self.renamed, batches }
    }
}

/// (as uploaded, as stored) for every renamed column.
pub type Renamed = Vec<(String, String)>;

/// Normalised, unique column names; `renamed` lists (original, stored) for every change.
fn normalize_header<'n>(
    names: impl Iterator<Item = &'n str>,
    overrides: &BTreeMap<String, String>,
    limits: &IngestLimits,
) -> Result<(Vec<String>, Renamed), MoatError> {
    let names: Vec<&str> = names.collect();
    if names.len() > limits.max_columns {
        return Err(bad("too_many_columns", format!("{} columns; the limit is {}", names.len(), limits.max_columns)));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    let mut renamed = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let n = normalize_column(name).ok_or_else(|| bad("invalid_header", format!("column {} has an empty name", i + 1)))?;
        if !seen.insert(n.clone()) {
            return Err(bad("invalid_header", format!("column {} ({name:?}) duplicates an earlier column name", i + 1)));
        }
        if n != *name {
            renamed.push(((*name).to_owned(), n.clone()));
        }
        out.push(n);
    }
    if let Some(col) = overrides.keys().find(|c| !out.contains(c)) {
        return Err(bad("unknown_column", format!("type override names column {col:?}, which the header does not have")));
    }
    Ok((out, renamed))
}

fn override_type(column: &str, t: &str) -> Result<DataType, MoatError> {
    parse_type(t).ok_or_else(|| {
        bad("invalid_type", format!("unknown type {t:?} for column {column:?}; use text, int, double, bool, date or timestamp"))
    })
}

/// Reads CSV with a header row. `overrides` maps a column (as normalised) to a type name.
pub fn read_csv<'a>(
    input: impl Read + Send + 'a,
    overrides: &BTreeMap<String, String>,
    limits: &IngestLimits,
) -> Result<Prepared<'a>, MoatError> {
    let mut input = BufReader::new(input);
    // A sample of whole lines.
    let mut sample = Vec::with_capacity(limits.sample_bytes.min(1 << 20));
    (&mut input)
        .take(limits.sample_bytes as u64)
        .read_to_end(&mut sample)
        .map_err(|e| bad("read_failed", format!("cannot read the body: {e}")))?;
    if sample.len() == limits.sample_bytes {
        input.read_until(b'\n', &mut sample).map_err(|e| bad("read_failed", format!("cannot read the body: {e}")))?;
    }
    if sample.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("empty_csv", "the body is empty; send a header row and data rows"));
    }
    let header_line = sample.split(|b| *b == b'\n').next().unwrap_or_default();
    if std::str::from_utf8(header_line).is_err() {
        return Err(bad("invalid_utf8", "the header row is not valid UTF-8"));
    }

    let (inferred, _) = Format::default().with_header(true).infer_schema(Cursor::new(&sample), Some(10_000)).map_err(csv_error)?;
    let (names, renamed) = normalize_header(inferred.fields().iter().map(|f| f.name().as_str()), overrides, limits)?;

    // Numbers written with leading zeros (ZIP codes, account numbers) are codes: keep them text.
    let text_schema =
        Arc::new(Schema::new(inferred.fields().iter().map(|f| Field::new(f.name(), DataType::Utf8, true)).collect::<Vec<_>>()));
    let mut leading_zero = vec![false; names.len()];
    let sample_reader = ReaderBuilder::new(text_schema)
        .with_header(true)
        .with_batch_size(limits.batch_rows)
        .build(Cursor::new(&sample))
        .map_err(csv_error)?;
    for batch in sample_reader {
        let Ok(batch) = batch else { break };
        for (i, flag) in leading_zero.iter_mut().enumerate() {
            if let Some(col) = batch.column(i).as_any().downcast_ref::<StringArray>() {
                *flag |= col
                    .iter()
                    .flatten()
                    .any(|v| v.len() > 1 && v.starts_with('0') && !v.starts_with("0.") && v.chars().all(|c| c.is_ascii_digit()));
            }
        }
    }
    let mut fields = Vec::with_capacity(names.len());
    for (i, f) in inferred.fields().iter().enumerate() {
        let ty = match overrides.get(&names[i]) {
            Some(t) => override_type(&names[i], t)?,
            None if leading_zero[i] && matches!(f.data_type(), DataType::Int64 | DataType::Float64) => DataType::Utf8,
            None => f.data_type().clone(),
        };
        fields.push(Field::new(&names[i], ty, true));
    }
    let schema = Arc::new(Schema::new(fields));

    let reader = ReaderBuilder::new(schema.clone())
        .with_header(true)
        .with_batch_size(limits.batch_rows)
        .build(Cursor::new(sample).chain(input))
        .map_err(csv_error)?;
    Ok(Prepared { schema, renamed, batches: Box::new(reader.map(|b| b.map_err(csv_error))) })
}

/// The type a Parquet column is stored as, or `None` when moat cannot serve it.
fn storable(t: &DataType) -> Option<DataType> {
    use DataType::*;
    Some(match t {
        Boolean | Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float32 | Float64 | Date32 | Utf8 | Binary => t.clone(),
        Decimal128(..) | Decimal256(..) | Timestamp(..) | Time32(_) | Time64(_) => t.clone(),
        Float16 => Float32,
        Date64 => Date32,
        Null | LargeUtf8 | Utf8View => Utf8,
        LargeBinary | BinaryView | FixedSizeBinary(_) => Binary,
        Dictionary(_, v) => return storable(v),
        _ => return None,
    })
}

fn parquet_error(e: impl std::fmt::Display) -> MoatError {
    bad("invalid_parquet", format!("the body is not a readable Parquet file: {}", crate::scrub::scrub(&e.to_string())))
}

/// Reads a Parquet file (spooled to disk: Parquet keeps its index at the end). Nested columns
/// are refused; others are stored as the nearest type moat serves, or as overridden.
pub fn read_parquet(file: File, overrides: &BTreeMap<String, String>, limits: &IngestLimits) -> Result<Prepared<'static>, MoatError> {
    if file.metadata().map(|m| m.len()).unwrap_or(0) == 0 {
        return Err(bad("empty_parquet", "the body is empty; send a Parquet file"));
    }
    let builder = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ParquetRecordBatchReaderBuilder::try_new(file)))
        .map_err(|_| parquet_error("malformed metadata"))?
        .map_err(parquet_error)?;
    let source = builder.schema().clone();
    let (names, renamed) = normalize_header(source.fields().iter().map(|f| f.name().as_str()), overrides, limits)?;
    if builder.metadata().file_metadata().num_rows() == 0 {
        return Err(bad("no_rows", "the Parquet file has a schema but no rows"));
    }
    let mut fields = Vec::with_capacity(names.len());
    for (f, name) in source.fields().iter().zip(&names) {
        let ty = match overrides.get(name) {
            Some(t) => override_type(name, t)?,
            None => storable(f.data_type()).ok_or_else(|| {
                bad("unsupported_type", format!("column {name:?} has type {}, which moat cannot serve; flatten it first", f.data_type()))
            })?,
        };
        fields.push(Field::new(name, ty, true));
    }
    let schema = Arc::new(Schema::new(fields));
    let reader = builder.with_batch_size(limits.batch_rows).build().map_err(parquet_error)?;
    let out = schema.clone();
    let options = CastOptions { safe: false, ..Default::default() };
    let mut reader = reader.fuse();
    let batches = std::iter::from_fn(move || {
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reader.next()))
            .unwrap_or_else(|_| Some(Err(datafusion::arrow::error::ArrowError::ParquetError("malformed data page".into()))))?;
        Some(next.map_err(parquet_error).and_then(|b| {
            let mut columns = Vec::with_capacity(b.num_columns());
            for (c, f) in b.columns().iter().zip(out.fields()) {
                if c.data_type() == f.data_type() {
                    columns.push(c.clone());
                } else {
                    columns.push(cast_with_options(c, f.data_type(), &options).map_err(|_| {
                        bad("type_mismatch", format!("column {:?}: a value does not fit type {}", f.name(), f.data_type()))
                    })?);
                }
            }
            RecordBatch::try_new(out.clone(), columns).map_err(parquet_error)
        }))
    });
    Ok(Prepared { schema, renamed, batches: Box::new(batches) })
}

/// Counts what passes through.
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Rows per data page at most. Pages carry min/max in the page index, so a selective filter on
/// a raw column decodes (and decompresses) only the pages that can hold its rows: with the
/// writer's default of 1 MiB pages a point lookup decompressed tens of thousands of rows of
/// every text column it returns.
pub const PAGE_ROWS: usize = 8 * 1024;

/// Largest dictionary page per column chunk. A column with more distinct values than fit falls
/// back to plain pages; every read of a chunk decompresses its whole dictionary page, so a big
/// one (the writer's default is 1 MiB) made each point lookup decompress megabytes of names.
pub const DICTIONARY_PAGE_BYTES: usize = 128 * 1024;

/// How tables are written: Snappy, row groups of `row_group_rows`, pages of [`PAGE_ROWS`] rows,
/// dictionaries of at most [`DICTIONARY_PAGE_BYTES`], statistics and page index on every column.
pub fn writer_properties(limits: &IngestLimits) -> WriterProperties {
    writer_properties_builder(limits).build()
}

/// [`writer_properties`] before `build`, for writers that add to it (file encryption).
pub fn writer_properties_builder(limits: &IngestLimits) -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(limits.row_group_rows))
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
}

/// Writes the batches as one Parquet file into `out`, encrypted when `encryption` is given
/// (see [`crate::crypto`]); returns the report and `out` (to be completed by the caller).
pub fn write_parquet<W: Write + Send>(
    p: Prepared<'_>,
    out: W,
    limits: &IngestLimits,
    encryption: Option<Arc<FileEncryptionProperties>>,
) -> Result<(IngestReport, W), MoatError> {
    let props = match encryption {
        Some(e) => writer_properties_builder(limits).with_file_encryption_properties(e).build(),
        None => writer_properties(limits),
    };
    let write_err = |e: datafusion::parquet::errors::ParquetError| bad("write_failed", e.to_string());
    let mut writer = ArrowWriter::try_new(Counting { inner: out, n: 0 }, p.schema.clone(), Some(props)).map_err(write_err)?;
    let mut rows = 0u64;
    for batch in p.batches {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        writer.write(&batch).map_err(write_err)?;
    }
    if rows == 0 {
        return Err(bad("no_rows", "the table has a header but no data rows"));
    }
    let counting = writer.into_inner().map_err(write_err)?;
    Ok((IngestReport { schema: p.schema, rows, bytes_written: counting.n, renamed: p.renamed }, counting.inner))
}

/// CSV in, Parquet out: [`read_csv`] then [`write_parquet`].
pub fn csv_to_parquet<W: Write + Send>(
    input: impl Read + Send,
    out: W,
    overrides: &BTreeMap<String, String>,
    limits: &IngestLimits,
) -> Result<(IngestReport, W), MoatError> {
    write_parquet(read_csv(input, overrides, limits)?, out, limits, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(csv: &str) -> Result<IngestReport, MoatError> {
        run_with(csv.as_bytes(), &BTreeMap::new())
    }

    fn run_with(csv: &[u8], o: &BTreeMap<String, String>) -> Result<IngestReport, MoatError> {
        csv_to_parquet(csv, Vec::new(), o, &IngestLimits::default()).map(|(r, _)| r)
    }

    #[test]
    fn infers_normalises_and_keeps_codes_as_text() {
        let r = run("ID,Customer Name,zip,score\n1,Ann,02139,0.5\n2,Bob,94107,0.7\n").expect("ingest");
        let f: Vec<(String, DataType)> = r.schema.fields().iter().map(|f| (f.name().clone(), f.data_type().clone())).collect();
        assert_eq!(
            f,
            vec![
                ("id".into(), DataType::Int64),
                ("customer_name".into(), DataType::Utf8),
                ("zip".into(), DataType::Utf8),
                ("score".into(), DataType::Float64)
            ]
        );
        assert_eq!(r.rows, 2);
        assert!(r.bytes_written > 0);
        assert!(r.renamed.contains(&("Customer Name".into(), "customer_name".into())));
    }

    #[test]
    fn bad_input_is_named() {
        let code = |csv: &str| run(csv).err().map(|e| e.code);
        assert_eq!(code(""), Some("empty_csv"));
        assert_eq!(code("a,b\n"), Some("no_rows"));
        assert_eq!(code("a,a\n1,2\n"), Some("invalid_header"));
        assert_eq!(code("a,\n1,2\n"), Some("invalid_header"));
        let e = run("a,b\n1,2\n3\n").expect_err("ragged");
        assert_eq!(e.code, "invalid_csv");
        assert!(e.message.contains("line"), "{}", e.message);
        assert_eq!(run("a,b\n1,\u{0}\n").map(|r| r.rows).ok(), Some(1));
        let mut bytes = b"a,b\n1,".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
        assert_eq!(run_with(&bytes, &BTreeMap::new()).err().map(|e| e.code), Some("invalid_csv"));
        let limits = IngestLimits { max_columns: 2, ..Default::default() };
        let e = csv_to_parquet("a,b,c\n1,2,3\n".as_bytes(), Vec::new(), &BTreeMap::new(), &limits).expect_err("too wide");
        assert_eq!(e.code, "too_many_columns");
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let mut o = BTreeMap::new();
        o.insert("id".to_owned(), "text".to_owned());
        let r = run_with(b"id,n\n1,2\n", &o).expect("ok");
        assert_eq!(r.schema.field(0).data_type(), &DataType::Utf8);
        o.insert("n".to_owned(), "int".to_owned());
        o.insert("id".to_owned(), "int".to_owned());
        let e = run_with(b"id,n\nx,2\n", &o).expect_err("does not fit");
        assert_eq!(e.code, "invalid_csv");
        assert!(!e.message.contains("Row data"), "{}", e.message);
        o.clear();
        o.insert("nope".to_owned(), "int".to_owned());
        assert_eq!(run_with(b"id\n1\n", &o).err().map(|e| e.code), Some("unknown_column"));
        o.clear();
        o.insert("id".to_owned(), "money".to_owned());
        assert_eq!(run_with(b"id\n1\n", &o).err().map(|e| e.code), Some("invalid_type"));
    }

    #[test]
    fn many_rows_stream_through() {
        let mut csv = String::from("id,email\n");
        for i in 0..50_000 {
            csv.push_str(&format!("{i},user{i}@example.com\n"));
        }
        let limits = IngestLimits { sample_bytes: 4096, ..Default::default() };
        let (r, _) = csv_to_parquet(csv.as_bytes(), Vec::new(), &BTreeMap::new(), &limits).expect("ingest");
        assert_eq!(r.rows, 50_000);
    }

    /// A Parquet file written by another tool, as bytes in a temp file.
    fn parquet_file(batch: &RecordBatch) -> File {
        let mut f = tempfile::tempfile().expect("tmp");
        let mut w = ArrowWriter::try_new(&mut f, batch.schema(), None).expect("writer");
        w.write(batch).expect("write");
        w.close().expect("close");
        f
    }

    fn read_back(bytes: Vec<u8>) -> Vec<RecordBatch> {
        let r = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).expect("parquet").build().expect("reader");
        r.collect::<Result<Vec<_>, _>>().expect("batches")
    }

    #[test]
    fn parquet_types_are_stored_as_served_types() {
        use datafusion::arrow::array::{
            Date64Array, DictionaryArray, Float16Array, Int32Array, LargeStringArray, StringViewArray, TimestampMillisecondArray,
        };
        use datafusion::arrow::datatypes::Int8Type;
        let dict: DictionaryArray<Int8Type> = vec!["a", "b", "a"].into_iter().collect();
        let batch = RecordBatch::try_from_iter(vec![
            ("Id", Arc::new(Int32Array::from(vec![1, 2, 3])) as _),
            ("Big Text", Arc::new(LargeStringArray::from(vec!["x", "y", "z"])) as _),
            ("view", Arc::new(StringViewArray::from(vec!["p", "q", "r"])) as _),
            ("plan", Arc::new(dict) as _),
            ("h", Arc::new(Float16Array::from(vec![half::f16::from_f32(1.5); 3])) as _),
            ("d", Arc::new(Date64Array::from(vec![86_400_000; 3])) as _),
            ("ts", Arc::new(TimestampMillisecondArray::from(vec![1_000; 3]).with_timezone("UTC")) as _),
        ])
        .expect("batch");
        let p = read_parquet(parquet_file(&batch), &BTreeMap::new(), &IngestLimits::default()).expect("read");
        let types: Vec<String> = p.schema.fields().iter().map(|f| format!("{}:{}", f.name(), f.data_type())).collect();
        let (r, bytes) = write_parquet(p, Vec::new(), &IngestLimits::default(), None).expect("write");
        assert_eq!(r.rows, 3);
        assert_eq!(r.renamed, vec![("Id".to_owned(), "id".to_owned()), ("Big Text".to_owned(), "big_text".to_owned())]);
        assert_eq!(types[..6], ["id:Int32", "big_text:Utf8", "view:Utf8", "plan:Utf8", "h:Float32", "d:Date32"]);
        let back = read_back(bytes);
        assert_eq!(back[0].column(3).as_any().downcast_ref::<StringArray>().expect("text").value(2), "a");
        // Every stored type survives the catalog's text form.
        for f in r.schema.fields() {
            let text = f.data_type().to_string();
            assert_eq!(text.parse::<DataType>().ok().as_ref(), Some(f.data_type()), "{text}");
        }
    }

    #[test]
    fn bad_parquet_is_named() {
        use datafusion::arrow::array::{Int64Array, ListArray, StringArray};
        use datafusion::arrow::datatypes::Int32Type;
        let limits = IngestLimits::default();
        let code = |f: File, o: &BTreeMap<String, String>| read_parquet(f, o, &limits).err().map(|e| e.code);
        let empty = tempfile::tempfile().expect("tmp");
        assert_eq!(code(empty, &BTreeMap::new()), Some("empty_parquet"));
        let mut garbage = tempfile::tempfile().expect("tmp");
        garbage.write_all(b"id,name\n1,not parquet at all\n").expect("write");
        assert_eq!(code(garbage, &BTreeMap::new()), Some("invalid_parquet"));
        // A real file cut short.
        let batch = RecordBatch::try_from_iter(vec![("id", Arc::new(Int64Array::from(vec![1, 2])) as _)]).expect("batch");
        let mut whole = Vec::new();
        let mut w = ArrowWriter::try_new(&mut whole, batch.schema(), None).expect("writer");
        w.write(&batch).expect("write");
        w.close().expect("close");
        let mut cut = tempfile::tempfile().expect("tmp");
        cut.write_all(&whole[..whole.len() / 2]).expect("write");
        assert_eq!(code(cut, &BTreeMap::new()), Some("invalid_parquet"));
        let list = ListArray::from_iter_primitive::<Int32Type, _, _>(vec![Some(vec![Some(1)]), None]);
        let nested = RecordBatch::try_from_iter(vec![("tags", Arc::new(list) as _)]).expect("batch");
        let e = read_parquet(parquet_file(&nested), &BTreeMap::new(), &limits).err().expect("nested");
        assert_eq!(e.code, "unsupported_type");
        assert!(e.message.contains("\"tags\""), "{}", e.message);
        let dup = RecordBatch::try_from_iter(vec![
            ("A", Arc::new(Int64Array::from(vec![1])) as _),
            ("a", Arc::new(Int64Array::from(vec![1])) as _),
        ])
        .expect("batch");
        assert_eq!(code(parquet_file(&dup), &BTreeMap::new()), Some("invalid_header"));
        let text = RecordBatch::try_from_iter(vec![("n", Arc::new(StringArray::from(vec!["1", "secret-value"])) as _)]).expect("batch");
        let mut o = BTreeMap::new();
        o.insert("n".to_owned(), "int".to_owned());
        let p = read_parquet(parquet_file(&text), &o, &limits).expect("schema is fine");
        let e = write_parquet(p, Vec::new(), &limits, None).expect_err("value does not fit");
        assert_eq!(e.code, "type_mismatch");
        assert!(!e.message.contains("secret-value"), "{}", e.message);
        let none = RecordBatch::new_empty(batch.schema());
        assert_eq!(code(parquet_file(&none), &BTreeMap::new()), Some("no_rows"));
    }
}
