//! Table files encrypted at rest with Parquet modular encryption (AES-GCM-V1: every page,
//! page header, index and the footer sealed and authenticated).
//!
//! Why Parquet modular encryption rather than a streaming AEAD around the file: it is the
//! format's own standard (readable by Arrow, Spark and DuckDB given the key), a reader opens
//! only the pages it needs, so a selective query never decrypts a whole file, and page
//! statistics stay usable for pruning because they are inside the encrypted footer.
//!
//! Per file: a key derived from the tenant's DEK and a fresh salt (`moat_core::keys`), named in
//! the footer's key metadata (`moat1:{dek version}:{salt}`); the file's object path is its AAD
//! prefix, not stored in the file, so a file copied or moved to another path, table, version or
//! tenant fails authentication. A reader must find an encrypted footer where the catalog says
//! the table is encrypted: a plaintext file put in its place is refused, not read.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::config::{EncryptionFactoryOptions, TableParquetOptions};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::execution::parquet_encryption::EncryptionFactory;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::object_store::path::Path;
use datafusion::object_store::{GetOptions, GetRange, ObjectStore};
use datafusion::parquet::encryption::decrypt::{FileDecryptionProperties, KeyRetriever};
use datafusion::parquet::encryption::encrypt::FileEncryptionProperties;
use datafusion::parquet::errors::ParquetError;
use moat_core::MoatError;
use moat_core::ids::TenantId;
use moat_core::keys::{FileKeyRef, SecretKey, Zeroizing, file_key, open_secret, seal_secret, sealed_version, unsealable};

/// The id the engine registers a query's [`TenantFiles`] under.
pub const FACTORY_ID: &str = "moat-tenant-keys";

/// Footer magic of a Parquet file whose footer is encrypted.
const ENCRYPTED_MAGIC: &[u8; 4] = b"PARE";

/// Paths whose encrypted footer was checked, per tenant: at most this many are remembered.
const VERIFIED_PATHS: usize = 100_000;

/// The error of a file that fails decryption: altered, truncated, moved, or under a key that is
/// gone. Never rows.
pub fn integrity_error() -> MoatError {
    MoatError::unavailable(
        "data_integrity_error",
        "a table file failed its integrity check (altered, moved, or encrypted under a key that no longer exists); \
         nothing of it was served: restore the table or import it again",
    )
}

/// A tenant's unwrapped DEKs, every version still readable, and the one new files use.
pub struct TenantKeyring {
    tenant: TenantId,
    keys: BTreeMap<u32, SecretKey>,
    current: u32,
    /// Object paths seen to carry an encrypted footer (paths are immutable: a version is never
    /// rewritten in place).
    verified: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for TenantKeyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeyring").field("tenant", &self.tenant).field("versions", &self.keys.keys().collect::<Vec<_>>()).finish()
    }
}

impl TenantKeyring {
    /// `keys` must hold `current`.
    pub fn new(tenant: TenantId, keys: BTreeMap<u32, SecretKey>, current: u32) -> Result<Self, MoatError> {
        if !keys.contains_key(&current) {
            return Err(MoatError::internal("tenant_key_missing"));
        }
        Ok(Self { tenant, keys, current, verified: Mutex::new(HashSet::new()) })
    }

    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Whether DEK `version` is in this keyring.
    pub fn has_version(&self, version: u32) -> bool {
        self.keys.contains_key(&version)
    }

    /// The DEK version new files are written under.
    pub fn current_version(&self) -> u32 {
        self.current
    }

