//! `moat backup create|verify|restore`: one encrypted, integrity-checked archive of a data
//! dir — the metadata and audit store, every tenant's current table files, the audit and token
//! signing keys — sealed under a backup key that is kept apart from the data
//! (`moat_core::backup` is the format).
//!
//! What goes in, read in this order so that the archive is one consistent moment:
//! 1. the small files (`moat.toml`, `master.key` — the audit HMAC root —, checkpoint and token
//!    signing keys, published checkpoints, TLS files, demo logins), read first so that no
//!    published checkpoint is newer than the store;
//! 2. a snapshot of the store, taken while servers keep writing: `VACUUM INTO` for the
//!    embedded store; on PostgreSQL a logical dump of schema `moat` of the platform's database
//!    and of every database that tenants of their own live in, each in one `REPEATABLE READ`
//!    snapshot (`moat_store::postgres::backup`; the databases are separate moments, each
//!    consistent in itself). Relations in tenant schemas are the platform team's to back up
//!    with PostgreSQL's tools; the manifest lists them under `not_carried`;
//! 3. the files of every table version that snapshot names, hard-linked into a staging
//!    directory at once (a superseded version is removed 60 s after it is replaced, so the
//!    links are made long before; the links keep the bytes however long the archive takes);
//! 4. every tenant's data keys that are not destroyed, unwrapped by the master key and wrapped
//!    again inside the archive under a key derived from the backup key and the archive's salt.
//!
//! The master keys (`keys/master/`, or an HSM) are never archived: a restore wraps the data
//! keys under the target's own master key, so a backup is restorable onto another machine or
//! HSM, and whoever holds a backup and its key holds that archive's data, nothing more.
//! Destroyed (crypto-shredded) keys are not in an archive made after the deletion.
//!
//! Restore writes into an empty data dir only, stages everything in `.restoring-{uuid}/`
//! inside it, and moves it into place only once the whole archive has been authenticated and
//! the data keys re-wrapped; on any failure the target is left empty. `moat.toml` is moved
//! last, so an interrupted restore never leaves a data dir that looks initialised.
//!
//! A PostgreSQL archive loads into databases that hold no moat data (the platform's where the
//! configuration or `--store-url`/`--store-admin-url` say, each tenant database where its
//! tenants' rows say), each in one transaction that also re-wraps the data keys; they commit
//! together once every one has loaded — tenant databases first, the platform's, which routes
//! to them, last — so a failure before that leaves every database as it was. The store is
//! then opened as a server opens it (grants to the runtime role, every tenant's role and empty
//! schema) and the restore recorded.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use moat_core::audit::{Actor, AuditEvent, Category, Outcome};
use moat_core::backup::{self as format, BackupKey, Opener, Sealer};
use moat_core::clock::UnixSeconds;
use moat_core::ids::TenantId;
use moat_core::keys::{dek_context, gcm_unwrap, gcm_wrap};
use moat_core::{MoatError, Result};
use moat_store::postgres::backup::{self as pg_backup, Dump as PgDump};
use moat_store::sqlite::SqliteStore;
use moat_store::{AuditStore, MetaStore, NewAuditEntry, TenantKeyRecord, TenantRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bootstrap::{create_private_dir, create_secret_file, io_err, write_secret_file};
use crate::config::{Config, DataDir};

/// Archive format of the manifest (inside the stream; the stream has its own version): 1 for
/// an embedded store (readable by every moat that reads backups), 2 for a PostgreSQL store.
const MANIFEST_FORMAT: u32 = 1;
const MANIFEST_FORMAT_POSTGRES: u32 = 2;
/// Largest small file (configuration, keys, checkpoints) and largest manifest or key list.
const MAX_SMALL: u64 = 64 * 1024 * 1024;
const MANIFEST: &str = "manifest.json";
const DEKS: &str = "deks.json";
const STORE: &str = "moat.db";
const DATA: &str = "data";
const CONFIG: &str = "moat.toml";
/// The directory of a PostgreSQL store's dumps, one per database.
const PG: &str = "pg";
/// The dump of the platform's database.
const PLATFORM_DB: &str = "platform";

/// Told the bytes done and the bytes in all, as an archive is written or read.
pub type Progress = Box<dyn FnMut(u64, u64) + Send>;

/// Given each entry of an archive being read: its name, size, bytes and a progress tick.
type EntrySink<'a> = dyn FnMut(&str, u64, &mut dyn Read, &mut dyn FnMut(u64)) -> Result<()> + 'a;

/// What an archive holds, written first in it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub moat_version: String,
    pub created_at: UnixSeconds,
    pub key_fingerprint: String,
    pub tenants: Vec<TenantSummary>,
    /// Records per audit trail in the archived store.
    pub trails: BTreeMap<String, u64>,
    /// Every entry after the manifest, in order.
    pub files: Vec<FileEntry>,
    /// `sqlite` or `postgres`.
    #[serde(default = "embedded")]
    pub store: String,
    /// A PostgreSQL store: one dump per database (the platform's, then each database that
    /// tenants of their own live in).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub databases: Vec<DatabaseDump>,
    /// What the store holds that the archive does not carry: relations in tenant schemas,
    /// which the platform team backs up with the database's own tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_carried: Vec<String>,
}

