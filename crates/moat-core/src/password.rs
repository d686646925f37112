//! Passwords: the tenant's policy (seed defaults: 8–72 characters, upper, lower, digit,
//! special, not a common password, none of the last 5), argon2id hashing with OWASP
//! parameters, and a dummy verification so unknown accounts cost the same as known ones.

use std::sync::OnceLock;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

use crate::error::MoatError;

/// OWASP Password Storage Cheat Sheet: argon2id, m = 19 MiB, t = 2, p = 1.
const ARGON2_M_KIB: u32 = 19_456;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;

const COMMON_BASES: &str = include_str!("../data/common-passwords.txt");

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordPolicy {
    pub min_chars: usize,
    pub max_chars: usize,
    pub require_upper: bool,
    pub require_lower: bool,
    pub require_digit: bool,
    pub require_special: bool,
    pub reject_common: bool,
    /// How many previous passwords may not be reused.
    pub history: usize,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_chars: 8,
            max_chars: 72,
            require_upper: true,
            require_lower: true,
            require_digit: true,
            require_special: true,
            reject_common: true,
            history: 5,
        }
    }
}

impl PasswordPolicy {
    /// Bounds on a tenant's own policy: it may be stricter than the default, or relax the
    /// character classes, but never go below 8 characters or above what login accepts.
    pub fn validate(&self) -> Result<(), MoatError> {
        let bad = |m: &str| Err(MoatError::invalid("invalid_policy", m.to_owned()));
        if !(8..=128).contains(&self.min_chars) {
            return bad("min_chars must be between 8 and 128");
        }
        if self.max_chars < self.min_chars || self.max_chars > 256 {
            return bad("max_chars must be between min_chars and 256");
        }
        if self.history > 24 {
            return bad("history must be at most 24");
        }
        Ok(())
    }

    /// Checks a new password. The message lists every unmet rule and never echoes the password.
    pub fn check(&self, password: &str, email_local_part: Option<&str>) -> Result<(), MoatError> {
        let n = password.chars().count();
        let mut unmet = Vec::new();
        if n < self.min_chars || n > self.max_chars {
            unmet.push(format!("{}–{} characters", self.min_chars, self.max_chars));
        }
        if self.require_upper && !password.chars().any(char::is_uppercase) {
            unmet.push("an uppercase letter".into());
        }
        if self.require_lower && !password.chars().any(char::is_lowercase) {
            unmet.push("a lowercase letter".into());
        }
        if self.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
            unmet.push("a digit".into());
        }
        if self.require_special && !password.chars().any(|c| !c.is_alphanumeric() && !c.is_whitespace()) {
            unmet.push("a special character".into());
        }
        if !unmet.is_empty() {
            return Err(MoatError::invalid("weak_password", format!("password needs {}", unmet.join(", "))));
        }
        if self.reject_common && is_common(password) {
            return Err(MoatError::invalid("weak_password", "password is too common; choose another"));
        }
        if let Some(local) = email_local_part.filter(|l| l.len() >= 4)
            && password.to_lowercase().contains(&local.to_lowercase())
        {
            return Err(MoatError::invalid("weak_password", "password may not contain the e-mail name"));
        }
        Ok(())
    }
}

/// The core of a candidate: lower case, `@`/`$` undone, symbols dropped, digits at either end
/// stripped, digits in the middle read as leet-speak.
fn core_of(password: &str) -> String {
    let mapped: String = password
        .to_lowercase()
        .chars()
        .map(|c| match c {
            '@' => 'a',
            '$' => 's',
            other => other,
        })
        .filter(|c| c.is_alphanumeric())
        .collect();
    mapped
        .trim_matches(|c: char| c.is_ascii_digit())
        .chars()
        .map(|c| match c {
            '0' => 'o',
            '1' => 'i',
            '3' => 'e',
            '4' => 'a',
            '5' => 's',
            '7' => 't',
            other => other,
        })
        .collect()
}

fn common_bases() -> &'static std::collections::HashSet<&'static str> {
    static SET: OnceLock<std::collections::HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| COMMON_BASES.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect())
}

