//! Column lineage: for each output column of a logical plan, the (table, column) pairs it was
//! computed from. Used for output classification (high-water mark). Plan nodes that are not
//! understood precisely fall back to "every input column" — never to fewer sources.

use std::collections::BTreeSet;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::logical_expr::{Expr, JoinType, LogicalPlan, Volatility};

/// Source columns as (table name, column name).
pub type Sources = BTreeSet<(String, String)>;

fn union_all(v: &[Sources]) -> Sources {
    v.iter().flat_map(|s| s.iter().cloned()).collect()
}

/// Whether running `plan` again over the same data gives the same answer: no function in it
/// (nor in the views it reads) is volatile (`random()`, `uuid()`) or reads the clock or the
/// session (`now()`, `current_date`). Only such answers may be kept by a result cache.
pub fn repeatable(plan: &LogicalPlan) -> bool {
    let mut repeatable = true;
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(inner) = scan.source.get_logical_plan()
        {
            repeatable &= self::repeatable(&inner);
        }
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e
                    && f.func.signature().volatility != Volatility::Immutable
                {
                    repeatable = false;
                }
                Ok(if repeatable { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
            })
        })?;
        Ok(if repeatable { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    repeatable
}

/// Sources of every output field of `plan`, in schema order.
pub fn lineage(plan: &LogicalPlan) -> Vec<Sources> {
    let n = plan.schema().fields().len();
    let precise = match plan {
        // A view: the sources of its own plan's columns (never the view's name, which carries
        // no label), through the scan's projection.
        LogicalPlan::TableScan(scan) if scan.source.get_logical_plan().is_some() => scan.source.get_logical_plan().map(|inner| {
            let inner = lineage(&inner);
            match &scan.projection {
                Some(p) => p.iter().map(|&i| inner.get(i).cloned().unwrap_or_else(|| union_all(&inner))).collect(),
                None => inner,
            }
        }),
        LogicalPlan::TableScan(scan) => {
            let table = scan.table_name.table().to_owned();
            Some(scan.projected_schema.fields().iter().map(|f| Sources::from([(table.clone(), f.name().clone())])).collect())
        }
        LogicalPlan::Projection(p) => {
            let input = lineage(&p.input);
            Some(p.expr.iter().map(|e| expr_sources(e, &p.input, &input)).collect())
        }
        LogicalPlan::Aggregate(a) => {
            let input = lineage(&a.input);
            Some(a.group_expr.iter().chain(a.aggr_expr.iter()).map(|e| expr_sources(e, &a.input, &input)).collect())
        }
        LogicalPlan::Window(w) => {
            let input = lineage(&w.input);
            let mut out = input.clone();
            out.extend(w.window_expr.iter().map(|e| expr_sources(e, &w.input, &input)));
            Some(out)
        }
        LogicalPlan::Filter(f) => Some(lineage(&f.input)),
        LogicalPlan::Sort(s) => Some(lineage(&s.input)),
        LogicalPlan::Limit(l) => Some(lineage(&l.input)),
        LogicalPlan::Repartition(r) => Some(lineage(&r.input)),
        LogicalPlan::SubqueryAlias(s) => Some(lineage(&s.input)),
        LogicalPlan::Join(j) => {
            let (l, r) = (lineage(&j.left), lineage(&j.right));
            Some(match j.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti | JoinType::LeftMark => l,
                JoinType::RightSemi | JoinType::RightAnti | JoinType::RightMark => r,
                _ => l.into_iter().chain(r).collect(),
            })
        }
        LogicalPlan::Union(u) => {
            let inputs: Vec<Vec<Sources>> = u.inputs.iter().map(|i| lineage(i)).collect();
            Some((0..n).map(|i| inputs.iter().filter_map(|v| v.get(i)).flat_map(|s| s.iter().cloned()).collect()).collect())
        }
        LogicalPlan::Values(_) | LogicalPlan::EmptyRelation(_) => Some(vec![Sources::new(); n]),
        _ => None,
    };
    match precise {
        Some(v) if v.len() == n => v,
        // Conservative: every output depends on everything below.
        _ => {
            let all: Sources = plan.inputs().iter().flat_map(|i| union_all(&lineage(i))).collect();
            vec![all; n]
        }
    }
}

/// The sources an expression reads: its columns, resolved against the input, plus everything a
/// subquery inside it reads.
fn expr_sources(e: &Expr, input: &LogicalPlan, input_lineage: &[Sources]) -> Sources {
    let mut out = Sources::new();
    for col in e.column_refs() {
        match input.schema().index_of_column(col) {
            Ok(i) => out.extend(input_lineage.get(i).cloned().unwrap_or_default()),
            Err(_) => out.extend(union_all(input_lineage)),
        }
    }
    let _ = e.apply(|x| {
        let sub = match x {
            Expr::ScalarSubquery(s) => Some(&s.subquery),
            Expr::InSubquery(s) => Some(&s.subquery.subquery),
            Expr::Exists(s) => Some(&s.subquery.subquery),
            _ => None,
        };
        if let Some(plan) = sub {
            out.extend(union_all(&lineage(plan)));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}