fn embedded() -> String {
    "sqlite".to_owned()
}

/// One database of a PostgreSQL store, as archived under `pg/{name}/`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatabaseDump {
    /// `platform`, or `db{n}` for a database that tenants of their own live in.
    pub name: String,
    /// The owner role's URL of a tenant database (restored into the same database, which the
    /// tenants' rows name); `None` for the platform's, restored where the configuration says.
    pub admin_url: Option<String>,
    pub dump: PgDump,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantSummary {
    pub id: TenantId,
    pub slug: String,
    pub status: String,
    pub tables: u64,
    /// Data-key versions carried (destroyed ones are not).
    pub data_keys: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
}

impl Manifest {
    /// Bytes of all entries.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
    /// Table files carried.
    pub fn data_files(&self) -> usize {
        self.files.iter().filter(|f| f.name.starts_with("data/")).count()
    }
    pub fn tables(&self) -> u64 {
        self.tenants.iter().map(|t| t.tables).sum()
    }
}

/// A tenant data key inside the archive, wrapped under the archive's inner key.
#[derive(Debug, Serialize, Deserialize)]
struct ArchivedKey {
    tenant: TenantId,
    version: u32,
    wrapped: String,
}

/// What `create` made.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    pub archive: PathBuf,
    pub bytes: u64,
    pub sha256: String,
    pub manifest: Manifest,
}

/// Reads a backup key file; refuses one that others may read.
pub fn read_key_file(path: &Path) -> Result<BackupKey> {
    let meta = fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => MoatError::not_found(
            "backup_key_missing",
            format!("no backup key at {} (make one with `moat backup keygen --out {}`)", path.display(), path.display()),
        ),
        _ => io_err("read", path, e),
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(MoatError::invalid(
                "backup_key_exposed",
                format!("{} may be read by other users; `chmod 600` it (and keep it off this host)", path.display()),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    let text = fs::read_to_string(path).map_err(|e| io_err("read", path, e))?;
    BackupKey::parse(&text)
}

/// Makes a new backup key file (0600); refuses to overwrite one.
pub fn write_key_file(path: &Path) -> Result<BackupKey> {
    if path.exists() {
        return Err(MoatError::conflict(
            "backup_key_exists",
            format!("{} already exists; a backup key is never overwritten", path.display()),
        ));
    }
    let key = BackupKey::generate()?;
    write_secret_file(path, key.encode().as_bytes())?;
    Ok(key)
}

/// Where a configuration keeps the store.
enum StoreAt {
    Embedded(PathBuf),
    Postgres { url: String, admin_url: String },
}

fn store_at(cfg: &Config, root: &Path) -> Result<StoreAt> {
    let url = cfg.store_url(root);
    if let Some(path) = url.strip_prefix("sqlite://") {
        return Ok(StoreAt::Embedded(PathBuf::from(path)));
    }
    let admin_url = cfg.store.admin_url.clone().ok_or_else(|| {
        MoatError::invalid(
            "store_owner_role",
            "store.admin_url is not set: a backup or restore of a PostgreSQL store runs as its owner role",
        )
    })?;
    Ok(StoreAt::Postgres { url, admin_url })
}

/// The small files of a data dir that a backup carries, by archive name (relative paths).
fn small_file_names(cfg: &Config) -> Vec<String> {
    let mut names =
        vec!["master.key".to_owned(), "demo.json".to_owned(), "keys/audit-checkpoint.key".to_owned(), "keys/signing".to_owned()];
    names.push("tls".to_owned());
    let publish = Path::new(&cfg.audit.publish_dir);
    if !cfg.audit.publish_dir.is_empty() && publish.is_relative() {
        names.push(cfg.audit.publish_dir.trim_matches('/').to_owned());
    }
    names
}

/// Every file under `path` (a file or a directory), as (archive name, full path), sorted.
fn walk(root: &Path, name: &str, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let path = root.join(name);
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("read", &path, e)),
    };
    if meta.is_file() {
        out.push((name.to_owned(), path));
    } else if meta.is_dir() {
        let mut children: Vec<String> =
            fs::read_dir(&path).map_err(|e| io_err("read", &path, e))?.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
        children.sort();
        for c in children {
            walk(root, &format!("{name}/{c}"), out)?;
        }
    }
    Ok(())
}

/// Removes what opening a store snapshot left beside it (WAL files, the search index), so
/// that `moat.db` alone is archived or moved into place.
fn remove_store_sidecars(dir: &Path) {
    for suffix in ["-wal", "-shm", ".search", ".search-wal", ".search-shm"] {
        let _ = fs::remove_file(dir.join(format!("{STORE}{suffix}")));
    }
}

/// Removes a directory when dropped, unless kept.
struct Scratch {
    path: PathBuf,
    keep: bool,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    w: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

/// Copies exactly `size` bytes, reporting progress.
fn copy_exact(r: &mut dyn Read, w: &mut dyn Write, size: u64, progress: &mut dyn FnMut(u64), what: &str) -> Result<()> {
    let mut left = size;
    let mut buf = vec![0u8; 256 * 1024];
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = r.read(&mut buf[..want]).map_err(|e| format::from_io(e, what))?;
        if n == 0 {
            return Err(MoatError::invalid("backup_corrupt", format!("{what}: ends before its {size} bytes")));
        }
        w.write_all(&buf[..n]).map_err(|e| format::from_io(e, what))?;
        left -= n as u64;
        progress(n as u64);
    }
    Ok(())
}

