//! Which mask a caller gets on a column: a pure function of the caller's clearance and role, the
//! column's label and kind, the column's mask override and the tenant's masking policy.
//! Unknown or missing classification counts as RESTRICTED (fail closed).

use std::collections::BTreeMap;

use moat_core::classification::Classification;
use moat_core::role::Role;
use serde::{Deserialize, Serialize};

use crate::mask::MaskRule;

pub use moat_core::classification::PiiCategory;

/// What the catalog knows about a column, as far as masking is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnMeta {
    pub name: String,
    /// `None` = unclassified, treated as RESTRICTED.
    pub classification: Option<Classification>,
    pub pii: PiiCategory,
    /// Entity type, e.g. `email`, `ssn`, `person_name`, `phone`, `credit_card`.
    pub entity: Option<String>,
    /// An explicit mask for this column, overriding the kind-based default.
    pub mask_override: Option<MaskRule>,
}

impl ColumnMeta {
    pub fn label(&self) -> Classification {
        self.classification.unwrap_or(Classification::Restricted)
    }
}

/// A tenant's masking policy: another mask per (role, label).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingPolicy {
    /// Key `"<role>:<LABEL>"`, e.g. `"viewer:CONFIDENTIAL"`.
    pub rules: BTreeMap<String, MaskRule>,
}

impl MaskingPolicy {
    pub const MAX_RULES: usize = 64;

    /// Keys must be `<tenant role>:<LABEL>` (e.g. `viewer:CONFIDENTIAL`). A rule can only choose
    /// another mask for a label above the role's clearance: it never unmasks.
    pub fn validate(&self) -> Result<(), moat_core::MoatError> {
        let bad = |m: String| Err(moat_core::MoatError::invalid("invalid_policy", m));
        if self.rules.len() > Self::MAX_RULES {
            return bad(format!("at most {} rules", Self::MAX_RULES));
        }
        for key in self.rules.keys() {
            let Some((role, label)) = key.split_once(':') else {
                return bad(format!("rule {key:?} must be <role>:<LABEL>, e.g. viewer:CONFIDENTIAL"));
            };
            let role =
                Role::parse(role).map_err(|e| moat_core::MoatError::invalid("invalid_policy", format!("rule {key:?}: {}", e.message)))?;
            if role == Role::SuperAdmin {
                return bad(format!("rule {key:?}: super_admin is not a tenant role"));
            }
            match Classification::parse(label) {
                Some(l) if l.as_str() == label => {
                    if l <= role.default_clearance() {
                        return bad(format!("rule {key:?}: {role} reads {l} raw; a rule applies only above the role's clearance"));
                    }
                }
                _ => return bad(format!("rule {key:?}: label must be INTERNAL, CONFIDENTIAL or RESTRICTED")),
            }
        }
        Ok(())
    }
}

/// The outcome for one column and one caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskDecision {
    Raw,
    Mask(MaskRule),
    /// The column does not exist for this caller.
    Omit,
}

/// Entities whose last four characters may show (identifiers).
const IDENTIFIERS: &[&str] =
    &["ssn", "credit_card", "card", "iban", "national_id", "passport", "account_number", "tax_id", "nino", "insee"];
/// Entities that are contact points (fully redacted).
const CONTACTS: &[&str] = &["phone", "address", "street_address", "ip_address", "ip"];
const NAMES: &[&str] = &["person_name", "name", "first_name", "last_name", "full_name"];

