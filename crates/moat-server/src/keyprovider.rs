//! The master-key providers a server runs with (`[keys] provider`): key files in the data dir
//! (the default) or a PKCS#11 token (an HSM). Both implement `moat_core::keys::KeyProvider`
//! for the tenant keys' wrapping, and [`MasterKeys`] for master-key rotation: a new master key
//! becomes the one that wraps, the older ones keep unwrapping until every tenant key has been
//! re-wrapped. A replica asked for a master key it has not seen (another replica rotated)
//! looks again before it refuses.
//!
//! With PKCS#11 the master key is generated inside the token as a sensitive, non-extractable
//! AES-256 key; tenant keys are encrypted and decrypted by the token (`CKM_AES_GCM`, the same
//! layout and context binding as the local provider), so the master key never reaches this
//! process's memory.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use moat_core::keys::{KEY_LEN, KeyProvider, LocalKeyProvider, SecretKey};
use moat_core::{MoatError, Result};

use crate::config::{DataDir, KeysConfig};

/// A key provider that can also make a new master key.
pub trait MasterKeys: KeyProvider {
    /// Makes a new master key, which wraps from now on; returns its id.
    fn add_master_key(&self) -> Result<String>;
}

/// Opens the provider `[keys]` names: a missing module, token or PIN, or a wrong PIN, stops
/// start-up with one line saying which.
pub fn open(dir: &DataDir, cfg: &KeysConfig) -> Result<std::sync::Arc<dyn MasterKeys>> {
    match cfg.provider.as_str() {
        "pkcs11" => {
            let pin = std::env::var(&cfg.pkcs11_pin_env).map_err(|_| {
                MoatError::invalid(
                    "pkcs11_pin_missing",
                    format!("keys.provider is pkcs11: set the token's user PIN in the environment variable {}", cfg.pkcs11_pin_env),
                )
            })?;
            Ok(std::sync::Arc::new(Pkcs11Keys::open(&cfg.pkcs11_module, &cfg.pkcs11_token, &pin, &cfg.pkcs11_key_label)?))
        }
        _ => Ok(std::sync::Arc::new(LocalKeyFiles::open(dir)?)),
    }
}

/// Master keys in `keys/master/kek-NNNN.key` (see `bootstrap::local_key_provider`).
#[derive(Debug)]
pub struct LocalKeyFiles {
    dir: DataDir,
    keys: RwLock<LocalKeyProvider>,
}

impl LocalKeyFiles {
    pub fn open(dir: &DataDir) -> Result<Self> {
        Ok(Self { dir: dir.clone(), keys: RwLock::new(crate::bootstrap::local_key_provider(dir)?) })
    }

    fn keys(&self) -> LocalKeyProvider {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn reload(&self) -> Result<LocalKeyProvider> {
        let fresh = crate::bootstrap::local_key_provider(&self.dir)?;
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = fresh.clone();
        Ok(fresh)
    }
}

impl KeyProvider for LocalKeyFiles {
    fn current_kek(&self) -> String {
        self.keys().current_kek()
    }

    fn wrap(&self, dek: &SecretKey, context: &[u8]) -> Result<Vec<u8>> {
        self.keys().wrap(dek, context)
    }