/// What the archive carries of the store, read as one moment (per database), and the store
/// to record the backup in.
struct Captured {
    tenants: Vec<TenantSummary>,
    /// Tenant slug, table, location of its files.
    tables: Vec<(String, String, String)>,
    /// Live data keys, as the store holds them (wrapped by the master key).
    keys: Vec<TenantKeyRecord>,
    trails: BTreeMap<String, u64>,
    /// The store's files in the staging directory (archive names).
    files: Vec<String>,
    databases: Vec<DatabaseDump>,
    not_carried: Vec<String>,
    audit: Arc<dyn AuditStore>,
}

impl Captured {
    fn new(audit: Arc<dyn AuditStore>) -> Self {
        Self {
            tenants: Vec::new(),
            tables: Vec::new(),
            keys: Vec::new(),
            trails: BTreeMap::new(),
            files: Vec::new(),
            databases: Vec::new(),
            not_carried: Vec::new(),
            audit,
        }
    }

    /// Adds a tenant with its tables and live keys.
    fn tenant(&mut self, t: &TenantRecord, tables: Vec<(String, String)>, keys: Vec<TenantKeyRecord>) {
        let keys: Vec<_> = keys.into_iter().filter(|k| k.wrapped.is_some()).collect();
        self.tenants.push(TenantSummary {
            id: t.id,
            slug: t.slug.clone(),
            status: t.status.as_str().to_owned(),
            tables: tables.len() as u64,
            data_keys: keys.len() as u64,
        });
        self.tables.extend(tables.into_iter().map(|(name, location)| (t.slug.clone(), name, location)));
        self.keys.extend(keys);
    }
}

/// The embedded store: one `VACUUM INTO` snapshot, read for what the archive needs.
async fn capture_sqlite(path: &Path, staging: &Path) -> Result<Captured> {
    let live = SqliteStore::open(path).await?;
    let snapshot = staging.join(STORE);
    live.snapshot_into(&snapshot).await?;
    let mut c = Captured::new(Arc::new(live));
    let snap = SqliteStore::open(&snapshot).await?;
    for t in snap.list_tenants().await? {
        let tables = snap.list_tables(t.id).await?.into_iter().map(|r| (r.name, r.location)).collect();
        c.tenant(&t, tables, snap.tenant_keys(t.id).await?);
    }
    c.trails = snap.trail_heads().await?.into_iter().map(|(t, h)| (t, h.size)).collect();
    snap.close().await?;
    remove_store_sidecars(staging);
    c.files.push(STORE.to_owned());
    Ok(c)
}

/// A PostgreSQL store: the platform's database and then every database that tenants of their
/// own live in, each dumped in one snapshot of its own (`moat_store::postgres::backup`).
async fn capture_postgres(url: &str, admin_url: &str, staging: &Path) -> Result<Captured> {
    let stores = moat_store::open_with(url, Some(admin_url)).await?;
    let mut c = Captured::new(stores.audit);
    let mut platform = pg_backup::dump(admin_url, &staging.join(PG).join(PLATFORM_DB)).await?;
    let tenants = std::mem::take(&mut platform.tenants);
    let mut dumps = vec![(PLATFORM_DB.to_owned(), None, platform)];
    let mut dedicated: Vec<String> = tenants.iter().filter_map(|t| t.database.as_ref().map(|d| d.admin_url.clone())).collect();
    dedicated.sort();
    dedicated.dedup();
    for (i, admin) in dedicated.into_iter().enumerate() {
        let name = format!("db{}", i + 1);
        let snap = pg_backup::dump(&admin, &staging.join(PG).join(&name))
            .await
            .map_err(|e| MoatError { message: format!("a tenant database ({name}): {}", e.message), ..e })?;
        dumps.push((name, Some(admin), snap));
    }
    let mut tables: HashMap<TenantId, Vec<(String, String)>> = HashMap::new();
    let mut keys: HashMap<TenantId, Vec<TenantKeyRecord>> = HashMap::new();
    for (name, admin_url, snap) in dumps {
        for (tenant, table, location) in snap.tables {
            tables.entry(tenant).or_default().push((table, location));
        }
        for k in snap.keys {
            keys.entry(k.tenant_id).or_default().push(k);
        }
        c.trails.extend(snap.trails);
        c.not_carried
            .extend(snap.relations.into_iter().map(|r| format!("relation {r} (a tenant schema; back it up with PostgreSQL's tools)")));
        c.files.extend(snap.dump.tables.iter().map(|t| format!("{PG}/{name}/{}", t.file_name())));
        c.databases.push(DatabaseDump { name, admin_url, dump: snap.dump });
    }
    for t in &tenants {
        c.tenant(t, tables.remove(&t.id).unwrap_or_default(), keys.remove(&t.id).unwrap_or_default());
    }
    Ok(c)
}

