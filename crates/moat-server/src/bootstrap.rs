//! Offline work on a data dir: `moat init`, `moat superadmin create`, signing-key loading and
//! rotation. No server needed.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use moat_core::audit::{Actor, AuditEvent, AuditKeys, Category, Outcome};
use moat_core::clock::UnixSeconds;
use moat_core::ids::{Email, UserId};
use moat_core::password::{PasswordPolicy, hash_password};
use moat_core::role::Role;
use moat_core::token::{ACCESS_TTL_S, KeySet, SigningKey};
use moat_core::{MoatError, Result};
use moat_store::NewUser;
use moat_store::audit_log::CheckpointKey;
use serde::{Deserialize, Serialize};

use crate::config::{Config, DataDir, default_toml};

pub(crate) fn io_err(what: &str, path: &Path, e: std::io::Error) -> MoatError {
    MoatError::new(moat_core::ErrorKind::Internal, "io_error", format!("cannot {what} {}: {e}", path.display()))
}

/// Writes a new file readable by the owner only; refuses to overwrite.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
    let mut f = create_secret_file(path)?;
    f.write_all(contents).and_then(|_| f.sync_all()).map_err(|e| io_err("write", path, e))
}

/// Creates a new file readable by the owner only (0600); refuses to overwrite.
pub fn create_secret_file(path: &Path) -> Result<fs::File> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| io_err("create", path, e))
}

/// Switches TLS on in `moat.toml` with a self-signed development certificate (made once, then
/// reused); returns the certificate's path.
pub fn enable_self_signed_tls(dir: &DataDir) -> Result<PathBuf> {
    let (cert, key) = crate::tls::write_self_signed(&dir.root)?;
    let path = dir.config_file();
    let text = fs::read_to_string(&path).map_err(|e| io_err("read", &path, e))?;
    let cert_line = format!("cert = \"{cert}\"   # self-signed for development (moat init --self-signed)");
    let key_line = format!("key = \"{key}\"");
    let mut out = Vec::new();
    let (mut in_tls, mut seen) = (false, false);
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_tls = trimmed.starts_with("[tls]");
            seen |= in_tls;
        }
        if in_tls && trimmed.starts_with("cert ") {
            out.push(cert_line.clone());
        } else if in_tls && trimmed.starts_with("key ") {
            out.push(key_line.clone());
        } else {
            out.push(line.to_owned());
        }
    }
    if !seen {
        out.extend([String::new(), "[tls]".to_owned(), cert_line, key_line]);
    }
    write_config(dir, &(out.join("\n") + "\n"))?;
    Ok(dir.root.join(cert))
}

/// Replaces `moat.toml` whole (a temporary file renamed over it: never half written).
fn write_config(dir: &DataDir, text: &str) -> Result<()> {
    let tmp = dir.root.join("moat.toml.tmp");
    fs::write(&tmp, text).map_err(|e| io_err("write", &tmp, e))?;
    fs::rename(&tmp, dir.config_file()).map_err(|e| io_err("write", &dir.config_file(), e))
}

pub fn create_private_dir(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|e| io_err("create directory", path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| io_err("protect", path, e))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitOutcome {
    Created,
    AlreadyInitialised,
}

/// Metadata kept beside each signing key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct KeyMeta {
    created_at: UnixSeconds,
    retired_at: Option<UnixSeconds>,
}

