//! Multi-factor sign-in: TOTP (RFC 6238) with the parameters every authenticator app accepts
//! (HMAC-SHA1, 6 digits, 30-second steps), one step of clock skew either way, and each step
//! accepted at most once per account (the caller stores the last accepted step and swaps it
//! atomically); plus ten one-time recovery codes for a lost device.
//!
//! An account's factor is one [`MfaSecret`]: the 160-bit TOTP key and the SHA-256 digests of
//! the recovery codes not used yet. The server stores it only sealed under the tenant's data
//! key ([`crate::keys::seal_secret`]), so a database dump reveals neither the key nor which
//! recovery codes exist. Pure: no clock, no store.

use sha2::{Digest, Sha256};
use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

use crate::error::MoatError;
use crate::secret::{ct_eq, random_bytes};

/// Bytes of a TOTP key (160 bits, as RFC 4226 recommends and every app accepts).
pub const KEY_LEN: usize = 20;
/// Seconds per TOTP step.
pub const STEP_S: u64 = 30;
/// Digits of a TOTP code.
pub const DIGITS: usize = 6;
/// Recovery codes made at enrolment (each usable once).
pub const RECOVERY_CODES: usize = 10;
/// Characters of a recovery code (Crockford base32: 80 bits), shown in groups of four.
const RECOVERY_LEN: usize = 16;
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Format byte of an encoded secret.
const FORMAT: u8 = 1;

/// An account's second factor. Never printed; wiped when dropped.
pub struct MfaSecret {
    key: Zeroizing<[u8; KEY_LEN]>,
    /// SHA-256 of each unused recovery code (normalised).
    recovery: Vec<[u8; 32]>,
}

impl std::fmt::Debug for MfaSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaSecret").field("recovery_codes_left", &self.recovery.len()).finish_non_exhaustive()
    }
}

/// What a presented code turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeCheck {
    /// A TOTP code of step `step`, newer than the last accepted one: store `step` (with a
    /// compare-and-swap) before accepting it.
    Totp { step: u64 },
    /// A recovery code, now removed from the secret: store the secret (with a compare-and-swap
    /// on the old sealed bytes) before accepting it.
    Recovery,
    /// A valid TOTP code of a step already accepted (a replay, or a second sign-in within one
    /// step).
    Reused,
    /// Wrong code.
    Invalid,
    /// Neither six digits nor a recovery code.
    Malformed,
}

impl MfaSecret {
    /// A fresh key from the OS CSPRNG, without recovery codes (they are made at confirmation).
    pub fn generate() -> Result<Self, MoatError> {
        Ok(Self { key: Zeroizing::new(random_bytes::<KEY_LEN>()?), recovery: Vec::new() })
    }

    /// The factor as an authenticator app holds it, from its setup key (base32), for clients and
    /// tests that compute codes; it holds no recovery codes.
    pub fn from_setup_key(base32: &str) -> Result<Self, MoatError> {
        let bad = || MoatError::invalid("invalid_setup_key", format!("a setup key is {KEY_LEN} bytes in base32 (RFC 4648)"));
        let bytes = Secret::try_from_base32(base32.trim().to_ascii_uppercase()).map_err(|_| bad())?;
        let key: [u8; KEY_LEN] = bytes.as_ref().try_into().map_err(|_| bad())?;
        Ok(Self { key: Zeroizing::new(key), recovery: Vec::new() })
    }

