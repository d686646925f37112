//! `GovernedTable`: masking at the scan. Wraps the raw table; its schema is the schema *after*
//! masking (masked columns are text, omitted ones are gone), and its scan is
//! `raw scan → projection(mask exprs)`. Every predicate, join, aggregate and sort above it sees
//! masked values only. The one exception is by construction harmless: a filter that reads only
//! columns the caller sees raw (and nothing else: no subquery, no volatile function) is also
//! handed to the raw scan, which may skip row groups and pages by it. It compares exactly the
//! values the caller could compare above the scan, and it stays above the scan too (`Inexact`),
//! so the answer is the same with or without it.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, Result as DfResult};
use datafusion::datasource::TableType;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::mask::MaskRule;
use crate::policy::MaskDecision;

#[derive(Debug)]
pub struct GovernedTable {
    inner: Arc<dyn TableProvider>,
    /// Per visible column: its index in the raw schema and its mask (`None` = raw).
    columns: Vec<(usize, Option<MaskRule>)>,
    schema: SchemaRef,
}

impl GovernedTable {
    /// `decisions` is aligned with the raw table's fields.
    pub fn new(inner: Arc<dyn TableProvider>, decisions: &[MaskDecision]) -> Self {
        let raw = inner.schema();
        let mut columns = Vec::new();
        let mut fields = Vec::new();
        for (i, field) in raw.fields().iter().enumerate() {
            // A column without a decision is omitted: fail closed.
            match decisions.get(i).copied().unwrap_or(MaskDecision::Omit) {
                MaskDecision::Omit => {}
                MaskDecision::Raw => {
                    columns.push((i, None));
                    fields.push(field.as_ref().clone());
                }
                MaskDecision::Mask(rule) => {
                    columns.push((i, Some(rule)));
                    // Masks keep NULLs exactly, so nullability is the raw column's.
                    fields.push(Field::new(field.name(), DataType::Utf8View, field.is_nullable()));
                }
            }
        }
        Self { inner, columns, schema: Arc::new(Schema::new(fields)) }
    }

    /// Whether the caller sees column `name` of this table raw.
    fn is_raw(&self, name: &str) -> bool {
        self.schema.fields().iter().zip(&self.columns).any(|(f, (_, rule))| f.name() == name && rule.is_none())
    }

    /// Whether `filter` may also run below the masks: it reads at least one column, only columns
    /// the caller sees raw, and holds nothing that could read anything else.
    pub fn may_push(&self, filter: &Expr) -> bool {
        if filter.is_volatile() {
            return false;
        }
        let mut columns = 0;
        let mut ok = true;
        let _ = filter.apply(|e| {
            match e {
                Expr::Column(c) if self.is_raw(&c.name) => columns += 1,
                Expr::Column(_)
                | Expr::OuterReferenceColumn(..)
                | Expr::ScalarSubquery(_)
                | Expr::Exists(_)
                | Expr::InSubquery(_)
                | Expr::SetComparison(_)
                | Expr::Placeholder(_) => {
                    ok = false;
                    return Ok(TreeNodeRecursion::Stop);
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        ok && columns > 0
    }
}

/// `filter` with its column references unqualified, as the raw table names them.
fn unqualified(filter: &Expr) -> DfResult<Expr> {
    filter
        .clone()
        .transform(|e| match e {
            Expr::Column(c) if c.relation.is_some() => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))),
            e => Ok(Transformed::no(e)),
        })
        .map(|t| t.data)
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Only filters on raw-visible columns, and only as a hint (`Inexact`: the filter also stays
    /// above the scan). A filter on a masked column never goes below the masks.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| if self.may_push(f) { TableProviderFilterPushDown::Inexact } else { TableProviderFilterPushDown::Unsupported })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let wanted: Vec<usize> = projection.cloned().unwrap_or_else(|| (0..self.columns.len()).collect());
        let mut inner_projection: Vec<usize> = Vec::with_capacity(wanted.len());
        for &o in &wanted {
            let raw_index = self.columns[o].0;
            if !inner_projection.contains(&raw_index) {
                inner_projection.push(raw_index);
            }
        }
        // Checked again rather than trusted: only raw-visible filters go down.
        let pushed: Vec<Expr> = filters.iter().filter(|f| self.may_push(f)).map(unqualified).collect::<DfResult<_>>()?;
        // A limit is exact only on the unfiltered rows; with a filter it stays above.
        let limit = if pushed.is_empty() { limit } else { None };
        let inner = self.inner.scan(state, Some(&inner_projection), &pushed, limit).await?;
        if wanted.is_empty() {
            return Ok(inner);
        }
        let inner_schema = DFSchema::try_from(inner.schema().as_ref().clone())?;
        let raw = self.inner.schema();
        let mut exprs = Vec::with_capacity(wanted.len());
        for &o in &wanted {
            let (raw_index, rule) = self.columns[o];
            let column = Expr::Column(Column::new_unqualified(raw.field(raw_index).name()));
            let expr = match rule {
                None => column,
                Some(rule) => rule.udf().call(vec![column]),
            };
            exprs.push((state.create_physical_expr(expr, &inner_schema)?, self.schema.field(o).name().clone()));
        }
        Ok(Arc::new(ProjectionExec::try_new(exprs, inner)?))
    }
}