    fn unwrap(&self, kek: &str, wrapped: &[u8], context: &[u8]) -> Result<SecretKey> {
        match self.keys().unwrap(kek, wrapped, context) {
            Err(e) if e.code == "master_key_missing" => self.reload()?.unwrap(kek, wrapped, context),
            other => other,
        }
    }
}

impl MasterKeys for LocalKeyFiles {
    fn add_master_key(&self) -> Result<String> {
        let id = crate::bootstrap::new_local_kek(&self.dir)?;
        self.reload()?;
        Ok(id)
    }
}

fn p11_error(code: &'static str, what: &str, e: P11Error) -> MoatError {
    MoatError::unavailable(code, format!("PKCS#11: {what}: {e}"))
}

/// One loaded and initialised module per process: PKCS#11 initialisation is process-wide, and a
/// module is never finalised while any provider may still use it.
fn module(path: &str) -> Result<Pkcs11> {
    static MODULES: OnceLock<Mutex<HashMap<String, Pkcs11>>> = OnceLock::new();
    let mut loaded = MODULES.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(m) = loaded.get(path) {
        return Ok(m.clone());
    }
    let m = Pkcs11::new(path).map_err(|e| p11_error("pkcs11_unavailable", &format!("cannot load module {path}"), e))?;
    match m.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(p11_error("pkcs11_unavailable", &format!("cannot initialise module {path}"), e)),
    }
    loaded.insert(path.to_owned(), m.clone());
    Ok(m)
}

/// Master keys in a PKCS#11 token, labelled `{prefix}-0001`, `{prefix}-0002`, …; the highest
/// number wraps.
pub struct Pkcs11Keys {
    token: String,
    prefix: String,
    /// One signed-in read-write session; operations are short and rare (a keyring load, a
    /// rotation), so they take turns.
    session: Mutex<Session>,
    /// (label, handle), oldest first.
    keks: RwLock<Vec<(String, ObjectHandle)>>,
}

impl std::fmt::Debug for Pkcs11Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keks: Vec<String> = self.keks.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(l, _)| l.clone()).collect();
        f.debug_struct("Pkcs11Keys").field("token", &self.token).field("keks", &keks).finish()
    }
}

const GCM_IV_LEN: usize = 12;
const GCM_TAG_BITS: u64 = 128;

impl Pkcs11Keys {
    /// Signs in to token `token` of module `module_path` and finds the master keys labelled
    /// `{prefix}-NNNN`, making the first one inside the token when there is none.
    pub fn open(module_path: &str, token: &str, pin: &str, prefix: &str) -> Result<Self> {
        let m = module(module_path)?;
        let slots = m.get_slots_with_token().map_err(|e| p11_error("pkcs11_unavailable", "cannot list slots", e))?;
        let slot = slots.into_iter().find(|s| m.get_token_info(*s).is_ok_and(|i| i.label().trim_end() == token)).ok_or_else(|| {
            MoatError::invalid("pkcs11_token_not_found", format!("PKCS#11: no token labelled {token:?} in {module_path}"))
        })?;
        let session =
            m.open_rw_session(slot).map_err(|e| p11_error("pkcs11_unavailable", &format!("cannot open a session on {token:?}"), e))?;
        match session.login(UserType::User, Some(&AuthPin::from(pin))) {
            Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(P11Error::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange | RvError::PinInvalid, _)) => {
                return Err(MoatError::invalid("pkcs11_login_failed", format!("PKCS#11: the PIN for token {token:?} is wrong")));
            }
            Err(e) => return Err(p11_error("pkcs11_login_failed", &format!("cannot sign in to token {token:?}"), e)),
        }
        let keys = Self { token: token.to_owned(), prefix: prefix.to_owned(), session: Mutex::new(session), keks: RwLock::new(Vec::new()) };
        if keys.reload()?.is_empty() {
            keys.add_master_key()?;
        }
        Ok(keys)
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the token's master keys again (another replica may have added one).
    fn reload(&self) -> Result<Vec<(String, ObjectHandle)>> {
        let s = self.session();
        let template = [Attribute::Class(ObjectClass::SECRET_KEY), Attribute::KeyType(KeyType::AES), Attribute::Token(true)];
        let handles = s.find_objects(&template).map_err(|e| p11_error("pkcs11_unavailable", "cannot list keys", e))?;
        let mut found: Vec<(u32, String, ObjectHandle)> = Vec::new();
        for h in handles {
            let attrs =
                s.get_attributes(h, &[AttributeType::Label]).map_err(|e| p11_error("pkcs11_unavailable", "cannot read a key label", e))?;
            for a in attrs {
                if let Attribute::Label(bytes) = a
                    && let Ok(label) = String::from_utf8(bytes)
                    && let Some(n) = self.number_of(&label)
                {
                    found.push((n, label, h));
                }
            }
        }
        found.sort_by_key(|(n, _, _)| *n);
        let keks: Vec<(String, ObjectHandle)> = found.into_iter().map(|(_, l, h)| (l, h)).collect();
        *self.keks.write().unwrap_or_else(|p| p.into_inner()) = keks.clone();
        Ok(keks)
    }

