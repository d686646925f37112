//! The SQL surface: one read-only statement (SELECT / WITH / VALUES), EXPLAIN only for callers
//! allowed to see plans. Parsed here with a bounded recursion depth before DataFusion plans
//! anything; DataFusion's `SQLOptions` then refuse DDL, DML and statements a second time.

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::parser::ParserError;
use moat_core::MoatError;

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    Select,
    Explain,
}

fn refused(what: &str) -> MoatError {
    MoatError::forbidden("statement_not_allowed", format!("{what} is not allowed: moat runs read-only queries (SELECT, WITH, VALUES)"))
}

/// Checks length, depth and statement kind.
pub fn check(sql: &str, max_sql_bytes: usize, max_depth: usize, may_explain: bool) -> Result<QueryKind, MoatError> {
    if sql.trim().is_empty() {
        return Err(MoatError::bad_request("empty_query", "sql is empty"));
    }
    if sql.len() > max_sql_bytes {
        return Err(MoatError::new(
            moat_core::ErrorKind::PayloadTooLarge,
            "query_too_long",
            format!("sql is {} bytes; the limit is {max_sql_bytes}", sql.len()),
        ));
    }
    let mut parser = DFParserBuilder::new(sql).with_recursion_limit(max_depth).build().map_err(syntax)?;
    let statements = parser.parse_statements().map_err(syntax)?;
    if statements.len() != 1 {
        return Err(MoatError::bad_request("multiple_statements", format!("send one statement at a time (got {})", statements.len())));
    }
    let Some(stmt) = statements.front() else { return Err(MoatError::bad_request("empty_query", "sql is empty")) };
    match stmt {
        DfStatement::Statement(s) => match s.as_ref() {
            Statement::Query(_) => Ok(QueryKind::Select),
            other => Err(refused(statement_name(other))),
        },
        DfStatement::Explain(e) => {
            if !may_explain {
                return Err(MoatError::forbidden("explain_not_allowed", "EXPLAIN needs the query:explain permission"));
            }
            match e.statement.as_ref() {
                DfStatement::Statement(s) if matches!(s.as_ref(), Statement::Query(_)) => Ok(QueryKind::Explain),
                _ => Err(refused("EXPLAIN of anything but a query")),
            }
        }
        DfStatement::CreateExternalTable(_) => Err(refused("CREATE EXTERNAL TABLE")),
        DfStatement::CopyTo(_) => Err(refused("COPY")),
        DfStatement::Reset(_) => Err(refused("RESET")),
    }
}

fn syntax(e: DataFusionError) -> MoatError {
    let msg = match &e {
        DataFusionError::SQL(p, _) => match p.as_ref() {
            ParserError::RecursionLimitExceeded => return MoatError::bad_request("query_too_deep", "sql is nested too deeply"),
            ParserError::ParserError(m) | ParserError::TokenizerError(m) => m.clone(),
        },
        other => other.to_string(),
    };
    MoatError::bad_request("syntax_error", crate::scrub::scrub(&msg))
}

fn statement_name(s: &Statement) -> &'static str {
    match s {
        Statement::Insert(_) => "INSERT",
        Statement::Update(_) => "UPDATE",
        Statement::Delete(_) => "DELETE",
        Statement::Merge(_) => "MERGE",
        Statement::Copy { .. } => "COPY",
        Statement::CreateTable(_) => "CREATE TABLE",
        Statement::CreateView(_) => "CREATE VIEW",
        Statement::Drop { .. } => "DROP",
        Statement::AlterTable(_) => "ALTER TABLE",
        Statement::Truncate(_) => "TRUNCATE",
        Statement::Set(_) => "SET",
        Statement::ShowVariable { .. } | Statement::ShowTables { .. } | Statement::ShowColumns { .. } => "SHOW",
        Statement::StartTransaction { .. } | Statement::Commit { .. } | Statement::Rollback { .. } => "a transaction statement",
        Statement::Prepare { .. } | Statement::Execute { .. } | Statement::Deallocate { .. } => "PREPARE/EXECUTE",
        Statement::Grant(_) | Statement::Revoke(_) => "GRANT/REVOKE",
        _ => "this statement",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(sql: &str) -> &'static str {
        check(sql, 65_536, 64, false).err().map_or("ok", |e| e.code)
    }

    #[test]
    fn allowed() {
        for sql in ["SELECT 1", "select * from t where a = 1", "WITH x AS (SELECT 1) SELECT * FROM x", "VALUES (1), (2)", "SELECT 1;"] {
            assert_eq!(code(sql), "ok", "{sql}");
        }
    }

    #[test]
    fn refused_statements() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "CREATE TABLE x AS SELECT 1",
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "COPY t TO '/tmp/out.csv'",
            "DROP TABLE t",
            "SET datafusion.execution.target_partitions = 1",
            "CREATE VIEW v AS SELECT 1",
            "PREPARE p AS SELECT 1",
        ] {
            assert_eq!(code(sql), "statement_not_allowed", "{sql}");
        }
    }

    #[test]
    fn shape_limits() {
        assert_eq!(code(""), "empty_query");
        assert_eq!(code("SELECT 1; SELECT 2"), "multiple_statements");
        assert_eq!(code("SELEC 1"), "syntax_error");
        assert_eq!(check(&format!("SELECT '{}'", "x".repeat(70_000)), 65_536, 64, false).map_err(|e| e.code), Err("query_too_long"));
        let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(code(&deep), "query_too_deep");
        assert_eq!(code("EXPLAIN SELECT 1"), "explain_not_allowed");
        assert_eq!(check("EXPLAIN SELECT 1", 65_536, 64, true).map_err(|e| e.code), Ok(QueryKind::Explain));
        assert_eq!(check("EXPLAIN DELETE FROM t", 65_536, 64, true).map_err(|e| e.code), Err("statement_not_allowed"));
    }
}