pub fn is_common(password: &str) -> bool {
    let core = core_of(password);
    // An all-digit or near-empty core ("12345678!") is as guessable as a listed word.
    core.chars().count() < 3 || common_bases().contains(core.as_str()) || {
        // "1" read as "l" as well as "i" ("he11o").
        let alt = core.replace('i', "l");
        common_bases().contains(alt.as_str())
    }
}

fn hasher() -> Result<Argon2<'static>, MoatError> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None).map_err(|_| MoatError::internal("argon2_params"))?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// argon2id PHC string with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, MoatError> {
    let salt = crate::secret::random_bytes::<16>()?;
    let hash = hasher()?.hash_password_with_salt(password.as_bytes(), &salt).map_err(|_| MoatError::internal("password_hash_failed"))?;
    Ok(hash.to_string())
}

/// Verifies against a stored PHC string. A corrupt stored hash verifies as false (the login
/// fails closed) rather than erroring, so it looks like any other wrong password.
pub fn verify_password(password: &str, stored_phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(stored_phc) else { return false };
    let Ok(h) = hasher() else { return false };
    h.verify_password(password.as_bytes(), &parsed).is_ok()
}

/// Spends the same work as a real verification, for logins to unknown accounts, so response
/// time does not tell whether an e-mail exists.
pub fn verify_dummy(password: &str) {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    if let Some(h) = DUMMY.get_or_init(|| hash_password("dummy-password-never-matches").ok()) {
        let _ = verify_password(password, h);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_rules() {
        let p = PasswordPolicy::default();
        assert!(p.check("Tr1cky-Gazelle", None).is_ok());
        let e = p.check("short1!", None).expect_err("too short");
        assert!(e.message.contains("8–72 characters") && !e.message.contains("short1!"));
        assert!(p.check("alllowercase1!", None).is_err());
        assert!(p.check("ALLUPPERCASE1!", None).is_err());
        assert!(p.check("NoDigitsHere!", None).is_err());
        assert!(p.check("NoSpecial123", None).is_err());
        assert!(p.check(&format!("Aa1!{}", "x".repeat(69)), None).is_err(), "73 chars");
        assert!(p.check(&format!("Aa1!{}", "x".repeat(68)), None).is_ok(), "72 chars");
    }

    #[test]
    fn common_passwords_refused_through_disguises() {
        for pw in ["Password1!", "P@ssw0rd2024!", "Welcome1!", "Qwerty123!", "Summer2024!", "!Letmein99", "Adm1n!234", "12345678Aa!"] {
            assert!(is_common(pw), "{pw} should be common");
        }
        for pw in ["Tr1cky-Gazelle", "Blue-Harbor-Anvil-7", "xK9!mQ2#vL"] {
            assert!(!is_common(pw), "{pw} should be fine");
        }
    }

    #[test]
    fn policy_bounds() {
        assert!(PasswordPolicy::default().validate().is_ok());
        for bad in [
            PasswordPolicy { min_chars: 6, ..Default::default() },
            PasswordPolicy { max_chars: 7, ..Default::default() },
            PasswordPolicy { max_chars: 1000, ..Default::default() },
            PasswordPolicy { history: 100, ..Default::default() },
        ] {
            assert_eq!(bad.validate().map_err(|e| e.code), Err("invalid_policy"), "{bad:?}");
        }
        let strict = PasswordPolicy { min_chars: 14, ..Default::default() };
        assert!(strict.check("Tr1cky-Gazelle", None).is_ok());
        assert!(strict.check("Tr1cky-Gazel!", None).is_err());
    }

    #[test]
    fn email_name_refused() {
        let p = PasswordPolicy::default();
        assert!(p.check("Jdoe-Secret-77", Some("jdoe")).is_err());
    }

    #[test]
    fn hash_roundtrip_and_corrupt_hash_fails_closed() {
        let h = hash_password("Tr1cky-Gazelle").expect("hash");
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_password("Tr1cky-Gazelle", &h));
        assert!(!verify_password("tr1cky-gazelle", &h));
        assert!(!verify_password("Tr1cky-Gazelle", "not a hash"));
        verify_dummy("anything");
    }
}