/// Writes a backup of the data dir `dir` to `out` (a new file). Works while a server runs on
/// the data dir. `progress` gets the bytes archived as they go; the manifest (returned) says
/// how many in all. Records `backup.create` in the platform's audit trail.
pub async fn create(dir: &DataDir, out: &Path, key: &BackupKey, now: UnixSeconds, progress: Progress) -> Result<Created> {
    let cfg = crate::bootstrap::load_config(dir)?;
    let store = store_at(&cfg, &dir.root)?;
    if out.exists() {
        return Err(MoatError::conflict("backup_exists", format!("{} already exists; name a new file", out.display())));
    }
    let staging = dir.root.join("tmp").join(format!("backup-{}", uuid::Uuid::now_v7().simple()));
    create_private_dir(&staging)?;
    let scratch = Scratch { path: staging.clone(), keep: false };

    // 1. The small files, before the snapshot.
    let mut small: Vec<(String, Vec<u8>)> = Vec::new();
    let mut names = vec![(CONFIG.to_owned(), dir.config_file())];
    for n in small_file_names(&cfg) {
        walk(&dir.root, &n, &mut names)?;
    }
    for (name, path) in names {
        let len = fs::metadata(&path).map_err(|e| io_err("read", &path, e))?.len();
        if len > MAX_SMALL {
            return Err(MoatError::invalid("backup_file_too_large", format!("{} is {len} bytes; not a file moat made", path.display())));
        }
        small.push((name, fs::read(&path).map_err(|e| io_err("read", &path, e))?));
    }

    // 2. The store, as one snapshot (per database).
    let (format_version, store_kind, captured) = match &store {
        StoreAt::Embedded(path) => (MANIFEST_FORMAT, "sqlite", capture_sqlite(path, &staging).await?),
        StoreAt::Postgres { url, admin_url } => (MANIFEST_FORMAT_POSTGRES, "postgres", capture_postgres(url, admin_url, &staging).await?),
    };
    let Captured { tenants, tables, keys: wrapped_keys, trails, files: store_files, databases, mut not_carried, audit: live } = captured;

    // 3. The files of those table versions, linked at once.
    let data = cfg.table_data_dir(&dir.root);
    let mut data_files = Vec::new();
    for (tenant, table, location) in &tables {
        if crate::pg_source::relation_of(location).is_some() {
            not_carried.push(format!("table {table} of tenant {tenant}: linked to {location} (a tenant schema)"));
            continue;
        }
        let location = location.trim_matches('/');
        format::check_entry_name(location).map_err(|_| MoatError::internal("bad_table_location"))?;
        let mut files = Vec::new();
        walk(&data, location, &mut files)?;
        if files.is_empty() {
            return Err(MoatError::unavailable(
                "backup_inconsistent",
                format!(
                    "the files of table {table} of tenant {tenant} are missing (the tenant or table was removed as the backup began?); run it again"
                ),
            ));
        }
        for (name, path) in files {
            let link = staging.join(DATA).join(&name);
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent).map_err(|e| io_err("create directory", parent, e))?;
            }
            if fs::hard_link(&path, &link).is_err() {
                // Another file system: a copy (slower, same bytes).
                fs::copy(&path, &link).map_err(|e| io_err("copy", &path, e))?;
            }
            data_files.push(format!("{DATA}/{name}"));
        }
    }

    // 4. Write the archive beside its final name, then rename it into place.
    let out_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let partial = out_dir.join(format!(
        ".{}.{}.partial",
        out.file_name().and_then(|n| n.to_str()).unwrap_or("backup"),
        uuid::Uuid::now_v7().simple()
    ));
    let provider = crate::keyprovider::open(dir, &cfg.keys)?;
    let key_fp = key.fingerprint();
    let key = key.clone();
    let job_staging = staging.clone();
    let job_partial = partial.clone();
    let job = tokio::task::spawn_blocking(move || -> Result<(u64, String, Manifest)> {
        let mut progress = progress;
        let file = create_secret_file(&job_partial)?;
        let hashing = Hashing { w: BufWriter::with_capacity(1 << 20, file), hash: Sha256::new(), bytes: 0 };
        let mut sealer = Sealer::new(hashing, &key)?;
        let inner = key.inner_key(sealer.header());
        let mut archived = Vec::with_capacity(wrapped_keys.len());
        for k in &wrapped_keys {
            let ctx = dek_context(k.tenant_id, k.version);
            let dek = provider.unwrap(&k.kek, k.wrapped.as_deref().unwrap_or_default(), &ctx)?;
            archived.push(ArchivedKey { tenant: k.tenant_id, version: k.version, wrapped: hex::encode(gcm_wrap(&inner, &dek, &ctx)?) });
        }
        let deks = serde_json::to_vec(&archived).map_err(|_| MoatError::internal("encode"))?;
        let mut files: Vec<FileEntry> = small.iter().map(|(n, b)| FileEntry { name: n.clone(), size: b.len() as u64 }).collect();
        files.push(FileEntry { name: DEKS.to_owned(), size: deks.len() as u64 });
        for name in store_files.into_iter().chain(data_files) {
            let path = job_staging.join(&name);
            let size = fs::metadata(&path).map_err(|e| io_err("read", &path, e))?.len();
            files.push(FileEntry { name, size });
        }
        let manifest = Manifest {
            format: format_version,
            moat_version: env!("CARGO_PKG_VERSION").to_owned(),
            created_at: now,
            key_fingerprint: key.fingerprint(),
            tenants,
            trails,
            files,
            store: store_kind.to_owned(),
            databases,
            not_carried,
        };
        let total = manifest.bytes();
        let mut done = 0u64;
        let mut tick = |n: u64| {
            done += n;
            progress(done, total);
        };
        let m = serde_json::to_vec(&manifest).map_err(|_| MoatError::internal("encode"))?;
        let w = &mut sealer;
        let write = |w: &mut Sealer<_>, bytes: &[u8]| w.write_all(bytes).map_err(|e| format::from_io(e, "cannot write the archive"));
        format::write_entry(w, MANIFEST, m.len() as u64)?;
        write(w, &m)?;
        for (name, bytes) in &small {
            format::write_entry(w, name, bytes.len() as u64)?;
            write(w, bytes)?;
            tick(bytes.len() as u64);
        }
        format::write_entry(w, DEKS, deks.len() as u64)?;
        write(w, &deks)?;
        tick(deks.len() as u64);
        for f in manifest.files.iter().skip(small.len() + 1) {
            let path = job_staging.join(&f.name);
            let mut src = fs::File::open(&path).map_err(|e| io_err("read", &path, e))?;
            format::write_entry(w, &f.name, f.size)?;
            copy_exact(&mut src, w, f.size, &mut tick, &f.name)?;
        }
        format::write_end(w)?;
        let hashing = sealer.finish()?;
        let Hashing { w, hash, bytes } = hashing;
        let file = w.into_inner().map_err(|e| io_err("write", &job_partial, e.into_error()))?;
        file.sync_all().map_err(|e| io_err("write", &job_partial, e))?;
        Ok((bytes, hex::encode(hash.finalize()), manifest))
    });
    let result = job.await.map_err(|_| MoatError::internal("backup_task_failed")).and_then(|r| r);
    let (bytes, sha256, manifest) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&partial);
            return Err(e);
        }
    };
    if let Err(e) = fs::rename(&partial, out) {
        let _ = fs::remove_file(&partial);
        return Err(io_err("write", out, e));
    }
    if let Ok(d) = fs::File::open(&out_dir) {
        let _ = d.sync_all();
    }
    drop(scratch);

    let event = AuditEvent::new(None, Category::Admin, "backup.create", Actor::system("cli"), Outcome::Success)
        .resource(format!("backup:{}", out.file_name().and_then(|n| n.to_str()).unwrap_or("")))
        .details(serde_json::json!({
            "archive": out.display().to_string(),
            "sha256": sha256,
            "bytes": bytes,
            "key_fingerprint": key_fp,
            "tenants": manifest.tenants.len(),
            "tables": manifest.tables(),
            "files": manifest.data_files(),
            "trails": manifest.trails,
            "store": manifest.store,
            "not_carried": manifest.not_carried.len(),
        }));
    moat_store::audit_log::append_one(&*live, &crate::bootstrap::audit_keys(dir)?, event, now * 1000).await?;
    Ok(Created { archive: out.to_path_buf(), bytes, sha256, manifest })
}

