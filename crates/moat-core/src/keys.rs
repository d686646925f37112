//! The key hierarchy: a master key (key-encryption key, KEK) that stays in its provider wraps
//! one data-encryption key (DEK) per tenant and version; table files are encrypted under keys
//! derived from the DEK, one per file.
//!
//! ```text
//! KEK (key file, HSM, cloud KMS; never in the database)
//!  └─ wraps DEK(tenant, version)   AES-256-GCM, AAD = "moat-dek-v1:" ‖ tenant ‖ ":" ‖ version
//!      ├─ derives file key         HKDF-SHA256(DEK, salt = 32 random bytes per file)
//!      └─ derives secret key       HKDF-SHA256(DEK, salt = 32 random bytes per sealed secret)
//! ```
//!
//! Tenant secrets (TOTP secrets and recovery codes) are sealed the same way as files: each
//! [`seal_secret`] derives a key of its own from a fresh salt, so no key ever encrypts twice.
//!
//! Nonces: a DEK is never used to encrypt directly. Each file gets its own key from a fresh
//! 256-bit salt (recorded in the file's key metadata), and within a file the Parquet writer
//! counts its nonces up from a random start, so no (key, nonce) pair repeats. Wrapping draws a
//! random 96-bit nonce per wrap; a KEK wraps a few DEKs per tenant and rotation, far below the
//! 2^32 random-nonce bound of AES-GCM.
//!
//! Everything here is pure: providers that touch files or devices live in the server.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use zeroize::Zeroize;
/// Plaintext secrets handed out by [`open_secret`] are wiped when dropped.
pub use zeroize::Zeroizing;

use crate::error::MoatError;
use crate::ids::TenantId;
use crate::secret::random_bytes;

/// Bytes of a DEK, a KEK and a file key (AES-256).
pub const KEY_LEN: usize = 32;
/// Bytes of a file's key-derivation salt.
pub const SALT_LEN: usize = 32;

/// Key material that is wiped from memory when dropped and never printed.
#[derive(Clone)]
pub struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, MoatError> {
        Ok(Self(random_bytes::<KEY_LEN>()?))
    }

    pub fn expose(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// What a wrapped DEK is bound to: unwrapping it under another tenant or version fails, so a
/// wrapped key copied between rows of the database is useless.
pub fn dek_context(tenant: TenantId, version: u32) -> Vec<u8> {
    format!("moat-dek-v1:{tenant}:{version}").into_bytes()
}

/// Where master keys live. Implementations: a local key file (the default) and PKCS#11 (an
/// HSM, which wraps and unwraps inside the device). A cloud KMS plugs in the same way: `wrap`
/// is its Encrypt call with `context` as additional authenticated data (AWS KMS
/// `EncryptionContext`, GCP KMS `additionalAuthenticatedData`), `unwrap` its Decrypt.
///
/// Calls may block (a device, a network): the server makes them off its async workers, and
/// only when a tenant's keys are first loaded, created or rotated, never per query.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// The provider's current master key, as recorded beside every DEK it wraps
    /// (e.g. `local:kek-0001`, `pkcs11:moat-kek-2`).
    fn current_kek(&self) -> String;

    /// Wraps `dek` under the current master key, bound to `context`.
    fn wrap(&self, dek: &SecretKey, context: &[u8]) -> Result<Vec<u8>, MoatError>;

    /// Unwraps a DEK wrapped under master key `kek` with the same `context`.
    fn unwrap(&self, kek: &str, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, MoatError>;
}

/// AES-256-GCM wrap: `nonce ‖ ciphertext ‖ tag` (12 + 32 + 16 bytes).
pub fn gcm_wrap(kek: &SecretKey, dek: &SecretKey, context: &[u8]) -> Result<Vec<u8>, MoatError> {
    let key = gcm_key(kek)?;
    let nonce = random_bytes::<NONCE_LEN>()?;
    let mut out = Vec::with_capacity(NONCE_LEN + KEY_LEN + AES_256_GCM.tag_len());
    out.extend_from_slice(&nonce);
    let mut sealed = dek.expose().to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(context), &mut sealed)
        .map_err(|_| MoatError::internal("key_wrap_failed"))?;
    out.extend_from_slice(&sealed);
    sealed.zeroize();
    Ok(out)
}

/// Reverses [`gcm_wrap`]. Any change to the bytes, another master key or another context
/// fails the same way.
pub fn gcm_unwrap(kek: &SecretKey, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, MoatError> {
    let failed = || {
        MoatError::unavailable(
            "key_unwrap_failed",
            "a tenant key could not be unwrapped: the master key is not the one that wrapped it, or the wrapped key was altered",
        )
    };
    if wrapped.len() != NONCE_LEN + KEY_LEN + AES_256_GCM.tag_len() {
        return Err(failed());
    }
    let key = gcm_key(kek)?;
    let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| failed())?;
    let mut buf = sealed.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(context), &mut buf).map_err(|_| failed())?;
    let bytes: Result<[u8; KEY_LEN], _> = (&*plain).try_into();
    let out = bytes.map(SecretKey::from_bytes).map_err(|_| failed());
    buf.zeroize();
    out
}

