//! The SQL surface: one read-only statement (SELECT / WITH / VALUES), EXPLAIN only for callers
//! allowed to see plans. Parsed here with a bounded recursion depth before DataFusion plans
//! anything; DataFusion's `SQLOptions` then refuse DDL, DML and statements a second time.

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    AccessExpr, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Query, SelectItem, SetExpr, Statement, Value, VisitMut,
    VisitorMut, visit_expressions_mut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
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

fn check_size(sql: &str, max_sql_bytes: usize) -> Result<(), MoatError> {
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
    Ok(())
}

/// Checks length, depth and statement kind.
pub fn check(sql: &str, max_sql_bytes: usize, max_depth: usize, may_explain: bool) -> Result<QueryKind, MoatError> {
    check_size(sql, max_sql_bytes)?;
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

/// The statement a PostgreSQL client sent, in PostgreSQL's dialect. A statement on the
/// caller's data is planned as written; introspection (a statement reading `pg_catalog`) is
/// rewritten where psql, drivers and BI tools use idioms DataFusion does not plan as written
/// (`OPERATOR(pg_catalog.~)`, `COLLATE`, `'t'::regclass`, correlated subqueries, well-known
/// introspection queries). The same limits and the same read-only rule as [`check`] apply to
/// what was sent *and* to what the rewrite produced.
pub fn check_postgres(sql: &str, max_sql_bytes: usize, max_depth: usize, may_explain: bool) -> Result<(QueryKind, Statement), MoatError> {
    check_size(sql, max_sql_bytes)?;
    // The configured nesting limit, on the text as sent (the rewriting parser has its own,
    // sqlparser's default of 50).
    let dialect = PostgreSqlDialect {};
    let as_written = Parser::new(&dialect).with_recursion_limit(max_depth).try_with_sql(sql).and_then(|mut p| p.parse_statements());
    let statements = match as_written {
        Err(ParserError::RecursionLimitExceeded) => return Err(too_deep()),
        // A statement on the caller's data is planned as written.
        Ok(statements) if !sql.to_ascii_lowercase().contains("pg_catalog") && !statements.iter().any(reads_pg_catalog) => statements,
        // Introspection (or what only the rewriting parser reads): rewritten for DataFusion.
        _ => {
            let mut statements = compat_parser().parse(sql).map_err(parser_error)?;
            for stmt in &mut statements {
                let _ = stmt.visit(&mut CatalogCaseSubqueries);
                let _ = stmt.visit(&mut AggregateScalarSubqueries);
                let _ = stmt.visit(&mut FieldAccessByName);
            }
            statements
        }
    };
    let mut statements = statements.into_iter();
    let (Some(stmt), None) = (statements.next(), statements.next()) else {
        return Err(MoatError::bad_request("multiple_statements", "send one statement at a time"));
    };
    let kind = match &stmt {
        Statement::Query(_) => QueryKind::Select,
        Statement::Explain { statement, .. } => {
            if !may_explain {
                return Err(MoatError::forbidden("explain_not_allowed", "EXPLAIN needs the query:explain permission"));
            }
            if !matches!(statement.as_ref(), Statement::Query(_)) {
                return Err(refused("EXPLAIN of anything but a query"));
            }
            QueryKind::Explain
        }
        other => return Err(refused(statement_name(other))),
    };
    Ok((kind, stmt))
}

/// Whether a statement reads `pg_catalog` (introspection by psql, drivers and BI tools).
fn reads_pg_catalog(stmt: &Statement) -> bool {
    let mut found = false;
    let _ = visit_relations(stmt, |name| {
        let parts: Vec<String> = name.0.iter().filter_map(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase()).collect();
        found |= parts.first().is_some_and(|p| p == "pg_catalog") || parts.last().is_some_and(|p| p.starts_with("pg_"));
        ControlFlow::<()>::Continue(())
    });
    found
}

/// In an introspection statement, a scalar subquery inside `CASE` looks up what moat does not
/// have — column defaults, identity sequences, non-default collations — and DataFusion cannot
/// plan it there when it is correlated: it answers NULL, which is what PostgreSQL would answer
/// for moat's tables.
struct CatalogCaseSubqueries;

impl VisitorMut for CatalogCaseSubqueries {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if matches!(expr, Expr::Case { .. }) {
            let _ = visit_expressions_mut(expr, |e| {
                if matches!(e, Expr::Subquery(_)) {
                    *e = Expr::Value(Value::Null.with_empty_span());
                }
                ControlFlow::<()>::Continue(())
            });
        }
        ControlFlow::Continue(())
    }
}