    /// `{prefix}-0007` → 7.
    fn number_of(&self, label: &str) -> Option<u32> {
        let n = label.strip_prefix(&self.prefix)?.strip_prefix('-')?;
        (n.len() >= 4 && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok()).flatten()
    }

    fn id_of(label: &str) -> String {
        format!("pkcs11:{label}")
    }

    fn handle(&self, kek: &str) -> Result<ObjectHandle> {
        let label = kek.strip_prefix("pkcs11:").unwrap_or(kek);
        let find = |keks: &[(String, ObjectHandle)]| keks.iter().find(|(l, _)| l == label).map(|(_, h)| *h);
        if let Some(h) = find(&self.keks.read().unwrap_or_else(|p| p.into_inner())) {
            return Ok(h);
        }
        find(&self.reload()?).ok_or_else(|| {
            MoatError::unavailable(
                "master_key_missing",
                format!("a tenant key is wrapped under master key {kek:?}, which token {:?} does not hold", self.token),
            )
        })
    }
}

impl KeyProvider for Pkcs11Keys {
    fn current_kek(&self) -> String {
        self.keks.read().unwrap_or_else(|p| p.into_inner()).last().map(|(l, _)| Self::id_of(l)).unwrap_or_default()
    }

    fn wrap(&self, dek: &SecretKey, context: &[u8]) -> Result<Vec<u8>> {
        let current = self.keks.read().unwrap_or_else(|p| p.into_inner()).last().map(|(_, h)| *h);
        let key = current.ok_or_else(|| MoatError::invalid("no_master_key", "the PKCS#11 token holds no master key"))?;
        let mut iv = moat_core::secret::random_bytes::<GCM_IV_LEN>()?;
        let params =
            GcmParams::new(&mut iv, context, GCM_TAG_BITS.into()).map_err(|e| p11_error("key_wrap_failed", "GCM parameters", e))?;
        let sealed = self
            .session()
            .encrypt(&Mechanism::AesGcm(params), key, dek.expose())
            .map_err(|e| p11_error("key_wrap_failed", "encrypt", e))?;
        let mut out = iv.to_vec();
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    fn unwrap(&self, kek: &str, wrapped: &[u8], context: &[u8]) -> Result<SecretKey> {
        let failed = || {
            MoatError::unavailable(
                "key_unwrap_failed",
                "a tenant key could not be unwrapped: the master key is not the one that wrapped it, or the wrapped key was altered",
            )
        };
        let key = self.handle(kek)?;
        if wrapped.len() != GCM_IV_LEN + KEY_LEN + (GCM_TAG_BITS as usize) / 8 {
            return Err(failed());
        }
        let (iv, sealed) = wrapped.split_at(GCM_IV_LEN);
        let mut iv = iv.to_vec();
        let params = GcmParams::new(&mut iv, context, GCM_TAG_BITS.into()).map_err(|_| failed())?;
        let mut plain = self.session().decrypt(&Mechanism::AesGcm(params), key, sealed).map_err(|_| failed())?;
        let bytes: std::result::Result<[u8; KEY_LEN], _> = plain.as_slice().try_into();
        let out = bytes.map(SecretKey::from_bytes).map_err(|_| failed());
        zeroize::Zeroize::zeroize(&mut plain);
        out
    }
}

impl MasterKeys for Pkcs11Keys {
    fn add_master_key(&self) -> Result<String> {
        let next = self.reload()?.iter().filter_map(|(l, _)| self.number_of(l)).max().unwrap_or(0) + 1;
        let label = format!("{}-{next:04}", self.prefix);
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen((KEY_LEN as u64).into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.clone().into_bytes()),
        ];
        self.session()
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(|e| p11_error("pkcs11_keygen_failed", &format!("cannot make master key {label:?} in token {:?}", self.token), e))?;
        self.reload()?;
        Ok(Self::id_of(&label))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use moat_core::ids::TenantId;
    use moat_core::keys::dek_context;

