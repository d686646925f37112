//! What a column's name says. Names are split into lower-case, accent-free tokens (`snake_case`,
//! `camelCase`, `kebab-case`, digits), then matched against phrases in several languages and
//! their usual abbreviations. A name is only a hint: the scanner weighs it against the values,
//! and a misleading name (`col_7`, `notes`, `ref`) simply says nothing.

use crate::entity::Entity;

/// The tokens of a column name: `"DateOfBirth"` → `["date", "of", "birth"]`,
/// `"e-mail_adresse"` → `["e", "mail", "adresse"]`, `"Geburtsdatum"` → `["geburtsdatum"]`.
pub fn tokens(name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut prev: Option<char> = None;
    for c in name.chars() {
        let c = fold_accent(c);
        let boundary = match prev {
            Some(p) => (p.is_lowercase() && c.is_uppercase()) || (p.is_ascii_digit() != c.is_ascii_digit()),
            None => false,
        };
        if !c.is_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev = None;
            continue;
        }
        if boundary && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        cur.extend(c.to_lowercase());
        prev = Some(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The most tokens [`with_tokens`] handles without allocating.
const FAST_TOKENS: usize = 16;

/// Calls `f` with the tokens of `v`, exactly as [`tokens`] makes them. Plain ASCII values
/// (no case or letter/digit change inside a word, at most 128 bytes and 16 tokens: most cell
/// values) are lower-cased into a stack buffer and split there, with no allocation; anything
/// else goes through [`tokens`].
pub fn with_tokens<R>(v: &str, f: impl FnOnce(&[&str]) -> R) -> R {
    let b = v.as_bytes();
    let boundary_inside = b.windows(2).any(|w| {
        let (p, c) = (w[0], w[1]);
        (p.is_ascii_lowercase() && c.is_ascii_uppercase())
            || (p.is_ascii_alphanumeric() && c.is_ascii_alphanumeric() && p.is_ascii_digit() != c.is_ascii_digit())
    });
    if !v.is_ascii() || b.len() > 128 || boundary_inside {
        let owned = tokens(v);
        let words: Vec<&str> = owned.iter().map(String::as_str).collect();
        return f(&words);
    }
    let mut buf = [0u8; 128];
    let lower = &mut buf[..b.len()];
    lower.copy_from_slice(b);
    lower.make_ascii_lowercase();
    // ASCII in, ASCII out: always valid UTF-8.
    let text = std::str::from_utf8(lower).unwrap_or("");
    let mut words: [&str; FAST_TOKENS] = [""; FAST_TOKENS];
    let mut n = 0;
    for w in text.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()) {
        if n == FAST_TOKENS {
            let owned = tokens(v);
            let all: Vec<&str> = owned.iter().map(String::as_str).collect();
            return f(&all);
        }
        words[n] = w;
        n += 1;
    }
    f(&words[..n])
}

/// Latin letters with diacritics folded to their base letter (`é` → `e`, `ß` stays, `ü` → `u`).
pub fn fold_accent(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' => 'a',
        'À' | 'Á' | 'Â' | 'Ã' | 'Ä' | 'Å' => 'A',
        'ç' => 'c',
        'Ç' => 'C',
        'è' | 'é' | 'ê' | 'ë' => 'e',
        'È' | 'É' | 'Ê' | 'Ë' => 'E',
        'ì' | 'í' | 'î' | 'ï' => 'i',
        'Ì' | 'Í' | 'Î' | 'Ï' => 'I',
        'ñ' => 'n',
        'Ñ' => 'N',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' => 'o',
        'Ò' | 'Ó' | 'Ô' | 'Õ' | 'Ö' => 'O',
        'ù' | 'ú' | 'û' | 'ü' => 'u',
        'Ù' | 'Ú' | 'Û' | 'Ü' => 'U',
        'ý' | 'ÿ' => 'y',
        c => c,
    }
}

/// How much a name says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Strength {
    /// Could be it (`name`, `score`, `title`): the values must agree.
    Weak,
    /// Says it plainly (`email`, `date_of_birth`, `iban`).
    Strong,
}

