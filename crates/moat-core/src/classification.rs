//! Sensitivity labels, ordered `PUBLIC < INTERNAL < CONFIDENTIAL < RESTRICTED`.
//! An unknown label parses to nothing and callers treat it as `Restricted` (fail closed).

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Classification {
    Public,
    Internal,
    Confidential,
    Restricted,
}

impl Classification {
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "PUBLIC" => Some(Self::Public),
            "INTERNAL" => Some(Self::Internal),
            "CONFIDENTIAL" => Some(Self::Confidential),
            "RESTRICTED" => Some(Self::Restricted),
            _ => None,
        }
    }
    /// Unknown or missing labels count as the most sensitive one.
    pub fn parse_or_restricted(s: Option<&str>) -> Self {
        s.and_then(Self::parse).unwrap_or(Self::Restricted)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Public => "PUBLIC",
            Self::Internal => "INTERNAL",
            Self::Confidential => "CONFIDENTIAL",
            Self::Restricted => "RESTRICTED",
        }
    }
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn order_and_fail_closed() {
        assert!(Classification::Public < Classification::Internal);
        assert!(Classification::Confidential < Classification::Restricted);
        assert_eq!(Classification::parse_or_restricted(Some("secret")), Classification::Restricted);
        assert_eq!(Classification::parse_or_restricted(None), Classification::Restricted);
        assert_eq!(Classification::parse("internal"), Some(Classification::Internal));
    }
}

/// The PII category of a column (contract: `direct|quasi|derived|none`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PiiCategory {
    /// Identifies a person on its own: names, emails, SSNs, phone numbers, cards, IBANs,
    /// national ids, addresses, IP addresses.
    Direct,
    /// Harmless alone, identifying in combination: age, ZIP/postal code, gender, job title,
    /// birth date.
    Quasi,
    /// Computed about a person: credit scores, churn probabilities, behavioural scores.
    Derived,
    #[default]
    None,
}

impl PiiCategory {
    pub const ALL: [PiiCategory; 4] = [PiiCategory::Direct, PiiCategory::Quasi, PiiCategory::Derived, PiiCategory::None];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Quasi => "quasi",
            Self::Derived => "derived",
            Self::None => "none",
        }
    }
}