    use super::*;

    #[test]
    fn local_key_files_rotate_and_a_replica_picks_up_a_key_it_has_not_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        let a = LocalKeyFiles::open(&dir).unwrap();
        let replica = LocalKeyFiles::open(&dir).unwrap();
        assert_eq!(a.current_kek(), "local:kek-0001");
        let t = TenantId::new();
        let dek = SecretKey::generate().unwrap();
        let w1 = a.wrap(&dek, &dek_context(t, 1)).unwrap();
        assert_eq!(a.add_master_key().unwrap(), "local:kek-0002");
        assert_eq!(a.current_kek(), "local:kek-0002");
        let w2 = a.wrap(&dek, &dek_context(t, 1)).unwrap();
        // The replica still wraps under the key it knows, and reads the new one when it meets it.
        assert_eq!(replica.current_kek(), "local:kek-0001");
        assert_eq!(replica.unwrap("local:kek-0002", &w2, &dek_context(t, 1)).unwrap().expose(), dek.expose());
        assert_eq!(replica.current_kek(), "local:kek-0002");
        assert_eq!(replica.unwrap("local:kek-0001", &w1, &dek_context(t, 1)).unwrap().expose(), dek.expose());
        assert_eq!(replica.unwrap("local:kek-0009", &w1, &dek_context(t, 1)).unwrap_err().code, "master_key_missing");
    }

    /// The PKCS#11 module under test (`MOAT_TEST_PKCS11`, e.g. SoftHSM2's) and the user PIN
    /// its fresh tokens get (`MOAT_TEST_PKCS11_PIN`); `.ci/run` sets both.
    pub(crate) fn pkcs11_under_test() -> Option<(String, String)> {
        let module = std::env::var("MOAT_TEST_PKCS11").ok().filter(|m| !m.is_empty())?;
        Some((module, std::env::var("MOAT_TEST_PKCS11_PIN").unwrap_or_else(|_| "moat-test-pin".into())))
    }

