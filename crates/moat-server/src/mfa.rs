//! Multi-factor sign-in, server side: an account's factor ([`moat_core::mfa::MfaSecret`]) is
//! sealed under its tenant's data key (the platform secret key for platform accounts, see
//! `dek`) and stored with the account; every change is a compare-and-swap in the store
//! (`MetaStore::set_mfa`), so a TOTP step or a recovery code is accepted once even when
//! sign-ins race on several replicas. The tenant's `mfa_policy` says whom sign-in asks for one.
//!
//! Crypto-shredding reaches factors too: once a tenant's keys are destroyed its accounts'
//! factors cannot be opened, and sign-in fails closed (`tenant_keys_destroyed`).

use moat_core::clock::UnixSeconds;
use moat_core::ids::{TenantId, UserId};
use moat_core::mfa::{CodeCheck, MfaSecret};
use moat_core::role::Role;
use moat_core::{MoatError, Result};
use moat_store::{MfaChange, UserMfa, UserRecord};
use serde::{Deserialize, Serialize};

use crate::state::AppState;

/// The tenant setting holding [`MfaPolicy`].
pub const MFA_POLICY: &str = "mfa_policy";
/// The issuer authenticator apps show beside the account.
const ISSUER: &str = "moat";

/// Whom sign-in asks for a second factor, per tenant (`PUT /v1/policies/mfa`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MfaPolicy {
    pub required_for: Required,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Required {
    /// Whoever enrolled (the default).
    #[default]
    Optional,
    /// Admins must enrol; others may.
    Admins,
    /// Every account must enrol.
    Everyone,
}

impl MfaPolicy {
    pub fn requires(&self, role: Role) -> bool {
        match self.required_for {
            Required::Optional => false,
            Required::Admins => role.rank() >= Role::Admin.rank(),
            Required::Everyone => true,
        }
    }
}

/// What an account's factor is bound to: a sealed factor copied to another account (or
/// tenant) does not open.
fn context(tenant: Option<TenantId>, user: UserId) -> Vec<u8> {
    format!("mfa:{}:{user}", tenant.map_or_else(|| "platform".to_owned(), |t| t.to_string())).into_bytes()
}

pub async fn seal(st: &AppState, user: &UserRecord, secret: &MfaSecret) -> Result<Vec<u8>> {
    st.data_keys.seal(user.tenant_id, &context(user.tenant_id, user.id), &secret.encode(), st.clock.now_s()).await
}

pub async fn open(st: &AppState, user: &UserRecord, sealed: &[u8]) -> Result<MfaSecret> {
    let plain = st.data_keys.open(user.tenant_id, &context(user.tenant_id, user.id), sealed, st.clock.now_s()).await?;
    MfaSecret::decode(&plain)
}

/// The label an authenticator app shows: `moat (acme)` for a tenant account, `moat` for the
/// platform.
pub fn issuer(tenant_slug: Option<&str>) -> String {
    tenant_slug.map_or_else(|| ISSUER.to_owned(), |s| format!("{ISSUER} ({s})"))
}

/// A new factor for the account, stored pending (replacing a pending one). `mfa_already_enabled`
/// (409) if one is enabled: it must be turned off first, with a code.
pub async fn enroll(st: &AppState, user: &UserRecord, tenant_slug: Option<&str>) -> Result<Enrolment> {
    let secret = MfaSecret::generate()?;
    let sealed = seal(st, user, &secret).await?;
    if !st.stores.meta.set_mfa(user.tenant_id, user.id, MfaChange::Enroll { sealed: &sealed }, st.clock.now_s()).await? {
        return Err(already_enabled());
    }
    Ok(Enrolment {
        status: "pending",
        secret: secret.setup_key()?,
        otpauth_uri: secret.otpauth_uri(&issuer(tenant_slug), user.email.as_str())?,
        algorithm: "SHA1",
        digits: moat_core::mfa::DIGITS,
        period_s: moat_core::mfa::STEP_S,
    })
}

pub fn already_enabled() -> MoatError {
    MoatError::conflict("mfa_already_enabled", "a second factor is already enabled; turn it off (with a code) before enrolling another")
}

/// What enrolment hands the user once: the key for the authenticator app.
#[derive(Debug, Serialize, Deserialize)]
pub struct Enrolment {
    /// `pending` until a code confirms it.
    pub status: &'static str,
    /// The key, base32, for an app's "enter a setup key".
    pub secret: String,
    /// The same as a Key URI (`otpauth://totp/…`), for a QR code.
    pub otpauth_uri: String,
    pub algorithm: &'static str,
    pub digits: usize,
    pub period_s: u64,
}

/// Why a code was not accepted, as sign-in records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Wrong, expired or not a code.
    Invalid,
    /// A TOTP code of a step already accepted.
    Reused,
}

impl Rejected {
    pub fn reason(self) -> &'static str {
        match self {
            Rejected::Invalid => "bad_mfa_code",
            Rejected::Reused => "mfa_code_reused",
        }
    }
}

pub fn invalid_code() -> MoatError {
    MoatError::unauthenticated("invalid_mfa_code", "the authentication code is wrong, expired or already used")
}

