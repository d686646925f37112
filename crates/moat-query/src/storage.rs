//! Where table data lives: one `object_store` (a local directory by default), keyed
//! `{tenant_id}/{domain}/{product}/{table}/v{time}-{uuid}/part-00000.parquet`. Ingest writes
//! through it and every query reads through it. A query's runtime knows this store alone (no
//! `file://`, no other URL), so no SQL can name a path outside the tables it was given.

use std::io::Write;
use std::path::Path as FsPath;
use std::sync::Arc;

use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::object_store::ObjectStoreRegistry;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::object_store::buffered::BufWriter;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::memory::InMemory;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::{StreamExt, TryStreamExt};
use moat_core::MoatError;
use tokio_util::io::SyncIoBridge;
use url::Url;

use crate::crypto::{TenantKeyring, encrypted_format};

/// The one URL the engine resolves table locations against.
const BASE: &str = "moat://data/";

fn storage_error(what: &str, e: impl std::fmt::Display) -> MoatError {
    tracing::error!(error = %e, "{what}");
    MoatError::internal("storage_error")
}

#[derive(Debug, Clone)]
pub struct TableStorage {
    store: Arc<dyn ObjectStore>,
    base: Url,
}

impl TableStorage {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        #[allow(clippy::expect_used)] // a constant that parses
        let base = Url::parse(BASE).expect("constant URL");
        Self { store, base }
    }

    /// A local directory (created if missing).
    pub fn local(dir: &FsPath) -> Result<Self, MoatError> {
        std::fs::create_dir_all(dir).map_err(|e| storage_error("cannot create the table directory", e))?;
        let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| storage_error("cannot open the table directory", e))?;
        Ok(Self::new(Arc::new(fs.with_automatic_cleanup(true))))
    }

    /// Memory only: for tests.
    pub fn in_memory() -> Self {
        Self::new(Arc::new(InMemory::new()))
    }

    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The listing URL of a version prefix (as stored in the catalog).
    pub fn listing_url(&self, prefix: &str) -> DfResult<ListingTableUrl> {
        let prefix = prefix.trim_matches('/');
        ListingTableUrl::parse(format!("{BASE}{prefix}/"))
    }

    /// A registry that resolves this store and nothing else.
    pub fn registry(&self) -> Arc<dyn ObjectStoreRegistry> {
        Arc::new(OnlyTables { base: self.base.clone(), store: self.store.clone() })
    }

    /// A blocking writer for `key` (call inside the runtime, e.g. in `spawn_blocking`). The
    /// object appears only after [`ObjectWriter::finish`]; dropped or aborted, nothing appears.
    pub fn writer(&self, key: &str) -> ObjectWriter {
        ObjectWriter { inner: Some(SyncIoBridge::new(BufWriter::new(self.store.clone(), Path::from(key)))), written: 0 }
    }

    /// Deletes every object under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, MoatError> {
        let prefix = Path::from(prefix.trim_matches('/'));
        let locations = self.store.list(Some(&prefix)).map_ok(|m| m.location).boxed();
        let deleted: Vec<Path> =
            self.store.delete_stream(locations).try_collect().await.map_err(|e| storage_error("cannot delete table files", e))?;
        Ok(deleted.len())
    }

    /// Total size of the objects under `prefix`.
    pub async fn size_of(&self, prefix: &str) -> Result<u64, MoatError> {
        let prefix = Path::from(prefix.trim_matches('/'));
        let metas: Vec<_> = self.store.list(Some(&prefix)).try_collect().await.map_err(|e| storage_error("cannot list table files", e))?;
        Ok(metas.iter().map(|m| m.size).sum())
    }

    /// Streams the rows of every Parquet file of a version prefix, at most `batch_rows` rows
    /// per batch, through a one-partition DataFusion session over this store. Raw values: for
    /// the server's own reads (the PII scanner); queries go through the engine and its masks.
    /// `keys`: the tenant's keys when the files are encrypted.
    pub async fn read_rows(
        &self,
        prefix: &str,
        batch_rows: usize,
        keys: Option<Arc<TenantKeyring>>,
    ) -> Result<SendableRecordBatchStream, MoatError> {
        let read_error = |e: DataFusionError| match e {
            DataFusionError::ParquetError(e) if crate::crypto::is_integrity_failure(&e) => crate::crypto::integrity_error(),
            DataFusionError::External(e) if e.downcast_ref::<MoatError>().is_some() => {
                e.downcast_ref::<MoatError>().cloned().unwrap_or_else(|| MoatError::internal("storage_error"))
            }
            e => storage_error("cannot read table files", e),
        };
        let config = SessionConfig::new().with_batch_size(batch_rows.max(1)).with_target_partitions(1);
        let runtime = RuntimeEnvBuilder::new().with_object_store_registry(self.registry()).build_arc().map_err(read_error)?;
        let format = match keys {
            Some(keys) => encrypted_format(&runtime, keys, self.store.clone()),
            None => ParquetFormat::default(),
        };
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let url = self.listing_url(prefix).map_err(read_error)?;
        let options = ListingOptions::new(Arc::new(format)).with_file_extension(".parquet");
        let files: Vec<ObjectMeta> = self
            .store
            .list(Some(&Path::from(prefix.trim_matches('/'))))
            .try_filter(|m| futures::future::ready(m.location.as_ref().ends_with(".parquet")))
            .try_collect()
            .await
            .map_err(|e| storage_error("cannot list table files", e))?;
        if files.is_empty() {
            let empty = Arc::new(datafusion::arrow::datatypes::Schema::empty());
            return Ok(Box::pin(RecordBatchStreamAdapter::new(empty, futures::stream::empty())));
        }
        let schema = options.infer_schema(&ctx.state(), &url).await.map_err(read_error)?;
        let table =
            ListingTable::try_new(ListingTableConfig::new(url).with_listing_options(options).with_schema(schema)).map_err(read_error)?;
        let df = ctx.read_table(Arc::new(table)).map_err(read_error)?;
        df.execute_stream().await.map_err(read_error)
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool, MoatError> {
        match self.store.head(&Path::from(key)).await {
            Ok(_) => Ok(true),
            Err(datafusion::object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(storage_error("cannot stat a table file", e)),
        }
    }
}

/// A multipart upload behind `std::io::Write`.
pub struct ObjectWriter {
    inner: Option<SyncIoBridge<BufWriter>>,
    written: u64,
}

impl ObjectWriter {
    /// Completes the upload; returns the bytes written.
    pub fn finish(mut self) -> Result<u64, MoatError> {
        let Some(mut w) = self.inner.take() else { return Err(MoatError::internal("storage_error")) };
        w.shutdown().map_err(|e| storage_error("cannot complete a table file", e))?;
        Ok(self.written)
    }

    /// Abandons the upload (nothing becomes visible). Dropping the writer does the same.
    pub fn abort(self) {}
}

impl Write for ObjectWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let w = self.inner.as_mut().ok_or_else(|| std::io::Error::other("writer closed"))?;
        let n = w.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.as_mut().map_or(Ok(()), Write::flush)
    }
}