    /// A fresh token (SoftHSM2's `softhsm2-util`) labelled uniquely; returns its label.
    pub(crate) fn fresh_token(pin: &str) -> String {
        let label = format!("moat-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let out = std::process::Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", &label, "--pin", pin, "--so-pin", "moat-test-so"])
            .output()
            .expect("softhsm2-util (apt-get install softhsm2)");
        assert!(out.status.success(), "init token: {}", String::from_utf8_lossy(&out.stderr));
        label
    }

    #[test]
    fn pkcs11_master_keys_stay_in_the_token_and_wrap_tenant_keys() {
        let Some((module, pin)) = pkcs11_under_test() else {
            eprintln!("MOAT_TEST_PKCS11 not set: PKCS#11 provider not exercised");
            return;
        };
        let token = fresh_token(&pin);
        // Bad settings: each a clear refusal naming what is wrong. The wrong PIN first (sign-in
        // is per process and token).
        assert_eq!(Pkcs11Keys::open(&module, &token, "not-the-pin", "moat-kek").unwrap_err().code, "pkcs11_login_failed");
        assert_eq!(Pkcs11Keys::open(&module, "no-such-token", &pin, "moat-kek").unwrap_err().code, "pkcs11_token_not_found");
        let e = Pkcs11Keys::open("/nonexistent/libpkcs11.so", &token, &pin, "moat-kek").unwrap_err();
        assert_eq!(e.code, "pkcs11_unavailable");
        assert!(e.message.contains("/nonexistent/libpkcs11.so"), "{}", e.message);

        let p = Pkcs11Keys::open(&module, &token, &pin, "moat-kek").unwrap();
        assert_eq!(p.current_kek(), "pkcs11:moat-kek-0001", "made inside the token at first use");
        // The master key is sensitive and never extractable: its value cannot be read out.
        let (_, h) = p.keks.read().unwrap()[0].clone();
        let attrs = p.session().get_attributes(h, &[AttributeType::Sensitive, AttributeType::Extractable]).unwrap();
        assert!(attrs.contains(&Attribute::Sensitive(true)) && attrs.contains(&Attribute::Extractable(false)), "{attrs:?}");
        let value = p.session().get_attributes(h, &[AttributeType::Value]).unwrap();
        assert!(!value.iter().any(|a| matches!(a, Attribute::Value(v) if !v.is_empty())), "the key's value was readable");

        let (a, b) = (TenantId::new(), TenantId::new());
        let dek = SecretKey::generate().unwrap();
        let w = p.wrap(&dek, &dek_context(a, 1)).unwrap();
        assert_eq!(w.len(), 60, "the local provider's layout: iv ‖ ciphertext ‖ tag");
        assert!(!w.windows(KEY_LEN).any(|win| win == dek.expose()));
        assert_eq!(p.unwrap("pkcs11:moat-kek-0001", &w, &dek_context(a, 1)).unwrap().expose(), dek.expose());
        for ctx in [dek_context(b, 1), dek_context(a, 2)] {
            assert_eq!(p.unwrap("pkcs11:moat-kek-0001", &w, &ctx).unwrap_err().code, "key_unwrap_failed", "bound to tenant and version");
        }
        for i in (0..w.len() * 8).step_by(7) {
            let mut t = w.clone();
            t[i / 8] ^= 1 << (i % 8);
            assert_eq!(p.unwrap("pkcs11:moat-kek-0001", &t, &dek_context(a, 1)).unwrap_err().code, "key_unwrap_failed", "bit {i}");
        }
        assert_eq!(p.unwrap("pkcs11:moat-kek-0001", &w[..59], &dek_context(a, 1)).unwrap_err().code, "key_unwrap_failed");
        assert_ne!(w, p.wrap(&dek, &dek_context(a, 1)).unwrap(), "a fresh IV per wrap");

        // Rotation: a second key in the token wraps; the first still unwraps; a replica (another
        // provider on the token) finds keys it has not seen.
        let replica = Pkcs11Keys::open(&module, &token, &pin, "moat-kek").unwrap();
        assert_eq!(p.add_master_key().unwrap(), "pkcs11:moat-kek-0002");
        let w2 = p.wrap(&dek, &dek_context(a, 1)).unwrap();
        assert!(p.unwrap("pkcs11:moat-kek-0001", &w2, &dek_context(a, 1)).is_err(), "wrapped under the new key");
        assert_eq!(replica.unwrap("pkcs11:moat-kek-0002", &w2, &dek_context(a, 1)).unwrap().expose(), dek.expose());
        assert_eq!(replica.unwrap("pkcs11:moat-kek-0001", &w, &dek_context(a, 1)).unwrap().expose(), dek.expose());
        assert_eq!(replica.unwrap("pkcs11:moat-kek-0042", &w, &dek_context(a, 1)).unwrap_err().code, "master_key_missing");
        // Another prefix is another set of keys: none of these.
        let other = Pkcs11Keys::open(&module, &token, &pin, "other-kek").unwrap();
        assert_eq!(other.current_kek(), "pkcs11:other-kek-0001");
        assert_eq!(other.unwrap("pkcs11:moat-kek-0001", &w, &dek_context(a, 1)).unwrap_err().code, "master_key_missing");
        assert!(format!("{p:?}").contains("moat-kek-0002"));
    }
}