fn gcm_key(k: &SecretKey) -> Result<LessSafeKey, MoatError> {
    UnboundKey::new(&AES_256_GCM, k.expose()).map(LessSafeKey::new).map_err(|_| MoatError::internal("key_wrap_failed"))
}

/// The key of one file: HKDF-SHA256 of the DEK with the file's salt
/// (info `moat-file-key-v1`).
pub fn file_key(dek: &SecretKey, salt: &[u8; SALT_LEN]) -> SecretKey {
    derive(dek, salt, b"moat-file-key-v1")
}

/// HKDF-SHA256 of `ikm` with `salt` and `info`, 32 bytes.
pub fn derive(ikm: &SecretKey, salt: &[u8], info: &[u8]) -> SecretKey {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    let mut out = [0u8; KEY_LEN];
    // A 32-byte HKDF output cannot fail; were it to, the key stays zero and decryption fails
    // closed (nothing is ever encrypted under it: the writer checks, see `FileKeyRef::new`).
    let _ = Salt::new(HKDF_SHA256, salt).extract(ikm.expose()).expand(&[info], HKDF_SHA256).and_then(|okm| okm.fill(&mut out));
    SecretKey(out)
}

/// What a file's key metadata says: which DEK version and which salt. Written into the file
/// (Parquet `footer_key_metadata`) as `moat1:{version}:{salt hex}`; never secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileKeyRef {
    pub version: u32,
    pub salt: [u8; SALT_LEN],
}

impl FileKeyRef {
    /// A fresh reference for a new file under DEK `version`.
    pub fn new(version: u32) -> Result<Self, MoatError> {
        Ok(Self { version, salt: random_bytes::<SALT_LEN>()? })
    }

    pub fn encode(&self) -> Vec<u8> {
        format!("moat1:{}:{}", self.version, hex::encode(self.salt)).into_bytes()
    }

    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(bytes).ok()?;
        let mut parts = s.split(':');
        if parts.next()? != "moat1" {
            return None;
        }
        let version = parts.next()?.parse().ok()?;
        let salt = hex::decode(parts.next()?).ok()?.try_into().ok()?;
        parts.next().is_none().then_some(Self { version, salt })
    }
}

/// Why a sealed secret would not open: one answer for every cause (altered bytes, another
/// DEK, a row copied to another account), naming none of the secret.
pub fn unsealable() -> MoatError {
    MoatError::unavailable(
        "secret_unreadable",
        "a stored secret could not be decrypted: it was altered, copied from another account, or its data key is gone",
    )
}

const SEALED_HEADER: usize = 4 + SALT_LEN + NONCE_LEN;

/// Seals a tenant secret under DEK `version`, bound to `context` (what the secret belongs to,
/// e.g. `mfa:{tenant}:{user}`): `version (u32, big-endian) ‖ salt (32) ‖ nonce (12) ‖
/// ciphertext ‖ tag (16)`, AES-256-GCM under HKDF-SHA256(DEK, salt, info `moat-secret-v1`),
/// with the version and the context as additional data. Opening it as another account's
/// secret, under another version or after any change to the bytes fails.
pub fn seal_secret(dek: &SecretKey, version: u32, context: &[u8], plain: &[u8]) -> Result<Vec<u8>, MoatError> {
    let salt = random_bytes::<SALT_LEN>()?;
    let nonce = random_bytes::<NONCE_LEN>()?;
    let key = gcm_key(&derive(dek, &salt, b"moat-secret-v1"))?;
    let mut out = Vec::with_capacity(SEALED_HEADER + plain.len() + AES_256_GCM.tag_len());
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&nonce);
    let mut sealed = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(secret_aad(version, context)), &mut sealed)
        .map_err(|_| MoatError::internal("secret_seal_failed"))?;
    out.extend_from_slice(&sealed);
    sealed.zeroize();
    Ok(out)
}

/// The DEK version a sealed secret names (to find its key); `None` if it is too short to be one.
pub fn sealed_version(sealed: &[u8]) -> Option<u32> {
    let head: [u8; 4] = sealed.get(..4)?.try_into().ok()?;
    (sealed.len() >= SEALED_HEADER + AES_256_GCM.tag_len()).then_some(u32::from_be_bytes(head))
}