/// In an introspection statement, `(row).field` (PgJDBC's `(_pg_expandarray(i.indkey)).n`,
/// `(result.keys).x`) names the field as DataFusion's field access expects it: a string, folded to lower case
/// unless quoted, as PostgreSQL folds identifiers.
struct FieldAccessByName;

impl VisitorMut for FieldAccessByName {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        // `t.col[i]` is a column of a table, not a field of a row: left as it is.
        if let Expr::CompoundFieldAccess { root, access_chain } = expr
            && !matches!(root.as_ref(), Expr::Identifier(_) | Expr::CompoundIdentifier(_))
        {
            for access in access_chain {
                if let AccessExpr::Dot(Expr::Identifier(ident)) = access {
                    let name = if ident.quote_style.is_some() { ident.value.clone() } else { ident.value.to_lowercase() };
                    *access = AccessExpr::Dot(Expr::Value(Value::SingleQuotedString(name).with_empty_span()));
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// In an introspection statement, makes a scalar subquery of one plain column an aggregate
/// (`max`) of it. PostgreSQL requires a scalar subquery to return at most one row and fails at
/// run time otherwise; DataFusion cannot plan a correlated one unless it is an aggregate. `max`
/// of at most one row is that row, so the answer is PostgreSQL's wherever PostgreSQL answers.
struct AggregateScalarSubqueries;

impl VisitorMut for AggregateScalarSubqueries {
    type Break = ();

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Subquery(query) = expr {
            aggregate_single_column(query);
        }
        ControlFlow::Continue(())
    }
}

const AGGREGATES: &[&str] = &["count", "max", "min", "sum", "avg", "array_agg", "string_agg", "bool_and", "bool_or", "every", "json_agg"];

fn aggregate_single_column(query: &mut Query) {
    if query.limit_clause.is_some() || query.fetch.is_some() || query.order_by.is_some() {
        return;
    }
    let SetExpr::Select(select) = query.body.as_mut() else { return };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
    if select.projection.len() != 1 || grouped || select.having.is_some() || select.distinct.is_some() {
        return;
    }
    let expr = match &mut select.projection[0] {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return,
    };
    if let Expr::Function(f) = expr
        && f.name.0.last().and_then(|p| p.as_ident()).is_some_and(|i| AGGREGATES.contains(&i.value.to_ascii_lowercase().as_str()))
    {
        return;
    }
    let inner = std::mem::replace(expr, Expr::Value(Value::Null.with_empty_span()));
    let mut max = max_template().clone();
    if let Expr::Function(f) = &mut max
        && let FunctionArguments::List(list) = &mut f.args
        && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))) = list.args.first_mut()
    {
        *arg = inner;
        *expr = max;
    } else {
        *expr = inner;
    }
}

/// `max(NULL)`, parsed once: the shape of an aggregate call to fill in.
fn max_template() -> &'static Expr {
    static MAX: std::sync::OnceLock<Expr> = std::sync::OnceLock::new();
    MAX.get_or_init(|| {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql("max(NULL)")
            .and_then(|mut p| p.parse_expr())
            .unwrap_or(Expr::Value(Value::Null.with_empty_span()))
    })
}

/// The PostgreSQL-compatibility parser (its token tables are built once).
fn compat_parser() -> &'static PostgresCompatibilityParser {
    static PARSER: std::sync::OnceLock<PostgresCompatibilityParser> = std::sync::OnceLock::new();
    PARSER.get_or_init(PostgresCompatibilityParser::new)
}

fn too_deep() -> MoatError {
    MoatError::bad_request("query_too_deep", "sql is nested too deeply")
}