/// How a code was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    Totp,
    /// A recovery code, now used up; `left` remain.
    Recovery {
        left: usize,
    },
    /// The code confirmed a pending factor, which is now enabled: these recovery codes are
    /// shown once.
    Confirmed {
        recovery_codes: Vec<String>,
    },
}

/// Checks `code` against the account's factor (`mfa`, as read with the account) at the
/// clock's time and records its use: the TOTP step, a used recovery code, or (for a pending
/// factor) the confirmation. `Ok(Err(_))` is a refusal to count as a failed sign-in; `Err(_)`
/// a factor that cannot be read (destroyed keys, an unreachable store).
pub async fn accept(st: &AppState, user: &UserRecord, mfa: &UserMfa, code: &str) -> Result<std::result::Result<Accepted, Rejected>> {
    let now = st.clock.now_s();
    let mut secret = open(st, user, &mfa.sealed).await?;
    let last = mfa.last_step.and_then(|s| u64::try_from(s).ok());
    let check = secret.check(code, unix(now), last)?;
    let meta = &st.stores.meta;
    let (tenant, id) = (user.tenant_id, user.id);
    Ok(match (check, mfa.enabled()) {
        (CodeCheck::Totp { step }, true) => {
            let step = step_i64(step)?;
            if meta.set_mfa(tenant, id, MfaChange::UseStep { step }, now).await? { Ok(Accepted::Totp) } else { Err(Rejected::Reused) }
        }
        (CodeCheck::Totp { step }, false) => {
            let recovery_codes = secret.new_recovery_codes()?;
            let to = seal(st, user, &secret).await?;
            let change = MfaChange::Confirm { from: &mfa.sealed, to: &to, step: step_i64(step)? };
            // Lost to a concurrent re-enrolment or confirmation: this code no longer confirms.
            if meta.set_mfa(tenant, id, change, now).await? { Ok(Accepted::Confirmed { recovery_codes }) } else { Err(Rejected::Invalid) }
        }
        (CodeCheck::Recovery, true) => {
            let left = secret.recovery_codes_left();
            let to = seal(st, user, &secret).await?;
            // Lost the swap: another sign-in changed the factor meanwhile (perhaps with this
            // very code); sign in again.
            let change = MfaChange::Replace { from: &mfa.sealed, to: &to };
            if meta.set_mfa(tenant, id, change, now).await? { Ok(Accepted::Recovery { left }) } else { Err(Rejected::Invalid) }
        }
        (CodeCheck::Reused, _) => Err(Rejected::Reused),
        _ => Err(Rejected::Invalid),
    })
}

fn unix(now: UnixSeconds) -> u64 {
    u64::try_from(now).unwrap_or(0)
}

fn step_i64(step: u64) -> Result<i64> {
    i64::try_from(step).map_err(|_| MoatError::internal("totp_step_range"))
}

/// Seals the tenant's factors that are not under its current DEK again under it (after a
/// data-key rotation); returns how many. A factor changed meanwhile (a sign-in used a
/// recovery code) is left for the next pass, already under the current key.
pub async fn reseal_stale(st: &AppState, tenant: TenantId) -> Result<u64> {
    let current = st.data_keys.current_version(tenant, st.clock.now_s()).await?;
    let mut n = 0;
    for user in stale(st, tenant, current).await? {
        let Some(mfa) = &user.mfa else { continue };
        let secret = open(st, &user, &mfa.sealed).await?;
        let to = seal(st, &user, &secret).await?;
        if st.stores.meta.set_mfa(Some(tenant), user.id, MfaChange::Replace { from: &mfa.sealed, to: &to }, st.clock.now_s()).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// The tenant's accounts whose factor is sealed under a DEK version other than `current`.
pub async fn stale(st: &AppState, tenant: TenantId, current: u32) -> Result<Vec<UserRecord>> {
    let users = st.stores.meta.list_users(Some(tenant)).await?;
    Ok(users.into_iter().filter(|u| u.mfa.as_ref().is_some_and(|m| moat_core::keys::sealed_version(&m.sealed) != Some(current))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_says_whom_to_ask() {
        let admins = MfaPolicy { required_for: Required::Admins };
        assert!(admins.requires(Role::Admin) && admins.requires(Role::SuperAdmin));
        assert!(!admins.requires(Role::User) && !admins.requires(Role::Viewer));
        assert!(MfaPolicy { required_for: Required::Everyone }.requires(Role::Viewer));
        assert!(!MfaPolicy::default().requires(Role::Admin));
        let p: MfaPolicy = serde_json::from_str(r#"{"required_for":"everyone"}"#).expect("parse");
        assert_eq!(p.required_for, Required::Everyone);
        assert!(serde_json::from_str::<MfaPolicy>(r#"{"required_for":"sometimes"}"#).is_err());
        assert!(serde_json::from_str::<MfaPolicy>(r#"{"required_for":"admins","extra":1}"#).is_err());
        assert_ne!(context(None, UserId::new()), context(Some(TenantId::new()), UserId::new()));
    }
}