/// Reverses [`seal_secret`] with the DEK of the version [`sealed_version`] names.
pub fn open_secret(dek: &SecretKey, context: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, MoatError> {
    let version = sealed_version(sealed).ok_or_else(unsealable)?;
    let salt: [u8; SALT_LEN] = sealed[4..4 + SALT_LEN].try_into().map_err(|_| unsealable())?;
    let nonce = Nonce::try_assume_unique_for_key(&sealed[4 + SALT_LEN..SEALED_HEADER]).map_err(|_| unsealable())?;
    let key = gcm_key(&derive(dek, &salt, b"moat-secret-v1"))?;
    let mut buf = Zeroizing::new(sealed[SEALED_HEADER..].to_vec());
    let n = key.open_in_place(nonce, Aad::from(secret_aad(version, context)), &mut buf).map_err(|_| unsealable())?.len();
    buf.truncate(n);
    Ok(buf)
}

fn secret_aad(version: u32, context: &[u8]) -> Vec<u8> {
    let mut aad = format!("moat-secret-v1:{version}:").into_bytes();
    aad.extend_from_slice(context);
    aad
}

/// The local master key: 32 bytes from a key file that only the server's user may read.
#[derive(Clone)]
pub struct LocalKek {
    /// `local:{file stem}`.
    pub id: String,
    pub key: SecretKey,
}

/// A key file provider: the newest file's key wraps, any listed file unwraps (older ones stay
/// until `moat key rotate-master` has re-wrapped every DEK).
#[derive(Clone)]
pub struct LocalKeyProvider {
    keks: Vec<LocalKek>,
}

impl LocalKeyProvider {
    /// `keks` oldest first; the last one is current.
    pub fn new(keks: Vec<LocalKek>) -> Result<Self, MoatError> {
        if keks.is_empty() {
            return Err(MoatError::invalid("no_master_key", "the local key provider has no key file"));
        }
        Ok(Self { keks })
    }

    fn current(&self) -> &LocalKek {
        // `new` refuses an empty list.
        &self.keks[self.keks.len() - 1]
    }
}

impl fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKeyProvider").field("keks", &self.keks.iter().map(|k| k.id.as_str()).collect::<Vec<_>>()).finish()
    }
}

impl KeyProvider for LocalKeyProvider {
    fn current_kek(&self) -> String {
        self.current().id.clone()
    }

    fn wrap(&self, dek: &SecretKey, context: &[u8]) -> Result<Vec<u8>, MoatError> {
        gcm_wrap(&self.current().key, dek, context)
    }