fn parser_error(p: ParserError) -> MoatError {
    match p {
        ParserError::RecursionLimitExceeded => too_deep(),
        ParserError::ParserError(m) | ParserError::TokenizerError(m) => MoatError::bad_request("syntax_error", crate::scrub::scrub(&m)),
    }
}

fn syntax(e: DataFusionError) -> MoatError {
    match e {
        DataFusionError::SQL(p, _) => parser_error(*p),
        other => MoatError::bad_request("syntax_error", crate::scrub::scrub(&other.to_string())),
    }
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

    fn pg_code(sql: &str) -> &'static str {
        check_postgres(sql, 65_536, 64, false).err().map_or("ok", |e| e.code)
    }

    #[test]
    fn postgres_dialect_keeps_every_rule() {
        for sql in [
            "SELECT 1",
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(customers)$' COLLATE pg_catalog.default",
            "SELECT id FROM customers WHERE id = $1",
        ] {
            assert_eq!(pg_code(sql), "ok", "{sql}");
        }
        // A statement on the caller's data is planned as written.
        let sql = "SELECT (SELECT b.x FROM b WHERE b.id = a.id) AS v, (SELECT count(*) FROM c) FROM a";
        let (_, s) = check_postgres(sql, 65_536, 64, false).map_err(|e| e.code).unwrap();
        assert_eq!(s.to_string(), sql);
        // Introspection: a one-column scalar subquery becomes an aggregate, inside CASE it
        // answers NULL.
        let sql = "SELECT (SELECT t.typname FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) FROM pg_catalog.pg_attribute a";
        let (_, s) = check_postgres(sql, 65_536, 64, false).map_err(|e| e.code).unwrap();
        assert!(s.to_string().contains("max(t.typname)") || s.to_string().starts_with("SELECT NULL"), "{s}");
        let sql =
            "SELECT CASE WHEN a.x THEN (SELECT d.v FROM pg_catalog.pg_attrdef d WHERE d.id = a.id) END FROM pg_catalog.pg_attribute a";
        let (_, s) = check_postgres(sql, 65_536, 64, false).map_err(|e| e.code).unwrap();
        assert!(s.to_string().starts_with("SELECT CASE WHEN a.x THEN NULL END FROM"), "{s}");
        // A field of a row is named by a string; a subscripted column of a table stays as is.
        let sql = "SELECT (information_schema._pg_expandarray(i.indkey)).N, (r.keys).\"X\", c.conkey[2] FROM pg_catalog.pg_index i";
        let (_, s) = check_postgres(sql, 65_536, 64, false).map_err(|e| e.code).unwrap();
        let s = s.to_string();
        assert!(s.contains(".'n'") && s.contains("(r.keys).'X'") && s.contains("c.conkey[2]"), "{s}");
        for sql in [
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "DELETE FROM t",
            "CREATE TABLE x AS SELECT 1",
            "COPY t TO '/tmp/out.csv'",
            "COPY (SELECT 1) TO STDOUT",
            "DROP TABLE t",
            "SET search_path = other",
            "PREPARE p AS SELECT 1",
            "EXECUTE p",
            "DEALLOCATE p",
            "LISTEN x",
            "DO $$ BEGIN END $$",
            "CALL f()",
            "VACUUM",
        ] {
            let got = pg_code(sql);
            assert!(got == "statement_not_allowed" || got == "syntax_error", "{sql}: {got}");
        }
        assert_eq!(pg_code(""), "empty_query");
        assert_eq!(pg_code("SELECT 1; SELECT 2"), "multiple_statements");
        assert_eq!(pg_code("SELECT 1; DELETE FROM t"), "multiple_statements");
        let deep = format!("SELECT {}1{}", "(".repeat(200), ")".repeat(200));
        assert_eq!(pg_code(&deep), "query_too_deep");
        assert_eq!(check_postgres("SELECT ((((1))))", 65_536, 3, false).map_err(|e| e.code).err(), Some("query_too_deep"));
        assert_eq!(pg_code("EXPLAIN SELECT 1"), "explain_not_allowed");
        assert_eq!(check_postgres("EXPLAIN DELETE FROM t", 65_536, 64, true).map_err(|e| e.code).err(), Some("statement_not_allowed"));
    }
}