/// Reads a whole archive, authenticating every byte: the manifest first, then each entry
/// (checked against the manifest) handed to `entry`; fails unless the archive ends where
/// the manifest says it does.
fn read_archive(
    archive: &Path,
    key: &BackupKey,
    progress: &mut dyn FnMut(u64, u64),
    entry: &mut EntrySink<'_>,
) -> Result<(Manifest, BackupKey, moat_core::backup::Header)> {
    let file = fs::File::open(archive).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => MoatError::not_found("backup_not_found", format!("no archive at {}", archive.display())),
        _ => io_err("read", archive, e),
    })?;
    let mut r = Opener::new(BufReader::with_capacity(1 << 20, file), key)?;
    let header = r.header().clone();
    let manifest: Manifest = match format::read_entry(&mut r)? {
        Some((name, size)) if name == MANIFEST && size <= MAX_SMALL => {
            let mut m = Vec::new();
            copy_exact(&mut r, &mut m, size, &mut |_| {}, MANIFEST)?;
            serde_json::from_slice(&m).map_err(|e| MoatError::invalid("backup_corrupt", format!("the manifest cannot be read: {e}")))?
        }
        _ => return Err(MoatError::invalid("backup_corrupt", "the archive does not start with its manifest")),
    };
    if !(MANIFEST_FORMAT..=MANIFEST_FORMAT_POSTGRES).contains(&manifest.format) {
        return Err(MoatError::invalid(
            "backup_version_unsupported",
            format!(
                "manifest format {} is not supported by this moat (it reads formats {MANIFEST_FORMAT} to {MANIFEST_FORMAT_POSTGRES})",
                manifest.format
            ),
        ));
    }
    let total = manifest.bytes();
    let mut done = 0u64;
    let mut expected = manifest.files.iter();
    loop {
        let next = format::read_entry(&mut r)?;
        let want = expected.next();
        match (next, want) {
            (None, None) => break,
            (Some((name, size)), Some(f)) if name == f.name && size == f.size => {
                let mut tick = |n: u64| {
                    done += n;
                    progress(done, total);
                };
                entry(&name, size, &mut r, &mut tick)?;
            }
            (got, want) => {
                return Err(MoatError::invalid(
                    "backup_corrupt",
                    format!(
                        "the archive holds {} where its manifest lists {}",
                        got.map_or("nothing more".to_owned(), |(n, s)| format!("{n} ({s} bytes)")),
                        want.map_or("nothing more".to_owned(), |f| format!("{} ({} bytes)", f.name, f.size))
                    ),
                ));
            }
        }
    }
    // The end marker must be the end of the last, authenticated segment.
    let mut rest = [0u8; 1];
    match r.read(&mut rest).map_err(|e| format::from_io(e, "cannot read the archive"))? {
        0 if r.is_complete() => {}
        _ => return Err(MoatError::invalid("backup_corrupt", "bytes follow the archive's end marker")),
    }
    Ok((manifest, key.clone(), header))
}

