//! What a column can hold, as far as privacy goes: the entity, its PII category (contract:
//! `direct|quasi|derived|none`) and the label it gets by default.

use moat_core::classification::Classification;

/// The PII category of a column: the one type the catalog, the engine and the scanner share.
pub use moat_core::classification::PiiCategory as Category;

/// The entities the scanner recognises. `as_str` is the catalog's `entity` (the masking policy
/// picks a mask by it: names hash, identifiers show the last four, contacts are redacted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entity {
    PersonName,
    Email,
    Phone,
    Ssn,
    CreditCard,
    Iban,
    /// UK National Insurance number.
    Nino,
    /// French social security number (NIR).
    Insee,
    StreetAddress,
    IpAddress,
    Age,
    PostalCode,
    Gender,
    JobTitle,
    BirthDate,
    CreditScore,
    /// A probability or behavioural score computed about a person (churn, propensity, risk).
    Score,
}

impl Entity {
    pub const ALL: [Entity; 17] = [
        Entity::PersonName,
        Entity::Email,
        Entity::Phone,
        Entity::Ssn,
        Entity::CreditCard,
        Entity::Iban,
        Entity::Nino,
        Entity::Insee,
        Entity::StreetAddress,
        Entity::IpAddress,
        Entity::Age,
        Entity::PostalCode,
        Entity::Gender,
        Entity::JobTitle,
        Entity::BirthDate,
        Entity::CreditScore,
        Entity::Score,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PersonName => "person_name",
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Ssn => "ssn",
            Self::CreditCard => "credit_card",
            Self::Iban => "iban",
            Self::Nino => "nino",
            Self::Insee => "insee",
            Self::StreetAddress => "street_address",
            Self::IpAddress => "ip_address",
            Self::Age => "age",
            Self::PostalCode => "zip",
            Self::Gender => "gender",
            Self::JobTitle => "job_title",
            Self::BirthDate => "birth_date",
            Self::CreditScore => "credit_score",
            Self::Score => "score",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }

    pub fn category(self) -> Category {
        match self {
            Self::PersonName
            | Self::Email
            | Self::Phone
            | Self::Ssn
            | Self::CreditCard
            | Self::Iban
            | Self::Nino
            | Self::Insee
            | Self::StreetAddress
            | Self::IpAddress => Category::Direct,
            Self::Age | Self::PostalCode | Self::Gender | Self::JobTitle | Self::BirthDate => Category::Quasi,
            Self::CreditScore | Self::Score => Category::Derived,
        }
    }

    /// The default label: government and financial identifiers RESTRICTED, every other
    /// personal column CONFIDENTIAL (quasi-identifiers because they re-identify in
    /// combination, derived scores because they reveal personal attributes).
    pub fn default_label(self) -> Classification {
        match self {
            Self::Ssn | Self::CreditCard | Self::Iban | Self::Nino | Self::Insee => Classification::Restricted,
            _ => Classification::Confidential,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_categories() {
        for e in Entity::ALL {
            assert_eq!(Entity::parse(e.as_str()), Some(e));
            assert_ne!(e.category(), Category::None, "every entity is personal data");
        }
        assert_eq!(Entity::Ssn.default_label(), Classification::Restricted);
        assert_eq!(Entity::PersonName.default_label(), Classification::Confidential);
        assert_eq!(Entity::PostalCode.category(), Category::Quasi);
        assert_eq!(Entity::Score.category(), Category::Derived);
    }
}