/// Creates the data dir. `moat.toml` is written last, so an interrupted init can be re-run and
/// an initialised dir is never overwritten.
pub async fn init(dir: &DataDir, now: UnixSeconds) -> Result<InitOutcome> {
    if dir.config_file().exists() {
        return Ok(InitOutcome::AlreadyInitialised);
    }
    create_private_dir(&dir.root)?;
    if !dir.master_key().exists() {
        let key = moat_core::secret::random_bytes::<32>()?;
        write_secret_file(&dir.master_key(), format!("{}\n", hex::encode(key)).as_bytes())?;
    }
    create_private_dir(&dir.signing_dir())?;
    if list_keys(dir)?.is_empty() {
        new_signing_key(dir, now)?;
    }
    checkpoint_seed(dir)?;
    local_key_provider(dir)?;
    let cfg = Config::default();
    moat_store::open_with(&cfg.store_url(&dir.root), cfg.store.admin_url.as_deref()).await?;
    // The store holds password hashes and the audit trail: owner only.
    #[cfg(unix)]
    for f in ["moat.db", "moat.db-wal", "moat.db-shm"] {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.root.join(f);
        if p.exists() {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).map_err(|e| io_err("protect", &p, e))?;
        }
    }
    write_config(dir, &default_toml())?;
    Ok(InitOutcome::Created)
}

/// The deployment's master key (32 random bytes, hex, in `master.key`, owner-only).
pub fn master_key(dir: &DataDir) -> Result<[u8; 32]> {
    let path = dir.master_key();
    let text = fs::read_to_string(&path).map_err(|e| io_err("read", &path, e))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| MoatError::invalid("bad_master_key", format!("{}: expected 64 hex digits", path.display())))
}

/// The key platform accounts' secrets (second factors) are sealed under: HKDF-SHA256 of the
/// master key, info `moat-platform-secret-v1` (never stored in the database).
pub fn platform_secret_key(dir: &DataDir) -> Result<moat_core::keys::SecretKey> {
    let master = moat_core::keys::SecretKey::from_bytes(master_key(dir)?);
    Ok(moat_core::keys::derive(&master, b"", b"moat-platform-secret-v1"))
}

/// The audit trail's HMAC keys, derived from the master key (never stored in the database).
pub fn audit_keys(dir: &DataDir) -> Result<AuditKeys> {
    Ok(AuditKeys::new(master_key(dir)?))
}

/// The local master keys (`keys/master/kek-NNNN.key`, 32 random bytes as hex, owner-only),
/// oldest first; the first is made when there is none (data dirs made before encryption at
/// rest have none).
pub fn local_key_provider(dir: &DataDir) -> Result<moat_core::keys::LocalKeyProvider> {
    let kd = dir.kek_dir();
    create_private_dir(&kd)?;
    let mut keks = read_keks(&kd)?;
    if keks.is_empty() {
        new_local_kek(dir)?;
        keks = read_keks(&kd)?;
    }
    moat_core::keys::LocalKeyProvider::new(keks)
}

/// Adds the next local master key file (`moat key rotate-master`); returns its id.
pub fn new_local_kek(dir: &DataDir) -> Result<String> {
    let kd = dir.kek_dir();
    create_private_dir(&kd)?;
    let next = read_keks(&kd)?.len() + 1;
    let stem = format!("kek-{next:04}");
    let key = moat_core::secret::random_bytes::<32>()?;
    write_secret_file(&kd.join(format!("{stem}.key")), format!("{}\n", hex::encode(key)).as_bytes())?;
    Ok(format!("local:{stem}"))
}