/// Checks an archive whole without restoring it; returns its manifest.
pub async fn verify(archive: &Path, key: &BackupKey, progress: Progress) -> Result<Manifest> {
    let (archive, key) = (archive.to_path_buf(), key.clone());
    tokio::task::spawn_blocking(move || {
        let mut progress = progress;
        read_archive(&archive, &key, &mut *progress, &mut |name, size, r, tick| copy_exact(r, &mut io::sink(), size, tick, name))
            .map(|(m, _, _)| m)
    })
    .await
    .map_err(|_| MoatError::internal("backup_task_failed"))?
}

/// Where a restore puts the store, when not where the archived configuration says. What is
/// given is written into the restored `moat.toml`.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// `store.url`: for an archive of a PostgreSQL store, the database (runtime role) that the
    /// platform's dump is loaded into.
    pub store_url: Option<String>,
    /// `store.admin_url`: that database's owner role, which loads it.
    pub store_admin_url: Option<String>,
}

/// Restores an archive into `target`, which must be empty (or not exist). The tenants' data
/// keys are wrapped under the master key that the archived configuration names (a new local
/// key file, or the configured HSM). Records `backup.restore` in every restored trail.
pub async fn restore(archive: &Path, key: &BackupKey, target: &DataDir, now: UnixSeconds, progress: Progress) -> Result<Manifest> {
    restore_with(archive, key, target, &RestoreOptions::default(), now, progress).await
}

/// [`restore`], with the store named by `opts`. An archive of a PostgreSQL store loads into
/// databases that hold no moat data: the platform's where the configuration (or `opts`) says,
/// each tenant database where the tenants' rows say.
pub async fn restore_with(
    archive: &Path,
    key: &BackupKey,
    target: &DataDir,
    opts: &RestoreOptions,
    now: UnixSeconds,
    progress: Progress,
) -> Result<Manifest> {
    let not_empty = || {
        MoatError::conflict(
            "backup_target_not_empty",
            format!("{} is not empty; restore into a new or empty directory", target.root.display()),
        )
    };
    let created_root = match fs::read_dir(&target.root) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(not_empty());
            }
            false
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => return Err(io_err("read", &target.root, e)),
    };
    create_private_dir(&target.root)?;
    let staging = target.root.join(format!(".restoring-{}", uuid::Uuid::now_v7().simple()));
    create_private_dir(&staging)?;
    // On failure the target is left as it was found: empty, or absent.
    let mut undo = Scratch { path: if created_root { target.root.clone() } else { staging.clone() }, keep: false };
    let outcome = restore_staged(archive, key, target, &staging, opts, now, progress).await;
    match outcome {
        Ok(m) => {
            undo.keep = true;
            Ok(m)
        }
        Err(e) => {
            if !created_root {
                // Whatever was moved into the (empty) target before the failure goes too.
                if let Ok(entries) = fs::read_dir(&target.root) {
                    for e in entries.flatten() {
                        let p = e.path();
                        let _ = if p.is_dir() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                    }
                }
            }
            Err(e)
        }
    }
}