    /// Seals a tenant secret (a TOTP key, recovery codes) under the current DEK, bound to
    /// `context` (see [`moat_core::keys::seal_secret`]).
    pub fn seal(&self, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, MoatError> {
        let dek = self.keys.get(&self.current).ok_or_else(|| MoatError::internal("tenant_key_missing"))?;
        seal_secret(dek, self.current, context, plain)
    }

    /// Opens a secret sealed under any DEK version of this keyring.
    pub fn open(&self, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, MoatError> {
        let dek = sealed_version(sealed).and_then(|v| self.keys.get(&v)).ok_or_else(unsealable)?;
        open_secret(dek, context, sealed)
    }

    /// How a new file at `path` (an object-store key) is encrypted: under a fresh file key of
    /// the current DEK, bound to its path.
    pub fn encryption_for(&self, path: &str) -> Result<Arc<FileEncryptionProperties>, MoatError> {
        let dek = self.keys.get(&self.current).ok_or_else(|| MoatError::internal("tenant_key_missing"))?;
        let r = FileKeyRef::new(self.current)?;
        let key = file_key(dek, &r.salt);
        FileEncryptionProperties::builder(key.expose().to_vec())
            .with_footer_key_metadata(r.encode())
            .with_aad_prefix(aad(&Path::from(path)))
            .with_aad_prefix_storage(false)
            .build()
            .map_err(|e| {
                tracing::error!(error = %e, "cannot set up file encryption");
                MoatError::internal("encryption_error")
            })
    }

    fn file_key(&self, metadata: &[u8]) -> Result<SecretKey, MoatError> {
        let r = FileKeyRef::parse(metadata).ok_or_else(integrity_error)?;
        let dek = self.keys.get(&r.version).ok_or_else(integrity_error)?;
        Ok(file_key(dek, &r.salt))
    }

    fn is_verified(&self, path: &Path) -> bool {
        self.verified.lock().unwrap_or_else(|p| p.into_inner()).contains(path.as_ref())
    }

    fn mark_verified(&self, path: &Path) {
        let mut v = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= VERIFIED_PATHS {
            v.clear();
        }
        v.insert(path.as_ref().to_owned());
    }
}

fn aad(path: &Path) -> Vec<u8> {
    format!("moat-file-v1:{path}").into_bytes()
}

struct Retriever(Arc<TenantKeyring>);

impl KeyRetriever for Retriever {
    fn retrieve_key(&self, key_metadata: &[u8]) -> Result<Vec<u8>, ParquetError> {
        self.0.file_key(key_metadata).map(|k| k.expose().to_vec()).map_err(|e| ParquetError::External(Box::new(e)))
    }
}

/// Decryption of one tenant's files for one query (registered in its runtime under
/// [`FACTORY_ID`]). It can open only files written under this tenant's DEKs at their own paths.
#[derive(Debug, Clone)]
pub struct TenantFiles {
    keyring: Arc<TenantKeyring>,
    store: Arc<dyn ObjectStore>,
}

impl TenantFiles {
    pub fn new(keyring: Arc<TenantKeyring>, store: Arc<dyn ObjectStore>) -> Self {
        Self { keyring, store }
    }

    /// Refuses a file whose footer is not encrypted (a plaintext file swapped in).
    async fn check_encrypted(&self, path: &Path) -> Result<(), MoatError> {
        if self.keyring.is_verified(path) {
            return Ok(());
        }
        let opts = GetOptions { range: Some(GetRange::Suffix(4)), ..Default::default() };
        let tail = match self.store.get_opts(path, opts).await {
            Ok(r) => r.bytes().await,
            Err(e) => Err(e),
        }
        .map_err(|e| {
            tracing::error!(path = %path, error = %e, "cannot read a table file's footer");
            MoatError::internal("storage_error")
        })?;
        if tail.as_ref() != ENCRYPTED_MAGIC {
            tracing::error!(path = %path, "a table file of an encrypted table is not encrypted");
            return Err(integrity_error());
        }
        self.keyring.mark_verified(path);
        Ok(())
    }
}

#[async_trait]
impl EncryptionFactory for TenantFiles {
    async fn get_file_encryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        _schema: &SchemaRef,
        _file_path: &Path,
    ) -> DfResult<Option<Arc<FileEncryptionProperties>>> {
        // Queries never write files.
        Err(DataFusionError::Plan("queries do not write files".into()))
    }

    async fn get_file_decryption_properties(
        &self,
        _config: &EncryptionFactoryOptions,
        file_path: &Path,
    ) -> DfResult<Option<Arc<FileDecryptionProperties>>> {
        self.check_encrypted(file_path).await.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let props = FileDecryptionProperties::with_key_retriever(Arc::new(Retriever(self.keyring.clone())))
            .with_aad_prefix(aad(file_path))
            .build()?;
        Ok(Some(props))
    }
}

/// The Parquet format of an encrypted table read in `runtime`: its files open only through
/// `keys` (registered there as [`TenantFiles`] under [`FACTORY_ID`]; a session serves one
/// tenant, so every encrypted table of it shares the one factory).
pub fn encrypted_format(runtime: &RuntimeEnv, keys: Arc<TenantKeyring>, store: Arc<dyn ObjectStore>) -> ParquetFormat {
    runtime.register_parquet_encryption_factory(FACTORY_ID, Arc::new(TenantFiles::new(keys, store)));
    let mut options = TableParquetOptions::default();
    options.crypto.factory_id = Some(FACTORY_ID.to_owned());
    ParquetFormat::default().with_options(options)
}

/// Whether a Parquet error is a failed decryption or authentication, or an altered file
/// (rather than a bug or a transient IO fault).
pub fn is_integrity_failure(e: &ParquetError) -> bool {
    match e {
        ParquetError::External(inner) => {
            inner.downcast_ref::<MoatError>().is_some_and(|m| m.code == "data_integrity_error") || inner.to_string().contains("Unspecified")
        }
        ParquetError::General(m) | ParquetError::EOF(m) => is_integrity_message(m),
        _ => false,
    }
}

/// Whether an error's text is the Parquet reader's report of a failed decryption (errors
/// raised while decoding pages reach the engine as text), or of a file whose size changed
/// under the engine (a file replaced after it was listed: never a transient fault).
pub fn is_integrity_message(m: &str) -> bool {
    let m = m.to_ascii_lowercase();
    ["decrypt", "encrypt", "crypto", "aad", "unspecified", "data_integrity_error", "out of range of file"].iter().any(|w| m.contains(w))
}

/// A batch of a table read back (a PII scan, a re-encryption) that failed: the integrity error
/// when a file was altered or cannot be decrypted, else an internal storage error. The
/// library's text goes to the log (it may name files), never to the caller.
pub fn read_back_error(table: &str, e: &dyn std::fmt::Display) -> MoatError {
    let text = e.to_string();
    tracing::error!(table, error = %text, "cannot read a table back");
    if is_integrity_message(&text) { integrity_error() } else { MoatError::internal("storage_error") }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::object_store::ObjectStoreExt;
    use futures::TryStreamExt;
    use moat_core::keys::KEY_LEN;

    use super::*;
    use crate::TableStorage;
    use crate::ingest::{IngestLimits, read_csv, write_parquet};

    fn ring(byte: u8, versions: &[u32], current: u32) -> Arc<TenantKeyring> {
        let keys = versions.iter().map(|v| (*v, SecretKey::from_bytes([byte.wrapping_add(*v as u8); KEY_LEN]))).collect();
        Arc::new(TenantKeyring::new(TenantId::new(), keys, current).unwrap())
    }

    async fn write(s: &TableStorage, key: &str, keys: Option<&Arc<TenantKeyring>>) {
        let (s2, key, enc) = (s.clone(), key.to_owned(), keys.map(|k| k.encryption_for(key).unwrap()));
        tokio::task::spawn_blocking(move || {
            let limits = IngestLimits::default();
            let prepared = read_csv("id,secret\n1,canary-one\n2,canary-two\n".as_bytes(), &Default::default(), &limits).unwrap();
            let (_, w) = write_parquet(prepared, s2.writer(&key), &limits, enc).unwrap();
            w.finish().unwrap();
        })
        .await
        .unwrap();
    }

    async fn read(s: &TableStorage, prefix: &str, keys: Option<Arc<TenantKeyring>>) -> Result<Vec<RecordBatch>, MoatError> {
        let stream = s.read_rows(prefix, 100, keys).await?;
        stream
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| if is_integrity_message(&e.to_string()) { integrity_error() } else { MoatError::internal("storage_error") })
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn files_open_only_with_their_tenants_keys_at_their_own_path() {
        let s = TableStorage::in_memory();
        let a = ring(1, &[1, 2], 2);
        write(&s, "a/t/v1/part-00000.parquet", Some(&a)).await;
        let batches = read(&s, "a/t/v1/", Some(a.clone())).await.unwrap();
        let ids = batches[0].column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values(), &[1, 2]);
        let bytes = s.store().get(&Path::from("a/t/v1/part-00000.parquet")).await.unwrap().bytes().await.unwrap();
        assert!(!bytes.windows(6).any(|w| w == b"canary"), "no value in the clear");
        assert_eq!(&bytes[bytes.len() - 4..], ENCRYPTED_MAGIC);

        // Another tenant's keys; a keyring that lost the version; no keys at all.
        for (what, keys) in [("other tenant", Some(ring(9, &[1, 2], 2))), ("version gone", Some(ring(1, &[1], 1))), ("no keys", None)] {
            assert_eq!(read(&s, "a/t/v1/", keys).await.unwrap_err().code, "data_integrity_error", "{what}");
        }
        // The same bytes at another path (another version of the table).
        s.store().put(&Path::from("a/t/v2/part-00000.parquet"), bytes.clone().into()).await.unwrap();
        assert_eq!(read(&s, "a/t/v2/", Some(a.clone())).await.unwrap_err().code, "data_integrity_error");
        // A plaintext file where an encrypted one belongs.
        write(&s, "a/t/v3/part-00000.parquet", None).await;
        assert_eq!(read(&s, "a/t/v3/", Some(a.clone())).await.unwrap_err().code, "data_integrity_error");
        assert_eq!(read(&s, "a/t/v3/", None).await.unwrap().len(), 1, "plaintext tables (written before encryption) still read");
        // An older DEK version still opens the files written under it.
        let old = ring(1, &[1], 1);
        write(&s, "a/t/v4/part-00000.parquet", Some(&old)).await;
        assert_eq!(read(&s, "a/t/v4/", Some(a)).await.unwrap().len(), 1);
    }

    #[test]
    fn key_metadata_names_the_version_and_a_fresh_salt() {
        let a = ring(1, &[3], 3);
        let p1 = a.encryption_for("x/part.parquet").unwrap();
        let p2 = a.encryption_for("x/part.parquet").unwrap();
        let r1 = FileKeyRef::parse(p1.footer_key_metadata().unwrap()).unwrap();
        let r2 = FileKeyRef::parse(p2.footer_key_metadata().unwrap()).unwrap();
        assert_eq!((r1.version, r2.version), (3, 3));
        assert_ne!(r1.salt, r2.salt, "one key per file");
        assert_ne!(p1.footer_key(), p2.footer_key());
        assert!(!p1.store_aad_prefix(), "the path is not stored: a moved file cannot supply it");
        assert!(TenantKeyring::new(TenantId::new(), BTreeMap::new(), 1).is_err());
    }
}