/// Phrases per entity, as space-separated tokens. Matched as consecutive tokens of the name, or
/// (for phrases of five letters or more without spaces) as the whole of a glued token
/// (`emailaddress`, `dateofbirth`).
const PHRASES: &[(Entity, Strength, &[&str])] = &[
    (
        Entity::PersonName,
        Strength::Strong,
        &[
            "full name",
            "fullname",
            "first name",
            "firstname",
            "fname",
            "given name",
            "last name",
            "lastname",
            "lname",
            "surname",
            "family name",
            "middle name",
            "maiden name",
            "customer name",
            "client name",
            "contact name",
            "person name",
            "patient name",
            "employee name",
            "prenom",
            "nom de famille",
            "vorname",
            "nachname",
            "familienname",
            "nombre completo",
            "apellido",
            "apellidos",
            "cognome",
            "voornaam",
            "achternaam",
            "sobrenome",
            "nome completo",
        ],
    ),
    (Entity::PersonName, Strength::Weak, &["name", "nom", "nombre", "nome", "naam"]),
    (
        Entity::Email,
        Strength::Strong,
        &["email", "e mail", "mail", "email address", "emailaddress", "courriel", "correo", "correo electronico", "posta elettronica"],
    ),
    (
        Entity::Phone,
        Strength::Strong,
        &[
            "phone",
            "telephone",
            "tel",
            "phone number",
            "phonenumber",
            "mobile",
            "cell",
            "cellphone",
            "fax",
            "msisdn",
            "portable",
            "telefono",
            "telefon",
            "telefonnummer",
            "handy",
            "movil",
            "celular",
            "cellulare",
            "telefoonnummer",
            "numero de telephone",
        ],
    ),
    (Entity::Ssn, Strength::Strong, &["ssn", "social security", "social security number", "socialsecurity", "ss number"]),
    (
        Entity::CreditCard,
        Strength::Strong,
        &[
            "credit card",
            "creditcard",
            "card number",
            "cardnumber",
            "card no",
            "cc number",
            "ccnum",
            "pan",
            "carte bancaire",
            "tarjeta",
            "kreditkarte",
            "numero carta",
        ],
    ),
    (Entity::CreditCard, Strength::Weak, &["card", "cc", "carte"]),
    (Entity::Iban, Strength::Strong, &["iban", "bank account", "rib", "kontonummer", "numero de cuenta", "conto corrente"]),
    (Entity::Nino, Strength::Strong, &["nino", "national insurance", "ni number", "nin"]),
    (Entity::Insee, Strength::Strong, &["insee", "nir", "numero securite sociale", "securite sociale", "num secu"]),
    (
        Entity::StreetAddress,
        Strength::Strong,
        &[
            "address",
            "addr",
            "street",
            "street address",
            "address line",
            "address1",
            "adresse",
            "anschrift",
            "strasse",
            "direccion",
            "indirizzo",
            "calle",
            "domicile",
            "home address",
            "mailing address",
            "billing address",
            "shipping address",
        ],
    ),
    (
        Entity::IpAddress,
        Strength::Strong,
        &["ip", "ip address", "ipaddress", "ipaddr", "ipv4", "ipv6", "client ip", "remote addr", "remote ip", "source ip"],
    ),
    (Entity::Age, Strength::Strong, &["age", "alter", "edad", "leeftijd", "idade", "age years"]),
    (
        Entity::PostalCode,
        Strength::Strong,
        &[
            "zip",
            "zipcode",
            "zip code",
            "postal code",
            "postalcode",
            "postcode",
            "post code",
            "plz",
            "postleitzahl",
            "code postal",
            "codepostal",
            "cp",
            "codigo postal",
        ],
    ),
    (Entity::Gender, Strength::Strong, &["gender", "sex", "sexe", "genre", "geschlecht", "genero", "sesso", "geslacht"]),
    (
        Entity::JobTitle,
        Strength::Strong,
        &[
            "job title",
            "jobtitle",
            "job",
            "occupation",
            "profession",
            "poste",
            "metier",
            "beruf",
            "berufsbezeichnung",
            "puesto",
            "ocupacion",
            "professione",
            "functie",
        ],
    ),
    (Entity::JobTitle, Strength::Weak, &["title", "position", "role", "titre"]),
    (
        Entity::BirthDate,
        Strength::Strong,
        &[
            "birth date",
            "birthdate",
            "date of birth",
            "dateofbirth",
            "dob",
            "birthday",
            "born",
            "born on",
            "date naissance",
            "date de naissance",
            "naissance",
            "geburtsdatum",
            "geburtstag",
            "fecha nacimiento",
            "fecha de nacimiento",
            "data di nascita",
            "data nascita",
            "geboortedatum",
        ],
    ),
    (
        Entity::CreditScore,
        Strength::Strong,
        &["credit score", "creditscore", "fico", "fico score", "credit rating", "bonitat", "schufa", "score credit"],
    ),
    (
        Entity::Score,
        Strength::Strong,
        &[
            "churn",
            "churn probability",
            "churn prob",
            "propensity",
            "risk score",
            "fraud score",
            "likelihood",
            "affinity",
            "engagement score",
            "behavioural score",
            "behavioral score",
            "ltv score",
            "probability",
            "default probability",
        ],
    ),
    (Entity::Score, Strength::Weak, &["score", "prob"]),
];

/// Words that make a name *not* about a person when they qualify it: `product_name`,
/// `file_name`, `sku`, `order_number`, `created_date`.
const NOT_PERSONAL: &[&str] = &[
    "product",
    "item",
    "sku",
    "part",
    "order",
    "invoice",
    "transaction",
    "txn",
    "batch",
    "lot",
    "model",
    "version",
    "company",
    "business",
    "org",
    "organisation",
    "organization",
    "file",
    "table",
    "column",
    "host",
    "domain",
    "brand",
    "plan",
    "city",
    "country",
    "region",
    "store",
    "shop",
    "warehouse",
    "campaign",
    "category",
    "project",
    "team",
    "department",
    "event",
    "created",
    "updated",
    "modified",
    "signup",
    "start",
    "end",
    "due",
    "ship",
    "shipped",
    "delivery",
    "expiry",
    "expires",
    "tracking",
];