async fn restore_staged(
    archive: &Path,
    key: &BackupKey,
    target: &DataDir,
    staging: &Path,
    opts: &RestoreOptions,
    now: UnixSeconds,
    progress: Progress,
) -> Result<Manifest> {
    // 1. Authenticate and unpack everything into the staging directory.
    let (archive_path, job_key, job_staging) = (archive.to_path_buf(), key.clone(), staging.to_path_buf());
    let (manifest, key, header, deks) = tokio::task::spawn_blocking(move || {
        let mut progress = progress;
        let mut deks = Vec::new();
        let (m, key, header) = read_archive(&archive_path, &job_key, &mut *progress, &mut |name, size, r, tick| {
            if name == DEKS {
                if size > MAX_SMALL {
                    return Err(MoatError::invalid("backup_corrupt", "the key list is too large"));
                }
                return copy_exact(r, &mut deks, size, tick, name);
            }
            if name == "keys/master" || name.starts_with("keys/master/") {
                return Err(MoatError::invalid("backup_corrupt", format!("{name}: an archive never carries master keys")));
            }
            let path = job_staging.join(name);
            if let Some(parent) = path.parent() {
                create_private_dir(parent)?;
            }
            let f = create_secret_file(&path)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            copy_exact(r, &mut w, size, tick, name)?;
            let f = w.into_inner().map_err(|e| io_err("write", &path, e.into_error()))?;
            f.sync_all().map_err(|e| io_err("write", &path, e))
        })?;
        Ok::<_, MoatError>((m, key, header, deks))
    })
    .await
    .map_err(|_| MoatError::internal("backup_task_failed"))??;

    // 2. The archived configuration (with the store `opts` names) decides where the store and
    //    the table files go: files inside the data dir, the store of the archive's kind.
    let staged = DataDir::new(staging.to_path_buf());
    if opts.store_url.is_some() || opts.store_admin_url.is_some() {
        set_store_urls(&staged.config_file(), opts)?;
    }
    let cfg = Config::load(Some(&staged.config_file()), std::env::vars(), &Default::default())?;
    let store = store_at(&cfg, &target.root)?;
    let data = cfg.table_data_dir(&target.root);
    let inside = |p: &Path| {
        let rel = p.strip_prefix(&target.root).ok()?;
        rel.components().all(|c| matches!(c, std::path::Component::Normal(_))).then(|| rel.to_path_buf())
    };
    let layout = || {
        MoatError::invalid(
            "backup_restore_layout",
            "the archived configuration keeps the store or the table files outside the data dir (store.url, ingest.data_dir); \
             restore needs both inside it",
        )
    };
    let data_rel = inside(&data).ok_or_else(layout)?;
    let store_rel = match (&store, manifest.store.as_str()) {
        (StoreAt::Embedded(path), "sqlite") => Some(inside(path).ok_or_else(layout)?),
        (StoreAt::Postgres { .. }, "postgres") => None,
        (StoreAt::Embedded(_), _) => {
            return Err(MoatError::invalid(
                "backup_store_mismatch",
                "the archive is of a PostgreSQL store: name the database to restore it into \
                 (--store-url and --store-admin-url, or store.url and store.admin_url)",
            ));
        }
        (StoreAt::Postgres { .. }, _) => {
            return Err(MoatError::invalid(
                "backup_store_mismatch",
                "the archive is of an embedded (SQLite) store and restores into one; leave store.url as archived",
            ));
        }
    };

    // 3. The data keys, wrapped under this deployment's master key.
    let archived: Vec<ArchivedKey> =
        serde_json::from_slice(&deks).map_err(|e| MoatError::invalid("backup_corrupt", format!("the key list cannot be read: {e}")))?;
    let inner = key.inner_key(&header);
    let provider = crate::keyprovider::open(&staged, &cfg.keys)?;
    let kek = provider.current_kek();
    let mut rewrapped = Vec::with_capacity(archived.len());
    for k in &archived {
        let ctx = dek_context(k.tenant, k.version);
        let wrapped = hex::decode(&k.wrapped).map_err(|_| MoatError::invalid("backup_corrupt", "a data key in the archive is not hex"))?;
        let dek = gcm_unwrap(&inner, &wrapped, &ctx)
            .map_err(|_| MoatError::invalid("backup_corrupt", format!("data key {} of tenant {} does not open", k.version, k.tenant)))?;
        let p = provider.clone();
        let w = tokio::task::spawn_blocking(move || p.wrap(&dek, &ctx)).await.map_err(|_| MoatError::internal("backup_task_failed"))??;
        rewrapped.push(Rewrapped { tenant: k.tenant, version: k.version, kek: kek.clone(), wrapped: w });
    }

    // 4. The store, with those keys and the restore on the record of every trail.
    let audit_keys = crate::bootstrap::audit_keys(&staged)?;
    let entries = restore_records(&manifest, archive, &kek, now);
    match &store {
        StoreAt::Embedded(_) => {
            let db = SqliteStore::open(&staging.join(STORE)).await?;
            for k in &rewrapped {
                if !db.rewrap_tenant_key(k.tenant, k.version, &k.kek, &k.wrapped).await? {
                    return Err(k.missing());
                }
            }
            db.append_batch(&entries, &audit_keys).await?;
            db.close().await?;
            remove_store_sidecars(staging);
        }
        StoreAt::Postgres { url, admin_url } => {
            restore_postgres(&manifest, &staging.join(PG), url, admin_url, &rewrapped, &entries, &audit_keys).await?;
            fs::remove_dir_all(staging.join(PG)).map_err(|e| io_err("remove", &staging.join(PG), e))?;
        }
    }

    // 5. Into place: everything but the configuration, then the configuration.
    let mut moves: HashMap<PathBuf, PathBuf> = HashMap::new();
    for entry in fs::read_dir(staging).map_err(|e| io_err("read", staging, e))? {
        let name = entry.map_err(|e| io_err("read", staging, e))?.file_name();
        let from = staging.join(&name);
        let to = match (name.to_str(), &store_rel) {
            (Some(CONFIG), _) => continue,
            (Some(STORE), Some(rel)) => target.root.join(rel),
            (Some(DATA), _) => target.root.join(&data_rel),
            _ => target.root.join(&name),
        };
        moves.insert(from, to);
    }
    for (from, to) in &moves {
        if let Some(parent) = to.parent() {
            create_private_dir(parent)?;
        }
        fs::rename(from, to).map_err(|e| io_err("move", to, e))?;
    }
    fs::rename(staged.config_file(), target.config_file()).map_err(|e| io_err("move", &target.config_file(), e))?;
    fs::remove_dir_all(staging).map_err(|e| io_err("remove", staging, e))?;
    Ok(manifest)
}

