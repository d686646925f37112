//! Memory accounting: one pool per tenant (all its running queries together) and, inside it, a
//! cap per query, so one heavy query cannot take its tenant's whole budget.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation};

/// Marks the per-query refusal, so the error names the right limit.
pub const QUERY_LIMIT_MARK: &str = "moat: per-query memory limit";

#[derive(Debug)]
pub struct QueryPool {
    tenant: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
    /// Set when this query's own cap refused memory (as opposed to its tenant's pool), so the
    /// error names the right limit whatever DataFusion wraps around it.
    capped: AtomicBool,
}

impl QueryPool {
    pub fn new(tenant: Arc<dyn MemoryPool>, limit: usize) -> Self {
        Self { tenant, limit, used: AtomicUsize::new(0), capped: AtomicBool::new(false) }
    }

    /// Whether the per-query cap ever refused memory.
    pub fn capped(&self) -> bool {
        self.capped.load(Ordering::Relaxed)
    }
}

impl fmt::Display for QueryPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query pool ({} of {} bytes) in {}", self.used.load(Ordering::Relaxed), self.limit, self.tenant)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "moat_query_pool"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.tenant.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.tenant.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.tenant.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.tenant.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| used.checked_add(additional).filter(|n| *n <= self.limit))
            .map_err(|used| {
                self.capped.store(true, Ordering::Relaxed);
                DataFusionError::ResourcesExhausted(format!(
                    "{QUERY_LIMIT_MARK}: {additional} more bytes wanted, {used} of {} in use",
                    self.limit
                ))
            })?;
        if let Err(e) = self.tenant.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    use super::*;

    #[test]
    fn a_query_is_capped_inside_its_tenant() {
        let tenant: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1000));
        let q1p = Arc::new(QueryPool::new(tenant.clone(), 600));
        let q1: Arc<dyn MemoryPool> = q1p.clone();
        let q2: Arc<dyn MemoryPool> = Arc::new(QueryPool::new(tenant.clone(), 600));
        let r1 = MemoryConsumer::new("a").register(&q1);
        let r2 = MemoryConsumer::new("b").register(&q2);
        r1.try_grow(500).expect("within both");
        assert!(!q1p.capped());
        let e = r1.try_grow(200).expect_err("over the query's cap");
        assert!(e.to_string().contains(QUERY_LIMIT_MARK), "{e}");
        assert!(q1p.capped());
        assert_eq!((q1.reserved(), tenant.reserved()), (500, 500), "a refused grow leaves nothing behind");
        let e = r2.try_grow(600).expect_err("over the tenant's");
        assert!(!e.to_string().contains(QUERY_LIMIT_MARK), "{e}");
        assert_eq!(q2.reserved(), 0);
        r2.try_grow(500).expect("fits");
        r1.free();
        assert_eq!((q1.reserved(), tenant.reserved()), (0, 500));
    }
}