impl Drop for ObjectWriter {
    fn drop(&mut self) {
        let Some(w) = self.inner.take() else { return };
        let mut w = w.into_inner();
        match tokio::runtime::Handle::try_current() {
            // On a thread of its own: `block_on` must not run on a runtime worker.
            Ok(handle) => {
                let aborted = std::thread::scope(|s| s.spawn(|| handle.block_on(w.abort())).join());
                if !matches!(aborted, Ok(Ok(()))) {
                    tracing::warn!("could not abort a table upload");
                }
            }
            Err(_) => tracing::warn!("a table upload was dropped outside the runtime"),
        }
    }
}

#[derive(Debug)]
struct OnlyTables {
    base: Url,
    store: Arc<dyn ObjectStore>,
}

impl ObjectStoreRegistry for OnlyTables {
    fn register_store(&self, _url: &Url, _store: Arc<dyn ObjectStore>) -> Option<Arc<dyn ObjectStore>> {
        None
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if url.scheme() == self.base.scheme() && url.host_str() == self.base.host_str() {
            Ok(self.store.clone())
        } else {
            Err(DataFusionError::Plan("table not found".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn write_is_all_or_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = TableStorage::local(dir.path()).expect("open");
        let s2 = s.clone();
        let n = tokio::task::spawn_blocking(move || {
            let mut w = s2.writer("t/a/v1/part.parquet");
            w.write_all(b"hello").expect("write");
            w.finish()
        })
        .await
        .expect("join")
        .expect("finish");
        assert_eq!(n, 5);
        assert!(s.exists("t/a/v1/part.parquet").await.expect("head"));
        let s2 = s.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = s2.writer("t/a/v2/part.parquet");
            w.write_all(b"half").expect("write");
            w.abort();
            let mut w = s2.writer("t/a/v3/part.parquet");
            w.write_all(b"dropped").expect("write");
        })
        .await
        .expect("join");
        assert!(!s.exists("t/a/v2/part.parquet").await.expect("head"));
        assert!(!s.exists("t/a/v3/part.parquet").await.expect("head"));
        assert_eq!(s.size_of("t/a").await.expect("size"), 5);
        assert_eq!(s.delete_prefix("t/a/").await.expect("delete"), 1);
        assert_eq!(s.size_of("t").await.expect("size"), 0);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn read_rows_streams_every_file_of_a_version() {
        let s = TableStorage::in_memory();
        for (part, csv) in [("part-00001", "id,name\n3,Cy\n"), ("part-00000", "id,name\n1,Ann\n2,Bob\n")] {
            let s2 = s.clone();
            tokio::task::spawn_blocking(move || {
                let limits = crate::ingest::IngestLimits::default();
                let w = s2.writer(&format!("t/x/v1/{part}.parquet"));
                let (_, w) = crate::ingest::csv_to_parquet(csv.as_bytes(), w, &Default::default(), &limits).expect("ingest");
                w.finish().expect("finish");
            })
            .await
            .expect("join");
        }
        // Not a table file: ignored.
        s.store().put(&Path::from("t/x/v1/_SUCCESS"), b"".to_vec().into()).await.expect("put");
        let batches: Vec<datafusion::arrow::record_batch::RecordBatch> =
            s.read_rows("t/x/v1/", 1, None).await.expect("open").try_collect().await.expect("read");
        assert_eq!(batches.len(), 3, "one row per batch");
        let mut ids: Vec<i64> = batches
            .iter()
            .map(|b| b.column(0).as_any().downcast_ref::<datafusion::arrow::array::Int64Array>().expect("ints").value(0))
            .collect();
        ids.sort();
        assert_eq!(ids, [1, 2, 3]);
        assert_eq!(s.read_rows("t/none/", 10, None).await.expect("open").count().await, 0);
    }

    #[test]
    fn only_the_table_store_resolves() {
        let s = TableStorage::in_memory();
        let r = s.registry();
        assert!(r.get_store(&Url::parse("moat://data/").expect("url")).is_ok());
        for other in ["file:///", "s3://bucket/", "http://example.com/", "moat://other/"] {
            assert!(r.get_store(&Url::parse(other).expect("url")).is_err(), "{other}");
        }
    }
}
