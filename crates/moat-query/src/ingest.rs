//! CSV → Parquet, streaming: a bounded sample decides the schema (with explicit overrides), then
//! the rest flows through in record batches, so memory stays bounded whatever the file size.
//! Column names are normalised to SQL-friendly lower_snake_case. Any problem is an error naming
//! the row, column or rule; the caller writes into a fresh version directory and discards it on
//! error, so the previous version stays intact.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Read};
use std::path::Path;
use std::sync::Arc;

use arrow_csv::ReaderBuilder;
use arrow_csv::reader::Format;
use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
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

/// Converts CSV (with a header row) from `input` into one Parquet file at `out`.
/// `overrides` maps a column (as normalised) to a type name.
pub fn csv_to_parquet(
    input: impl Read,
    out: &Path,
    overrides: &BTreeMap<String, String>,
    limits: &IngestLimits,
) -> Result<IngestReport, MoatError> {
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
    if inferred.fields().len() > limits.max_columns {
        return Err(bad("too_many_columns", format!("{} columns; the limit is {}", inferred.fields().len(), limits.max_columns)));
    }
    let mut seen = HashSet::new();
    let mut names = Vec::with_capacity(inferred.fields().len());
    let mut renamed = Vec::new();
    for (i, f) in inferred.fields().iter().enumerate() {
        let n = normalize_column(f.name()).ok_or_else(|| bad("invalid_header", format!("column {} has an empty name", i + 1)))?;
        if !seen.insert(n.clone()) {
            return Err(bad("invalid_header", format!("column {} ({:?}) duplicates an earlier column name", i + 1, f.name())));
        }
        if &n != f.name() {
            renamed.push((f.name().clone(), n.clone()));
        }
        names.push(n);
    }
    for col in overrides.keys() {
        if !names.contains(col) {
            return Err(bad("unknown_column", format!("type override names column {col:?}, which the header does not have")));
        }
    }

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
            Some(t) => parse_type(t).ok_or_else(|| {
                bad("invalid_type", format!("unknown type {t:?} for column {:?}; use text, int, double, bool, date or timestamp", names[i]))
            })?,
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
    let file = File::create(out).map_err(|e| bad("write_failed", format!("cannot create the data file: {e}")))?;
    let props =
        WriterProperties::builder().set_compression(Compression::SNAPPY).set_max_row_group_row_count(Some(limits.row_group_rows)).build();
    let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(|e| bad("write_failed", e.to_string()))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(csv_error)?;
        rows += batch.num_rows() as u64;
        writer.write(&batch).map_err(|e| bad("write_failed", e.to_string()))?;
    }
    if rows == 0 {
        return Err(bad("no_rows", "the CSV has a header but no data rows"));
    }
    writer.close().map_err(|e| bad("write_failed", e.to_string()))?;
    let bytes_written = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
    Ok(IngestReport { schema, rows, bytes_written, renamed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(csv: &str) -> Result<IngestReport, MoatError> {
        let dir = tempfile::tempdir().expect("tmp");
        csv_to_parquet(csv.as_bytes(), &dir.path().join("t.parquet"), &BTreeMap::new(), &IngestLimits::default())
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
        let dir = tempfile::tempdir().expect("tmp");
        let r = csv_to_parquet(bytes.as_slice(), &dir.path().join("t.parquet"), &BTreeMap::new(), &IngestLimits::default());
        assert_eq!(r.err().map(|e| e.code), Some("invalid_csv"));
    }

    #[test]
    fn overrides_apply_and_are_checked() {
        let dir = tempfile::tempdir().expect("tmp");
        let out = dir.path().join("t.parquet");
        let mut o = BTreeMap::new();
        o.insert("id".to_owned(), "text".to_owned());
        let r = csv_to_parquet("id,n\n1,2\n".as_bytes(), &out, &o, &IngestLimits::default()).expect("ok");
        assert_eq!(r.schema.field(0).data_type(), &DataType::Utf8);
        o.insert("n".to_owned(), "int".to_owned());
        o.insert("id".to_owned(), "int".to_owned());
        let e = csv_to_parquet("id,n\nx,2\n".as_bytes(), &out, &o, &IngestLimits::default()).expect_err("does not fit");
        assert_eq!(e.code, "invalid_csv");
        assert!(!e.message.contains("Row data"), "{}", e.message);
        o.clear();
        o.insert("nope".to_owned(), "int".to_owned());
        assert_eq!(csv_to_parquet("id\n1\n".as_bytes(), &out, &o, &IngestLimits::default()).err().map(|e| e.code), Some("unknown_column"));
        o.clear();
        o.insert("id".to_owned(), "money".to_owned());
        assert_eq!(csv_to_parquet("id\n1\n".as_bytes(), &out, &o, &IngestLimits::default()).err().map(|e| e.code), Some("invalid_type"));
    }

    #[test]
    fn many_rows_stream_through() {
        let mut csv = String::from("id,email\n");
        for i in 0..50_000 {
            csv.push_str(&format!("{i},user{i}@example.com\n"));
        }
        let dir = tempfile::tempdir().expect("tmp");
        let limits = IngestLimits { sample_bytes: 4096, ..Default::default() };
        let r = csv_to_parquet(csv.as_bytes(), &dir.path().join("t.parquet"), &BTreeMap::new(), &limits).expect("ingest");
        assert_eq!(r.rows, 50_000);
    }
}