    fn unwrap(&self, kek: &str, wrapped: &[u8], context: &[u8]) -> Result<SecretKey, MoatError> {
        let k = self.keks.iter().find(|k| k.id == kek).ok_or_else(|| {
            MoatError::unavailable(
                "master_key_missing",
                format!("a tenant key is wrapped under master key {kek:?}, which this server does not have (restore its key file)"),
            )
        })?;
        gcm_unwrap(&k.key, wrapped, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(id: &str, b: u8) -> LocalKek {
        LocalKek { id: id.into(), key: SecretKey::from_bytes([b; KEY_LEN]) }
    }

    #[test]
    fn a_wrapped_dek_opens_only_under_its_master_key_and_context() {
        let p = LocalKeyProvider::new(vec![kek("local:kek-0001", 1)]).expect("provider");
        let (a, b) = (TenantId(uuid::Uuid::now_v7()), TenantId(uuid::Uuid::now_v7()));
        let dek = SecretKey::generate().expect("rng");
        let w = p.wrap(&dek, &dek_context(a, 1)).expect("wrap");
        assert_eq!(w.len(), 60);
        assert_eq!(p.unwrap("local:kek-0001", &w, &dek_context(a, 1)).expect("unwrap").expose(), dek.expose());
        // Another tenant, another version: the row was copied.
        for ctx in [dek_context(b, 1), dek_context(a, 2)] {
            assert_eq!(p.unwrap("local:kek-0001", &w, &ctx).expect_err("bound").code, "key_unwrap_failed");
        }
        // Every single flipped bit is caught.
        for i in 0..w.len() * 8 {
            let mut t = w.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(p.unwrap("local:kek-0001", &t, &dek_context(a, 1)).is_err(), "bit {i}");
        }
        assert!(p.unwrap("local:kek-0001", &w[..59], &dek_context(a, 1)).is_err());
        // Another master key, and one the server does not have.
        let other = LocalKeyProvider::new(vec![kek("local:kek-0001", 2)]).expect("provider");
        assert_eq!(other.unwrap("local:kek-0001", &w, &dek_context(a, 1)).expect_err("wrong kek").code, "key_unwrap_failed");
        assert_eq!(p.unwrap("local:kek-0009", &w, &dek_context(a, 1)).expect_err("missing").code, "master_key_missing");
        // Two wraps of one key differ (fresh nonce).
        assert_ne!(w, p.wrap(&dek, &dek_context(a, 1)).expect("wrap"));
    }

    #[test]
    fn the_newest_master_key_wraps_and_older_ones_still_unwrap() {
        let old = LocalKeyProvider::new(vec![kek("local:kek-0001", 1)]).expect("provider");
        let t = TenantId(uuid::Uuid::now_v7());
        let dek = SecretKey::generate().expect("rng");
        let w1 = old.wrap(&dek, &dek_context(t, 3)).expect("wrap");
        let both = LocalKeyProvider::new(vec![kek("local:kek-0001", 1), kek("local:kek-0002", 2)]).expect("provider");
        assert_eq!(both.current_kek(), "local:kek-0002");
        assert_eq!(both.unwrap("local:kek-0001", &w1, &dek_context(t, 3)).expect("old").expose(), dek.expose());
        let w2 = both.wrap(&dek, &dek_context(t, 3)).expect("rewrap");
        assert!(both.unwrap("local:kek-0001", &w2, &dek_context(t, 3)).is_err(), "wrapped under the new key");
        assert_eq!(both.unwrap("local:kek-0002", &w2, &dek_context(t, 3)).expect("new").expose(), dek.expose());
        assert!(LocalKeyProvider::new(vec![]).is_err());
        assert_eq!(format!("{both:?}"), r#"LocalKeyProvider { keks: ["local:kek-0001", "local:kek-0002"] }"#);
        assert_eq!(format!("{dek:?}"), "SecretKey(..)");
    }

    #[test]
    fn a_sealed_secret_opens_only_under_its_dek_version_and_context() {
        let dek = SecretKey::from_bytes([3; KEY_LEN]);
        let s = seal_secret(&dek, 7, b"mfa:t1:u1", b"twenty bytes secret!").expect("seal");
        assert_eq!(sealed_version(&s), Some(7));
        assert_eq!(&open_secret(&dek, b"mfa:t1:u1", &s).expect("open")[..], b"twenty bytes secret!");
        // Two seals of one secret share nothing but the version.
        let again = seal_secret(&dek, 7, b"mfa:t1:u1", b"twenty bytes secret!").expect("seal");
        assert_ne!(s[4..], again[4..]);
        // Copied to another account, or under another DEK: refused, naming nothing.
        let e = open_secret(&dek, b"mfa:t1:u2", &s).expect_err("other account");
        assert_eq!(e.code, "secret_unreadable");
        assert!(open_secret(&SecretKey::from_bytes([4; KEY_LEN]), b"mfa:t1:u1", &s).is_err());
        // The version is bound: relabelling the blob as another version fails.
        let mut relabelled = s.clone();
        relabelled[..4].copy_from_slice(&8u32.to_be_bytes());
        assert!(open_secret(&dek, b"mfa:t1:u1", &relabelled).is_err());
        // Every flipped bit and every cut.
        for i in 0..s.len() * 8 {
            let mut t = s.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert!(open_secret(&dek, b"mfa:t1:u1", &t).is_err(), "bit {i}");
        }
        for n in 0..s.len() {
            assert!(open_secret(&dek, b"mfa:t1:u1", &s[..n]).is_err(), "cut at {n}");
        }
        assert_eq!(sealed_version(&[0, 0, 0, 1]), None);
        // The ciphertext holds nothing of the secret in the clear.
        assert!(!s.windows(6).any(|w| w == b"twenty"));
    }

    #[test]
    fn file_keys_differ_per_salt_and_dek_and_key_refs_round_trip() {
        let d1 = SecretKey::from_bytes([7; KEY_LEN]);
        let d2 = SecretKey::from_bytes([8; KEY_LEN]);
        let r = FileKeyRef::new(4).expect("rng");
        let s = FileKeyRef::new(4).expect("rng");
        assert_ne!(r.salt, s.salt);
        assert_ne!(file_key(&d1, &r.salt).expose(), file_key(&d1, &s.salt).expose());
        assert_ne!(file_key(&d1, &r.salt).expose(), file_key(&d2, &r.salt).expose());
        assert_eq!(file_key(&d1, &r.salt).expose(), file_key(&d1, &r.salt).expose());
        assert_ne!(file_key(&d1, &r.salt).expose(), &[0u8; KEY_LEN]);
        assert_eq!(FileKeyRef::parse(&r.encode()), Some(r));
        for bad in [
            "",
            "moat1",
            "moat2:4:00",
            "moat1:x:00",
            "moat1:4:zz",
            "moat1:4:0011",
            &format!("{}:extra", String::from_utf8_lossy(&r.encode())),
        ] {
            assert_eq!(FileKeyRef::parse(bad.as_bytes()), None, "{bad}");
        }
    }
}