/// A tenant data key from an archive, wrapped under the restoring deployment's master key.
struct Rewrapped {
    tenant: TenantId,
    version: u32,
    kek: String,
    wrapped: Vec<u8>,
}

impl Rewrapped {
    fn missing(&self) -> MoatError {
        MoatError::invalid("backup_corrupt", format!("data key {} of tenant {} is not in the archived store", self.version, self.tenant))
    }
}

/// `backup.restore`, for the platform's trail and every restored tenant's.
fn restore_records(manifest: &Manifest, archive: &Path, kek: &str, now: UnixSeconds) -> Vec<NewAuditEntry> {
    let name = archive.file_name().and_then(|n| n.to_str()).unwrap_or("").to_owned();
    let details = serde_json::json!({
        "archive": name,
        "created_at": manifest.created_at,
        "key_fingerprint": manifest.key_fingerprint,
        "master_key": kek,
        "tenants": manifest.tenants.len(),
        "tables": manifest.tables(),
        "trails": manifest.trails,
        "store": manifest.store,
    });
    std::iter::once(None)
        .chain(manifest.tenants.iter().map(|t| Some(t.id)))
        .map(|t| NewAuditEntry {
            event: AuditEvent::new(t, Category::Admin, "backup.restore", Actor::system("cli"), Outcome::Success)
                .resource(format!("backup:{name}"))
                .details(details.clone()),
            ts_ms: now * 1000,
            event_id: uuid::Uuid::now_v7().to_string(),
        })
        .collect()
}

/// Loads every database's dump (from `dir`), re-wraps the data keys in the same transactions,
/// commits them (the tenant databases first, the platform's — which routes to them — last),
/// then opens the store as a server does (grants, every tenant's role and schema) and records
/// the restore.
async fn restore_postgres(
    manifest: &Manifest,
    dir: &Path,
    url: &str,
    admin_url: &str,
    keys: &[Rewrapped],
    records: &[NewAuditEntry],
    audit_keys: &moat_core::audit::AuditKeys,
) -> Result<()> {
    if manifest.databases.first().map(|d| d.name.as_str()) != Some(PLATFORM_DB) {
        return Err(MoatError::invalid("backup_corrupt", "the archive of a PostgreSQL store holds no dump of the platform's database"));
    }
    let mut loads = Vec::with_capacity(manifest.databases.len());
    for db in &manifest.databases {
        format::check_entry_name(&db.name)?;
        let admin = db.admin_url.as_deref().unwrap_or(admin_url);
        let loaded = pg_backup::load(admin, &db.dump, &dir.join(&db.name)).await.map_err(|e| {
            let which = if db.admin_url.is_some() { "a tenant database" } else { "the platform's database" };
            MoatError { message: format!("{which}: {}", e.message), ..e }
        })?;
        loads.push(loaded);
    }
    for k in keys {
        let mut found = false;
        for l in &mut loads {
            if l.rewrap_tenant_key(k.tenant, k.version, &k.kek, &k.wrapped).await? {
                found = true;
                break;
            }
        }
        if !found {
            return Err(k.missing());
        }
    }
    let mut loads = loads.into_iter();
    let platform = loads.next().ok_or_else(|| MoatError::internal("backup_no_platform"))?;
    for l in loads {
        l.commit().await?;
    }
    platform.commit().await?;
    let recorded = async {
        let stores = moat_store::open_with(url, Some(admin_url)).await?;
        stores.audit.append_batch(records, audit_keys).await.map(drop)
    };
    recorded.await.map_err(|e| MoatError {
        message: format!(
            "the database was restored, but the restore could not be completed ({}); drop and re-create the database before restoring again",
            e.message
        ),
        ..e
    })
}

/// Writes `opts`' store URLs into a configuration file, keeping the rest of it (comments too).
fn set_store_urls(config: &Path, opts: &RestoreOptions) -> Result<()> {
    let text = fs::read_to_string(config).map_err(|e| io_err("read", config, e))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| MoatError::invalid("backup_corrupt", format!("the archived moat.toml cannot be read: {e}")))?;
    let store = doc.entry("store").or_insert_with(toml_edit::table);
    let Some(store) = store.as_table_like_mut() else {
        return Err(MoatError::invalid("invalid_config", "the archived moat.toml has a `store` that is not a table"));
    };
    for (k, v) in [("url", &opts.store_url), ("admin_url", &opts.store_admin_url)] {
        if let Some(v) = v {
            store.insert(k, toml_edit::value(v.as_str()));
        }
    }
    fs::write(config, doc.to_string()).map_err(|e| io_err("write", config, e))
}