/// The entity a column name points at, with how plainly it says so; `None` when it says
/// nothing (or says it is not about a person).
pub fn hint(name: &str) -> Option<(Entity, Strength)> {
    let toks = tokens(name);
    if toks.is_empty() {
        return None;
    }
    let qualified_away = toks.iter().any(|t| NOT_PERSONAL.contains(&t.as_str()));
    let mut best: Option<(Entity, Strength, usize)> = None;
    for (entity, strength, phrases) in PHRASES {
        for phrase in *phrases {
            let words: Vec<&str> = phrase.split(' ').collect();
            let found = toks.windows(words.len()).any(|w| w.iter().zip(&words).all(|(a, b)| a == b))
                || (words.len() == 1 && phrase.len() >= 5 && toks.iter().any(|t| t == phrase));
            if !found {
                continue;
            }
            // The longest phrase wins (`date of birth` over `date`), then the plainer one.
            let better = match best {
                None => true,
                Some((_, s, len)) => words.len() > len || (words.len() == len && *strength > s),
            };
            if better {
                best = Some((*entity, *strength, words.len()));
            }
        }
    }
    let (entity, strength, _) = best?;
    if qualified_away {
        return None;
    }
    Some((entity, strength))
}

/// Whether a column name says its values are *not* about a person (`sku`, `order_no`,
/// `created_at`) without naming a personal entity: weak value evidence (SSN-shaped codes,
/// 5-digit numbers, phone-shaped digits) is then ignored. `ref`, `notes` and the like say
/// nothing either way.
pub fn says_not_personal(name: &str) -> bool {
    hint(name).is_none()
        && tokens(name).iter().any(|t| {
            NOT_PERSONAL.contains(&t.as_str()) || matches!(t.as_str(), "code" | "id" | "no" | "num" | "number" | "date" | "at" | "ts")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_tokens_are_the_tokens() {
        for v in [
            "12 Baker Street",
            "Senior Data Engineer",
            "DataEngineer",
            "flat 4b, 221B Baker St.",
            "Zoë Müller",
            "",
            "  ",
            "a b c d e f g h i j k l m n o p q r s t",
            "HÉLÈNE",
            "x1y2",
        ] {
            let expected = tokens(v);
            with_tokens(v, |got| assert_eq!(got, expected.iter().map(String::as_str).collect::<Vec<_>>().as_slice(), "{v:?}"));
        }
    }

    #[test]
    fn tokenising() {
        assert_eq!(tokens("DateOfBirth"), ["date", "of", "birth"]);
        assert_eq!(tokens("e-mail_Adresse"), ["e", "mail", "adresse"]);
        assert_eq!(tokens("address2"), ["address", "2"]);
        assert_eq!(tokens("Prénom"), ["prenom"]);
        assert_eq!(tokens("  "), Vec::<String>::new());
    }

    #[test]
    fn hints_in_several_languages() {
        for (name, entity) in [
            ("email", Entity::Email),
            ("E-Mail", Entity::Email),
            ("customer_email_address", Entity::Email),
            ("courriel", Entity::Email),
            ("first_name", Entity::PersonName),
            ("Vorname", Entity::PersonName),
            ("apellidos", Entity::PersonName),
            ("date_of_birth", Entity::BirthDate),
            ("dob", Entity::BirthDate),
            ("Geburtsdatum", Entity::BirthDate),
            ("date_de_naissance", Entity::BirthDate),
            ("tel", Entity::Phone),
            ("telefono_movil", Entity::Phone),
            ("zip", Entity::PostalCode),
            ("PLZ", Entity::PostalCode),
            ("code_postal", Entity::PostalCode),
            ("ssn", Entity::Ssn),
            ("iban", Entity::Iban),
            ("credit_score", Entity::CreditScore),
            ("churn_probability", Entity::Score),
            ("geschlecht", Entity::Gender),
            ("job_title", Entity::JobTitle),
            ("client_ip", Entity::IpAddress),
        ] {
            assert_eq!(hint(name).map(|h| h.0), Some(entity), "{name}");
        }
        assert_eq!(hint("name"), Some((Entity::PersonName, Strength::Weak)));
        for says_nothing in ["col_7", "notes", "ref", "amount", "product_name", "company_name", "plan", "signup_date", "x"] {
            assert_eq!(hint(says_nothing), None, "{says_nothing}");
        }
        assert!(says_not_personal("sku") && says_not_personal("order_number") && says_not_personal("created_at"));
        assert!(!says_not_personal("col_7") && !says_not_personal("ssn") && !says_not_personal("ref"));
        assert!(!says_not_personal("phone_number"), "a personal entity named with a generic word");
    }
}