    /// The plaintext that is sealed: `1 ‖ key (20) ‖ n (1) ‖ n × SHA-256`.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(2 + KEY_LEN + 32 * self.recovery.len()));
        out.push(FORMAT);
        out.extend_from_slice(&self.key[..]);
        // At most RECOVERY_CODES (10) digests: the count fits a byte.
        out.push(self.recovery.len() as u8);
        for h in &self.recovery {
            out.extend_from_slice(h);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, MoatError> {
        let bad = || MoatError::unavailable("secret_unreadable", "a stored second factor is not in a format this server reads");
        let (&format, rest) = bytes.split_first().ok_or_else(bad)?;
        if format != FORMAT || rest.len() < KEY_LEN + 1 {
            return Err(bad());
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(&rest[..KEY_LEN]);
        let n = usize::from(rest[KEY_LEN]);
        let digests = &rest[KEY_LEN + 1..];
        if n > RECOVERY_CODES || digests.len() != 32 * n {
            return Err(bad());
        }
        let recovery = digests.chunks_exact(32).map(|c| c.try_into().map_err(|_| bad())).collect::<Result<_, _>>()?;
        Ok(Self { key, recovery })
    }

    fn totp(&self) -> Result<Totp, MoatError> {
        self.labelled("", None)
    }

    fn labelled(&self, account: &str, issuer: Option<&str>) -> Result<Totp, MoatError> {
        Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(DIGITS as u8)
            .with_skew(1)
            .with_step_duration(STEP_S)
            .with_secret(Secret::from(*self.key))
            .with_account_name(label(account))
            .with_issuer(issuer.map(label))
            .build()
            .map_err(|_| MoatError::internal("totp_setup_failed"))
    }

    /// The key as the authenticator app's "enter a setup key" field wants it (base32).
    pub fn setup_key(&self) -> Result<String, MoatError> {
        Ok(self.totp()?.secret().to_base32())
    }

    /// `otpauth://totp/{issuer}:{account}?secret=…&issuer=…`, the Key URI format authenticator
    /// apps read from a QR code.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> Result<String, MoatError> {
        self.labelled(account, Some(issuer))?.to_url().map_err(|_| MoatError::internal("totp_setup_failed"))
    }

    /// The code an authenticator shows at `unix_s` (for clients and tests that hold the key).
    pub fn code_at(&self, unix_s: u64) -> Result<String, MoatError> {
        Ok(self.totp()?.generate(unix_s).to_string())
    }

    /// Checks a presented code at `unix_s`. A TOTP code must be of the current step or one
    /// either side, and newer than `last_step`; a recovery code must be one not used yet (it
    /// is removed here). Spaces and dashes are ignored; letters in recovery codes are read
    /// case-blind, `O` as `0` and `I`/`L` as `1`.
    pub fn check(&mut self, code: &str, unix_s: u64, last_step: Option<u64>) -> Result<CodeCheck, MoatError> {
        let compact: String = code.chars().filter(|c| !matches!(c, ' ' | '-')).take(64).collect();
        if compact.len() == DIGITS && compact.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(match self.totp()?.check(&compact, unix_s) {
                Some(step) if last_step.is_some_and(|last| step <= last) => CodeCheck::Reused,
                Some(step) => CodeCheck::Totp { step },
                None => CodeCheck::Invalid,
            });
        }
        let Some(normal) = normalise_recovery(&compact) else { return Ok(CodeCheck::Malformed) };
        let digest: [u8; 32] = Sha256::digest(normal.as_bytes()).into();
        // Every digest is compared (constant time each), so timing does not tell which matched.
        let found = self.recovery.iter().fold(None, |hit, h| if ct_eq(h, &digest) { Some(*h) } else { hit });
        Ok(match found {
            Some(h) => {
                self.recovery.retain(|x| *x != h);
                CodeCheck::Recovery
            }
            None => CodeCheck::Invalid,
        })
    }

    /// Replaces the recovery codes with [`RECOVERY_CODES`] new ones; returns them, formatted
    /// `XXXX-XXXX-XXXX-XXXX`, to be shown once.
    pub fn new_recovery_codes(&mut self) -> Result<Vec<String>, MoatError> {
        let mut shown = Vec::with_capacity(RECOVERY_CODES);
        let mut digests = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let raw = random_bytes::<10>()?;
            let code = crockford(&raw);
            digests.push(Sha256::digest(code.as_bytes()).into());
            let groups: Vec<&str> = (0..RECOVERY_LEN).step_by(4).map(|i| &code[i..i + 4]).collect();
            shown.push(groups.join("-"));
        }
        self.recovery = digests;
        Ok(shown)
    }

    pub fn recovery_codes_left(&self) -> usize {
        self.recovery.len()
    }
}

