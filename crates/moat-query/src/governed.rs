//! `GovernedTable`: masking at the scan. Wraps the raw table; its schema is the schema *after*
//! masking (masked columns are text, omitted ones are gone), and its scan is
//! `raw scan → projection(mask exprs)`. No filter is ever pushed into it, so every predicate,
//! join, aggregate and sort above it sees masked values only.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
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
                    fields.push(Field::new(field.name(), DataType::Utf8, field.is_nullable()));
                }
            }
        }
        Self { inner, columns, schema: Arc::new(Schema::new(fields)) }
    }
}

#[async_trait]
impl TableProvider for GovernedTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    /// Never: a filter pushed below the masks would compare raw values.
    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Unsupported; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
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
        // No filters go down, so a limit here is exact and reveals nothing.
        let inner = self.inner.scan(state, Some(&inner_projection), &[], limit).await?;
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