/// Decides the mask (contract: "Classification and masking defaults").
pub fn decide(role: Role, clearance: Classification, col: &ColumnMeta, policy: &MaskingPolicy) -> MaskDecision {
    let label = col.label();
    if label <= clearance {
        return MaskDecision::Raw;
    }
    let to_decision = |m: MaskRule| if m == MaskRule::Omit { MaskDecision::Omit } else { MaskDecision::Mask(m) };
    if let Some(m) = policy.rules.get(&format!("{}:{}", role.as_str(), label.as_str())) {
        return to_decision(*m);
    }
    if let Some(m) = col.mask_override {
        return to_decision(m);
    }
    // RESTRICTED without an explicit grant: full mask, whatever the kind.
    if label == Classification::Restricted {
        return MaskDecision::Mask(MaskRule::Full);
    }
    let entity = col.entity.as_deref().unwrap_or("");
    match col.pii {
        PiiCategory::Direct if NAMES.contains(&entity) => MaskDecision::Mask(MaskRule::Hash16),
        PiiCategory::Direct if entity == "email" => MaskDecision::Mask(MaskRule::EmailPartial),
        PiiCategory::Direct if IDENTIFIERS.contains(&entity) => MaskDecision::Mask(MaskRule::LastFour),
        PiiCategory::Direct if CONTACTS.contains(&entity) => MaskDecision::Mask(MaskRule::Redact),
        PiiCategory::Direct | PiiCategory::Quasi => MaskDecision::Mask(MaskRule::Redact),
        PiiCategory::Derived => MaskDecision::Mask(MaskRule::Full),
        // Business confidential: the column is omitted.
        PiiCategory::None => MaskDecision::Omit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Classification::*;

    fn col(label: Option<Classification>, pii: PiiCategory, entity: &str) -> ColumnMeta {
        ColumnMeta {
            name: "c".into(),
            classification: label,
            pii,
            entity: (!entity.is_empty()).then(|| entity.into()),
            mask_override: None,
        }
    }

    #[test]
    fn contract_defaults() {
        let p = MaskingPolicy::default();
        let d = |r: Role, c: &ColumnMeta| decide(r, r.default_clearance(), c, &p);
        let ssn = col(Some(Restricted), PiiCategory::Direct, "ssn");
        assert_eq!(d(Role::Admin, &ssn), MaskDecision::Raw);
        assert_eq!(d(Role::Editor, &ssn), MaskDecision::Mask(MaskRule::Full), "RESTRICTED without grant");
        let card = col(Some(Confidential), PiiCategory::Direct, "credit_card");
        assert_eq!(d(Role::Editor, &card), MaskDecision::Raw);
        assert_eq!(d(Role::Viewer, &card), MaskDecision::Mask(MaskRule::LastFour));
        assert_eq!(d(Role::Viewer, &col(Some(Confidential), PiiCategory::Direct, "person_name")), MaskDecision::Mask(MaskRule::Hash16));
        assert_eq!(d(Role::Viewer, &col(Some(Confidential), PiiCategory::Direct, "email")), MaskDecision::Mask(MaskRule::EmailPartial));
        assert_eq!(d(Role::Viewer, &col(Some(Confidential), PiiCategory::Direct, "phone")), MaskDecision::Mask(MaskRule::Redact));
        assert_eq!(d(Role::Viewer, &col(Some(Confidential), PiiCategory::None, "")), MaskDecision::Omit, "business confidential");
        assert_eq!(d(Role::Viewer, &col(Some(Internal), PiiCategory::None, "")), MaskDecision::Raw);
        assert_eq!(d(Role::User, &col(Some(Public), PiiCategory::None, "")), MaskDecision::Raw);
    }

    #[test]
    fn unclassified_is_restricted() {
        let c = col(None, PiiCategory::None, "");
        let p = MaskingPolicy::default();
        assert_eq!(decide(Role::Editor, Confidential, &c, &p), MaskDecision::Mask(MaskRule::Full));
        assert_eq!(decide(Role::Admin, Restricted, &c, &p), MaskDecision::Raw);
        assert_eq!(decide(Role::Auditor, Public, &c, &p), MaskDecision::Mask(MaskRule::Full));
    }

    #[test]
    fn policy_validation() {
        let with = |k: &str| {
            let mut p = MaskingPolicy::default();
            p.rules.insert(k.into(), MaskRule::Full);
            p.validate().map_err(|e| e.code)
        };
        assert_eq!(with("viewer:CONFIDENTIAL"), Ok(()));
        assert_eq!(with("editor:RESTRICTED"), Ok(()));
        for bad in [
            "viewer",
            "viewer:confidential",
            "root:RESTRICTED",
            "super_admin:RESTRICTED",
            "admin:RESTRICTED",
            "viewer:INTERNAL",
            "viewer:SECRET",
        ] {
            assert_eq!(with(bad), Err("invalid_policy"), "{bad}");
        }
    }

    #[test]
    fn tenant_policy_and_override() {
        let mut p = MaskingPolicy::default();
        p.rules.insert("viewer:CONFIDENTIAL".into(), MaskRule::Full);
        let email = col(Some(Confidential), PiiCategory::Direct, "email");
        assert_eq!(decide(Role::Viewer, Internal, &email, &p), MaskDecision::Mask(MaskRule::Full));
        assert_eq!(decide(Role::User, Internal, &email, &p), MaskDecision::Mask(MaskRule::EmailPartial));
        let mut o = email.clone();
        o.mask_override = Some(MaskRule::Omit);
        assert_eq!(decide(Role::User, Internal, &o, &MaskingPolicy::default()), MaskDecision::Omit);
        // A policy never unmasks what clearance allows raw, and never reveals above clearance:
        // the rule is only consulted when the label is above clearance.
        assert_eq!(decide(Role::Admin, Restricted, &email, &p), MaskDecision::Raw);
    }
}
