//! Aligned tables for people, `--json` for scripts.

use comfy_table::{ContentArrangement, Table, presets::UTF8_BORDERS_ONLY};
use serde_json::Value;

pub fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Times stored as Unix seconds, shown as RFC 3339.
pub fn time_cell(v: &Value) -> String {
    match v.as_i64().and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok()) {
        Some(t) => t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| cell(v)),
        None => cell(v),
    }
}

/// Prints `rows` (JSON objects) as a table of `columns`; a column named `*_at` is a time.
pub fn table(rows: &[Value], columns: &[&str]) {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(columns.iter().map(|c| c.to_uppercase()));
    for r in rows {
        t.add_row(columns.iter().map(|c| if c.ends_with("_at") { time_cell(&r[*c]) } else { cell(&r[*c]) }));
    }
    println!("{t}");
}

/// A table with the column names as given (query results: no time formatting).
pub fn table_raw(rows: &[Value], columns: &[&str]) {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY).set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(columns.iter().map(|c| c.to_string()));
    for r in rows {
        t.add_row(columns.iter().map(|c| cell(&r[*c])));
    }
    println!("{t}");
}

/// Key/value pairs of one object.
pub fn record(v: &Value, keys: &[&str]) {
    let width = keys.iter().map(|k| k.len()).max().unwrap_or(0);
    for k in keys {
        let val = if k.ends_with("_at") { time_cell(&v[*k]) } else { cell(&v[*k]) };
        println!("{k:<width$}  {val}");
    }
}

/// A progress bar on standard error when `show` and it is a terminal (hidden otherwise), drawn
/// with `template` (indicatif's syntax).
pub fn progress_bar(show: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    if !show || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()).progress_chars("=> "),
    );
    bar
}