/// An issuer or account label without the `:` the Key URI format reserves.
fn label(s: &str) -> String {
    s.replace(':', "_")
}

/// 80 bits as 16 Crockford base32 characters.
fn crockford(bytes: &[u8; 10]) -> String {
    let mut bits = u128::from_be_bytes({
        let mut b = [0u8; 16];
        b[6..].copy_from_slice(bytes);
        b
    });
    let mut out = [0u8; RECOVERY_LEN];
    for slot in out.iter_mut().rev() {
        *slot = CROCKFORD[(bits & 31) as usize];
        bits >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

fn normalise_recovery(compact: &str) -> Option<String> {
    if compact.len() != RECOVERY_LEN {
        return None;
    }
    compact
        .chars()
        .map(|c| match c.to_ascii_uppercase() {
            'O' => Some('0'),
            'I' | 'L' => Some('1'),
            u if CROCKFORD.contains(&(u as u8)) && u.is_ascii() => Some(u),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_rfc_6238_vectors() {
        // RFC 6238 appendix B, SHA-1 key "12345678901234567890" (8 digits there; the last six
        // digits of each are the 6-digit code).
        let s = MfaSecret { key: Zeroizing::new(*b"12345678901234567890"), recovery: Vec::new() };
        for (t, code) in [(59, "287082"), (1_111_111_109, "081804"), (1_234_567_890, "005924"), (2_000_000_000, "279037")] {
            assert_eq!(s.code_at(t).expect("code"), code, "t={t}");
        }
        assert_eq!(s.setup_key().expect("key"), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
        let app = MfaSecret::from_setup_key("gezdgnbvgy3tqojqgezdgnbvgy3tqojq").expect("key");
        assert_eq!(app.code_at(59).expect("code"), "287082");
        for bad in ["", "GEZDGNBV", "not base32!", "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQGE"] {
            assert_eq!(MfaSecret::from_setup_key(bad).expect_err(bad).code, "invalid_setup_key", "{bad}");
        }
    }

    #[test]
    fn a_code_is_accepted_once_within_one_step_of_skew() {
        let mut s = MfaSecret::generate().expect("rng");
        let now = 1_800_000_015;
        let step = now / STEP_S;
        let code = s.code_at(now).expect("code");
        assert_eq!(s.check(&code, now, None).expect("check"), CodeCheck::Totp { step });
        assert_eq!(s.check(&format!("{} {}", &code[..3], &code[3..]), now, None).expect("check"), CodeCheck::Totp { step });
        // The same step again: a replay.
        assert_eq!(s.check(&code, now, Some(step)).expect("check"), CodeCheck::Reused);
        assert_eq!(s.check(&code, now + 29, Some(step)).expect("check"), CodeCheck::Reused);
        // One step of skew either way, not two.
        assert_eq!(s.check(&s.code_at(now - 30).expect("c"), now, None).expect("check"), CodeCheck::Totp { step: step - 1 });
        assert_eq!(s.check(&s.code_at(now + 30).expect("c"), now, Some(step)).expect("check"), CodeCheck::Totp { step: step + 1 });
        assert_eq!(s.check(&s.code_at(now - 60).expect("c"), now, None).expect("check"), CodeCheck::Invalid);
        assert_eq!(s.check(&s.code_at(now + 60).expect("c"), now, None).expect("check"), CodeCheck::Invalid);
        // An older step after a newer one was used: refused even inside the window.
        assert_eq!(s.check(&s.code_at(now - 30).expect("c"), now, Some(step)).expect("check"), CodeCheck::Reused);
        // Another key's code.
        let other = MfaSecret::generate().expect("rng");
        let foreign = other.code_at(now).expect("code");
        if foreign != code {
            assert_eq!(s.check(&foreign, now, None).expect("check"), CodeCheck::Invalid);
        }
        for bad in ["", "12345", "1234567", "12a456", "+12345", "１２３４５６", "0x1234", &"9".repeat(10_000)] {
            assert_eq!(s.check(bad, now, None).expect("check"), CodeCheck::Malformed, "{bad:?}");
        }
    }

    #[test]
    fn recovery_codes_work_once_each_and_survive_sealing() {
        let mut s = MfaSecret::generate().expect("rng");
        let codes = s.new_recovery_codes().expect("rng");
        assert_eq!(codes.len(), RECOVERY_CODES);
        assert!(codes.iter().all(|c| c.len() == 19 && c.split('-').count() == 4));
        let unique: std::collections::HashSet<&String> = codes.iter().collect();
        assert_eq!(unique.len(), RECOVERY_CODES);

        let mut back = MfaSecret::decode(&s.encode()).expect("decode");
        assert_eq!(back.recovery_codes_left(), RECOVERY_CODES);
        assert_eq!(back.code_at(1).expect("c"), s.code_at(1).expect("c"));
        assert_eq!(back.check(&codes[3], 0, None).expect("check"), CodeCheck::Recovery);
        assert_eq!(back.recovery_codes_left(), RECOVERY_CODES - 1);
        assert_eq!(back.check(&codes[3], 0, None).expect("check"), CodeCheck::Invalid, "used up");
        // Typed loosely: lower case, no dashes, O for 0 and l for 1.
        let loose = codes[4].replace('-', "").to_lowercase().replace('0', "o").replace('1', "l");
        assert_eq!(back.check(&loose, 0, None).expect("check"), CodeCheck::Recovery);
        // Another account's code, a near miss, junk.
        let mut other = MfaSecret::generate().expect("rng");
        let theirs = other.new_recovery_codes().expect("rng");
        assert_eq!(back.check(&theirs[0], 0, None).expect("check"), CodeCheck::Invalid);
        let mut near = codes[5].clone().into_bytes();
        near[0] = if near[0] == b'A' { b'B' } else { b'A' };
        assert_eq!(back.check(std::str::from_utf8(&near).expect("ascii"), 0, None).expect("check"), CodeCheck::Invalid);
        assert_eq!(back.check("UUUU-UUUU-UUUU-UUUU", 0, None).expect("check"), CodeCheck::Malformed, "U is not Crockford");
        // New codes replace the old ones.
        let fresh = back.new_recovery_codes().expect("rng");
        assert_eq!(back.check(&codes[6], 0, None).expect("check"), CodeCheck::Invalid);
        assert_eq!(back.check(&fresh[0], 0, None).expect("check"), CodeCheck::Recovery);
        assert_eq!(format!("{back:?}"), "MfaSecret { recovery_codes_left: 9, .. }");
    }

    #[test]
    fn encoded_secrets_are_checked_and_uris_are_well_formed() {
        let mut s = MfaSecret::generate().expect("rng");
        s.new_recovery_codes().expect("rng");
        let enc = s.encode();
        assert_eq!(enc.len(), 2 + KEY_LEN + 32 * RECOVERY_CODES);
        for n in 0..enc.len() {
            assert!(MfaSecret::decode(&enc[..n]).is_err(), "cut at {n}");
        }
        let mut wrong = enc.to_vec();
        wrong[0] = 2;
        assert_eq!(MfaSecret::decode(&wrong).expect_err("format").code, "secret_unreadable");
        let mut count = enc.to_vec();
        count[1 + KEY_LEN] = 11;
        assert!(MfaSecret::decode(&count).is_err());

        let uri = s.otpauth_uri("moat (acme)", "ana@acme.test").expect("uri");
        assert!(uri.starts_with("otpauth://totp/moat%20%28acme%29:ana%40acme.test?secret="), "{uri}");
        assert!(uri.contains(&format!("secret={}", s.setup_key().expect("key"))));
        assert!(uri.ends_with("&issuer=moat%20%28acme%29"), "{uri}");
        // A colon in a label cannot forge the issuer/account split.
        let odd = s.otpauth_uri("a:b", "c:d@x.test").expect("uri");
        assert!(odd.starts_with("otpauth://totp/a_b:c_d%40x.test?"), "{odd}");
    }
}