fn read_keks(kd: &Path) -> Result<Vec<moat_core::keys::LocalKek>> {
    let mut names: Vec<String> = fs::read_dir(kd)
        .map_err(|e| io_err("read", kd, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("kek-") && n.ends_with(".key"))
        .collect();
    names.sort();
    names
        .iter()
        .map(|name| {
            let path = kd.join(name);
            let text = fs::read_to_string(&path).map_err(|e| io_err("read", &path, e))?;
            let key: [u8; 32] = hex::decode(text.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or_else(|| MoatError::invalid("bad_master_key", format!("{}: expected 64 hex digits", path.display())))?;
            let stem = name.trim_end_matches(".key");
            Ok(moat_core::keys::LocalKek { id: format!("local:{stem}"), key: moat_core::keys::SecretKey::from_bytes(key) })
        })
        .collect()
}

/// The Ed25519 seed that signs audit checkpoints; created on first use (data dirs made before
/// the transparency log have none).
pub fn checkpoint_seed(dir: &DataDir) -> Result<[u8; 32]> {
    let path = dir.checkpoint_key();
    if !path.exists() {
        if let Some(parent) = path.parent() {
            create_private_dir(parent)?;
        }
        let seed = moat_core::checkpoint::generate_seed().map_err(|_| MoatError::internal("keygen"))?;
        write_secret_file(&path, format!("{}\n", hex::encode(seed)).as_bytes())?;
    }
    let text = fs::read_to_string(&path).map_err(|e| io_err("read", &path, e))?;
    hex::decode(text.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| MoatError::invalid("bad_checkpoint_key", format!("{}: expected 64 hex digits", path.display())))
}

pub fn checkpoint_key(dir: &DataDir, cfg: &Config) -> Result<CheckpointKey> {
    CheckpointKey::new(&cfg.audit.origin, checkpoint_seed(dir)?)
}

fn new_signing_key(dir: &DataDir, now: UnixSeconds) -> Result<String> {
    let (key, pem) = SigningKey::generate()?;
    let kid = key.kid().to_owned();
    write_secret_file(&dir.signing_dir().join(format!("{kid}.pem")), pem.as_bytes())?;
    let meta = serde_json::to_vec(&KeyMeta { created_at: now, retired_at: None }).map_err(|_| MoatError::internal("encode"))?;
    write_secret_file(&dir.signing_dir().join(format!("{kid}.json")), &meta)?;
    Ok(kid)
}

fn list_keys(dir: &DataDir) -> Result<Vec<(String, KeyMeta)>> {
    let sd = dir.signing_dir();
    if !sd.exists() {
        return Ok(vec![]);
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(&sd).map_err(|e| io_err("read", &sd, e))? {
        let path = entry.map_err(|e| io_err("read", &sd, e))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(kid) = path.file_stem().and_then(|s| s.to_str()).map(str::to_owned) else { continue };
        let text = fs::read(&path).map_err(|e| io_err("read", &path, e))?;
        let meta: KeyMeta = serde_json::from_slice(&text)
            .map_err(|e| MoatError::new(moat_core::ErrorKind::Internal, "bad_signing_key", format!("{}: {e}", path.display())))?;
        out.push((kid, meta));
    }
    out.sort_by_key(|(kid, m)| (m.created_at, kid.clone()));
    Ok(out)
}

/// Loads the keys that still matter: the newest signs; retired ones verify until the last token
/// they signed has expired.
pub fn load_keyset(dir: &DataDir, cfg: &Config, now: UnixSeconds) -> Result<KeySet> {
    let mut keys = Vec::new();
    let grace = ACCESS_TTL_S + cfg.auth.leeway_s as i64;
    for (kid, meta) in list_keys(dir)? {
        if meta.retired_at.is_some_and(|r| r + grace < now) {
            continue;
        }
        let path = dir.signing_dir().join(format!("{kid}.pem"));
        let pem = fs::read_to_string(&path).map_err(|e| io_err("read", &path, e))?;
        keys.push(SigningKey::from_pem(&kid, &pem)?);
    }
    KeySet::new(keys, &cfg.auth.issuer, &cfg.auth.audience, cfg.auth.leeway_s)
}

/// Retires the signing key and creates a new one (servers pick it up at restart; tokens signed
/// by the old key keep verifying until they expire). Returns the new kid.
pub fn rotate_signing_key(dir: &DataDir, now: UnixSeconds) -> Result<String> {
    for (kid, mut meta) in list_keys(dir)? {
        if meta.retired_at.is_none() {
            meta.retired_at = Some(now);
            let path = dir.signing_dir().join(format!("{kid}.json"));
            let bytes = serde_json::to_vec(&meta).map_err(|_| MoatError::internal("encode"))?;
            fs::write(&path, bytes).map_err(|e| io_err("write", &path, e))?;
        }
    }
    new_signing_key(dir, now)
}

/// Loads the data dir's config (file → environment) for offline commands.
pub fn load_config(dir: &DataDir) -> Result<Config> {
    if !dir.config_file().exists() {
        return Err(MoatError::new(
            moat_core::ErrorKind::NotFound,
            "not_initialised",
            format!("{} is not a moat data dir; run `moat init --data-dir {}` first", dir.root.display(), dir.root.display()),
        ));
    }
    Config::load(Some(&dir.config_file()), std::env::vars(), &Default::default())
}

/// Creates a platform Super Admin directly in the store (offline bootstrap).
pub async fn create_super_admin(dir: &DataDir, email: &str, password: &str, now: UnixSeconds) -> Result<UserId> {
    let cfg = load_config(dir)?;
    let email = Email::parse(email)?;
    let local = email.as_str().split('@').next();
    PasswordPolicy::default().check(password, local)?;
    let stores = moat_store::open_with(&cfg.store_url(&dir.root), cfg.store.admin_url.as_deref()).await?;
    let id = UserId::new();
    let hash = hash_password(password)?;
    stores
        .meta
        .create_user(&NewUser { id, tenant_id: None, email: email.clone(), role: Role::SuperAdmin, password_hash: hash, now })
        .await?;
    let event = AuditEvent::new(None, Category::Admin, "superadmin.create", Actor::system("cli"), Outcome::Success)
        .resource(format!("user:{id}"))
        .details(serde_json::json!({"email": email.as_str()}));
    moat_store::audit_log::append_one(&*stores.audit, &audit_keys(dir)?, event, now * 1000).await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_core::ids::{Email, SessionId, TenantId, UserId};
    use moat_core::principal::Scope;
    use moat_core::token::AccessGrant;

    const NOW: i64 = 1_800_000_000;

    fn grant() -> AccessGrant {
        AccessGrant {
            scope: Scope::Tenant(TenantId::new()),
            user_id: UserId::new(),
            email: Email::parse("a@acme.example").expect("email"),
            role: Role::Viewer,
            session_id: SessionId::new(),
        }
    }

    #[tokio::test]
    async fn rotation_keeps_old_tokens_until_they_expire() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path().join("d"));
        assert_eq!(init(&dir, NOW).await.expect("init"), InitOutcome::Created);
        assert_eq!(init(&dir, NOW).await.expect("init"), InitOutcome::AlreadyInitialised);
        let cfg = load_config(&dir).expect("config");
        let before = load_keyset(&dir, &cfg, NOW).expect("keys");
        let (old_token, _) = before.issue(&grant(), NOW).expect("issue");

        let new_kid = rotate_signing_key(&dir, NOW + 60).expect("rotate");
        let after = load_keyset(&dir, &cfg, NOW + 60).expect("keys");
        assert_eq!(after.jwks().keys.len(), 2);
        assert!(after.verify(&old_token, NOW + 60).is_ok(), "old tokens still verify");
        let (new_token, _) = after.issue(&grant(), NOW + 60).expect("issue");
        assert_eq!(jsonwebtoken::decode_header(&new_token).expect("header").kid, Some(new_kid));

        // Past the access-token lifetime plus leeway the retired key is no longer loaded.
        let later = load_keyset(&dir, &cfg, NOW + 60 + ACCESS_TTL_S + 31).expect("keys");
        assert_eq!(later.jwks().keys.len(), 1);
    }

    #[tokio::test]
    async fn super_admin_bootstrap_validates() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = DataDir::new(tmp.path().join("d"));
        assert_eq!(create_super_admin(&dir, "a@b.example", "Tr1cky-Gazelle", NOW).await.map_err(|e| e.code), Err("not_initialised"));
        init(&dir, NOW).await.expect("init");
        assert_eq!(create_super_admin(&dir, "a@b.example", "password", NOW).await.map_err(|e| e.code), Err("weak_password"));
        assert!(create_super_admin(&dir, "a@b.example", "Tr1cky-Gazelle", NOW).await.is_ok());
        assert_eq!(create_super_admin(&dir, "A@B.example", "Tr1cky-Gazelle", NOW).await.map_err(|e| e.code), Err("user_exists"));
    }
}
