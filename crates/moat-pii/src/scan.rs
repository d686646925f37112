//! The column scanner: from a column's name and a sample of its values to a proposal (entity,
//! PII category, confidence, label). Values decide; a name only tips the balance, so a
//! misleading name (`col_7`, `notes`, `ref`) is judged by what the column holds, and a shape
//! without its checks (16 digits failing Luhn, SKUs shaped like SSNs) is not PII.

use std::collections::HashSet;

use moat_core::classification::Classification;

use crate::entity::{Category, Entity};
use crate::names::{self, Strength};
use crate::people::looks_like_person_name;
use crate::validate;

/// How a scan samples and decides.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Rows sampled per table (reservoir sampling, so every row is equally likely).
    pub sample_rows: usize,
    /// The current year, for telling birth dates from other dates.
    pub now_year: u16,
    /// At most this many phone-shaped values per column are checked against the numbering
    /// plans (the expensive check); the share found valid stands for the column.
    pub phone_checks: usize,
}

impl Default for ScanOptions {
    fn default() -> Self {
        Self { sample_rows: 1_000, now_year: 2026, phone_checks: 64 }
    }
}

/// What the scanner proposes for one column. A proposal is never applied over a manual label.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    pub entity: Option<Entity>,
    pub category: Category,
    /// 0–1: how sure the scanner is of `category` (and `entity`).
    pub confidence: f32,
    pub label: Classification,
    /// Why, in a few words (`"97% valid IBANs; name agrees"`).
    pub reason: String,
}

impl Proposal {
    fn found(entity: Entity, confidence: f32, reason: String) -> Self {
        Self {
            entity: Some(entity),
            category: entity.category(),
            confidence: confidence.clamp(0.0, 0.99),
            label: entity.default_label(),
            reason,
        }
    }

    fn nothing(confidence: f32, reason: String) -> Self {
        Self { entity: None, category: Category::None, confidence, label: Classification::Internal, reason }
    }
}

/// Counts of what the sampled values look like.
#[derive(Debug, Default)]
struct Profile<'a> {
    n: usize,
    distinct: usize,
    email: usize,
    card: usize,
    ssn: usize,
    /// `AAA-GG-SSSS` whatever the digits.
    ssn_shaped: usize,
    iban: usize,
    nino: usize,
    insee: usize,
    ip: usize,
    phone_shaped: usize,
    /// The first phone-shaped values, checked against the numbering plans only if the column
    /// is phone-shaped at all (the check is the expensive one).
    phone_candidates: Vec<&'a str>,
    person: usize,
    address: usize,
    postal_distinct: usize,
    postal_digits: usize,
    gender: usize,
    job: usize,
    years: Vec<u16>,
    numeric: usize,
    integers: usize,
    in_unit: usize,
    fine_decimals: usize,
    min: f64,
    max: f64,
    sum: f64,
    sum_sq: f64,
}

impl Profile<'_> {
    fn frac(&self, k: usize) -> f32 {
        if self.n == 0 { 0.0 } else { k as f32 / self.n as f32 }
    }

    fn std_dev(&self) -> f64 {
        if self.numeric < 2 {
            return 0.0;
        }
        let n = self.numeric as f64;
        let mean = self.sum / n;
        (self.sum_sq / n - mean * mean).max(0.0).sqrt()
    }
}

const STREET_WORDS: &[&str] = &[
    "street",
    "st",
    "avenue",
    "ave",
    "road",
    "rd",
    "boulevard",
    "blvd",
    "lane",
    "ln",
    "drive",
    "dr",
    "court",
    "ct",
    "way",
    "place",
    "pl",
    "terrace",
    "close",
    "crescent",
    "square",
    "rue",
    "chemin",
    "allee",
    "impasse",
    "quai",
    "strasse",
    "str",
    "weg",
    "platz",
    "gasse",
    "allee",
    "calle",
    "avenida",
    "plaza",
    "paseo",
    "via",
    "viale",
    "piazza",
    "corso",
    "straat",
    "laan",
    "plein",
    "gracht",
    "rua",
];

/// `12 Main Street`, `Flat 3, 221B Baker St`, `5 rue de la Paix`, `Hauptstraße 12`, `Calle Mayor 7`.
fn street_address(v: &str) -> bool {
    let has_digit = v.bytes().any(|b| b.is_ascii_digit());
    // Cheap refusals first: most values are plain numbers or words.
    if !has_digit || v.len() > 120 || !v.bytes().any(|b| b.is_ascii_alphabetic()) {
        return false;
    }
    const SUFFIXES: &[&str] = &["strasse", "straße", "straat", "weg", "platz", "allee", "gasse", "gracht", "plein", "laan", "ring"];
    names::with_tokens(v, |words| {
        words.iter().any(|w| STREET_WORDS.contains(w) || SUFFIXES.iter().any(|s| w.len() > s.len() && w.ends_with(s)))
    })
}

/// UK (`SW1A 1AA`), Canadian (`K1A 0B1`) and Dutch (`1012 AB`) postal codes: shapes no other
/// common value has.
fn distinctive_postal(v: &str) -> bool {
    let v = v.trim();
    // The longest of these shapes is 8 bytes with its space (`SW1A 1AA`).
    if v.len() > 10 {
        return false;
    }
    let mut buf = [0u8; 10];
    let mut len = 0;
    for b in v.bytes().filter(|b| *b != b' ') {
        buf[len] = b.to_ascii_uppercase();
        len += 1;
    }
    let c = &buf[..len];
    let a = |i: usize| c.get(i).is_some_and(u8::is_ascii_uppercase);
    let d = |i: usize| c.get(i).is_some_and(u8::is_ascii_digit);
    let uk_inward = |i: usize| c.len() == i + 3 && d(i) && a(i + 1) && a(i + 2);
    let uk = a(0)
        && ((d(1) && (uk_inward(2) || ((d(2) || a(2)) && uk_inward(3))))
            || (a(1) && d(2) && (uk_inward(3) || ((d(3) || a(3)) && uk_inward(4)))));
    let ca = c.len() == 6 && a(0) && d(1) && a(2) && d(3) && a(4) && d(5);
    let nl = c.len() == 6 && (0..4).all(d) && a(4) && a(5) && c[0] != b'0';
    uk || ca || nl
}

/// US ZIP (`02139`, `02139-4307`) and the 5-digit codes of France, Germany, Spain, Italy.
fn postal_digits(v: &str) -> bool {
    let b = v.trim().as_bytes();
    match b.len() {
        5 => b.iter().all(u8::is_ascii_digit),
        10 => b[5] == b'-' && b[..5].iter().chain(&b[6..]).all(u8::is_ascii_digit),
        _ => false,
    }
}

const GENDERS: &[&str] = &[
    "m",
    "f",
    "x",
    "male",
    "female",
    "man",
    "woman",
    "other",
    "nonbinary",
    "non-binary",
    "nb",
    "unknown",
    "h",
    "homme",
    "femme",
    "autre",
    "männlich",
    "weiblich",
    "divers",
    "masculino",
    "femenino",
    "hombre",
    "mujer",
    "maschio",
    "femmina",
    "uomo",
    "donna",
    "vrouw",
    "w",
];

const JOB_WORDS: &[&str] = &[
    "engineer",
    "manager",
    "director",
    "developer",
    "analyst",
    "consultant",
    "accountant",
    "nurse",
    "teacher",
    "doctor",
    "lawyer",
    "assistant",
    "officer",
    "clerk",
    "technician",
    "designer",
    "architect",
    "administrator",
    "specialist",
    "coordinator",
    "supervisor",
    "executive",
    "president",
    "scientist",
    "researcher",
    "sales",
    "representative",
    "agent",
    "driver",
    "mechanic",
    "electrician",
    "plumber",
    "chef",
    "cook",
    "cashier",
    "pharmacist",
    "dentist",
    "surgeon",
    "professor",
    "lecturer",
    "editor",
    "writer",
    "journalist",
    "photographer",
    "programmer",
    "intern",
    "ceo",
    "cto",
    "cfo",
    "vp",
    "head",
    "lead",
    "senior",
    "junior",
    "ingenieur",
    "directeur",
    "directrice",
    "comptable",
    "infirmier",
    "infirmiere",
    "enseignant",
    "avocat",
    "medecin",
    "vendeur",
    "berater",
    "leiter",
    "entwickler",
    "lehrer",
    "arzt",
    "krankenschwester",
    "ingeniero",
    "gerente",
    "director",
    "profesor",
    "abogado",
    "enfermera",
    "ingegnere",
    "direttore",
    "insegnante",
    "avvocato",
    "medico",
    "infermiere",
];

fn job_title(v: &str) -> bool {
    if v.len() > 80 || v.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    names::with_tokens(v, |words| !words.is_empty() && words.len() <= 6 && words.iter().any(|w| JOB_WORDS.contains(w)))
}

/// A gender value, compared without allocating (case-insensitive).
fn gender(v: &str) -> bool {
    v.len() <= 12 && GENDERS.iter().any(|g| g.eq_ignore_ascii_case(v))
}

/// What people type for "no value" (`n/a`, `TBD`, `-`): counted as missing, like NULL.
fn is_placeholder(v: &str) -> bool {
    if v.is_empty() {
        return true;
    }
    // The longest placeholder has 11 bytes; compared in place, without allocating.
    if v.len() > 11 || !v.is_ascii() {
        return false;
    }
    let mut buf = [0u8; 11];
    let lower = &mut buf[..v.len()];
    lower.copy_from_slice(v.as_bytes());
    lower.make_ascii_lowercase();
    matches!(
        std::str::from_utf8(lower).unwrap_or(""),
        "n/a"
            | "na"
            | "n.a."
            | "-"
            | "--"
            | "?"
            | "none"
            | "null"
            | "nil"
            | "nan"
            | "unknown"
            | "tbd"
            | "tba"
            | "#n/a"
            | "missing"
            | "inconnu"
            | "unbekannt"
            | "desconocido"
    )
}

fn profile<'a>(values: &[Option<&'a str>], opts: &ScanOptions) -> Profile<'a> {
    let mut p = Profile { min: f64::INFINITY, max: f64::NEG_INFINITY, ..Default::default() };
    let mut seen: HashSet<&str> = HashSet::new();
    for v in values.iter().flatten() {
        let v = v.trim();
        if is_placeholder(v) {
            continue;
        }
        p.n += 1;
        seen.insert(v);
        let first = v.as_bytes()[0];
        let has_at = v.contains('@');
        if has_at {
            p.email += usize::from(validate::email(v));
            continue;
        }
        if let Ok(x) = v.parse::<f64>()
            && x.is_finite()
            && first != b'+'
        {
            p.numeric += 1;
            p.integers += usize::from(x.fract() == 0.0 && !v.contains('.'));
            p.in_unit += usize::from((0.0..=1.0).contains(&x));
            p.fine_decimals += usize::from(v.split_once('.').is_some_and(|(_, d)| d.len() >= 3));
            p.min = p.min.min(x);
            p.max = p.max.max(x);
            p.sum += x;
            p.sum_sq += x * x;
        }
        if first.is_ascii_digit() || first == b'+' || first == b'(' {
            p.card += usize::from(validate::card_number(v).is_some());
            p.ssn += usize::from(validate::us_ssn(v));
            p.ssn_shaped += usize::from(
                v.len() == 11 && v.bytes().enumerate().all(|(i, b)| if i == 3 || i == 6 { b == b'-' } else { b.is_ascii_digit() }),
            );
            p.insee += usize::from(validate::fr_insee(v));
            p.ip += usize::from(validate::ipv4(v) || validate::ipv6(v));
            p.postal_digits += usize::from(postal_digits(v));
            p.address += usize::from(street_address(v));
            if let Some(d) = validate::date(v) {
                p.years.push(d.year);
            }
            if validate::phone_shaped(v) {
                p.phone_shaped += 1;
                if p.phone_candidates.len() < opts.phone_checks {
                    p.phone_candidates.push(v);
                }
            }
            p.postal_distinct += usize::from(distinctive_postal(v));
            continue;
        }
        if first.is_ascii_alphabetic() {
            p.iban += usize::from(validate::iban(v));
            p.nino += usize::from(validate::uk_nino(v));
            p.postal_distinct += usize::from(distinctive_postal(v));
            p.ip += usize::from(validate::ipv6(v));
        }
        p.address += usize::from(street_address(v));
        p.gender += usize::from(gender(v));
        p.job += usize::from(job_title(v));
        p.person += usize::from(looks_like_person_name(v));
        if let Some(d) = validate::date(v) {
            p.years.push(d.year);
        }
    }
    p.distinct = seen.len();
    p
}

/// Proposes a classification for one column from its name and sampled values (`None` = NULL).
pub fn scan_column(name: &str, values: &[Option<&str>], opts: &ScanOptions) -> Proposal {
    let hint = names::hint(name);
    let not_personal = names::says_not_personal(name);
    let p = profile(values, opts);
    let hinted = |e: Entity| hint.is_some_and(|(h, _)| h == e);
    let agree = |e: Entity| if hinted(e) { "; the name agrees" } else { "" };
    let conf = |frac: f32, e: Entity| 0.5 + 0.45 * frac + if hinted(e) { 0.05 } else { 0.0 };
    if p.n == 0 {
        return match hint {
            Some((e, Strength::Strong)) => Proposal::found(e, 0.4, format!("no values to check; the name says {}", e.as_str())),
            _ => Proposal::nothing(0.5, "no values to check".into()),
        };
    }

    // Validated identifiers: the checks make a match meaningful on its own.
    for (entity, count, what) in [
        (Entity::CreditCard, p.card, "card numbers (Luhn and issuer range)"),
        (Entity::Iban, p.iban, "IBANs (mod 97)"),
        (Entity::Insee, p.insee, "French NIRs (key)"),
        (Entity::Nino, p.nino, "UK NI numbers"),
        (Entity::Email, p.email, "e-mail addresses"),
        (Entity::IpAddress, p.ip, "IP addresses"),
    ] {
        let f = p.frac(count);
        if f >= 0.8 || (f >= 0.5 && hinted(entity)) {
            return Proposal::found(entity, conf(f, entity), format!("{:.0}% valid {what}{}", f * 100.0, agree(entity)));
        }
    }
    // SSN-shaped product codes break the area/group/serial rules often enough to fall short.
    let f = p.frac(p.ssn);
    if (f >= 0.95 && !not_personal) || (f >= 0.6 && hinted(Entity::Ssn)) {
        return Proposal::found(Entity::Ssn, conf(f, Entity::Ssn), format!("{:.0}% valid SSNs{}", f * 100.0, agree(Entity::Ssn)));
    }
    // Named SSN and shaped like one (test data often breaks the issuing rules): the name and
    // the shape agree, so no other reading of the digits (phone numbers) goes first.
    let shaped = p.frac(p.ssn_shaped);
    if shaped >= 0.8 && hinted(Entity::Ssn) {
        return Proposal::found(Entity::Ssn, 0.5 + 0.4 * shaped, format!("{:.0}% SSN-shaped values; the name says SSN", shaped * 100.0));
    }
    let shaped = p.frac(p.phone_shaped);
    if shaped >= 0.8 && (!not_personal || hinted(Entity::Phone)) && p.frac(p.postal_digits) < 0.5 {
        let valid = p.phone_candidates.iter().filter(|v| validate::phone(v, validate::PHONE_REGIONS)).count() as f32
            / p.phone_candidates.len().max(1) as f32;
        if valid >= 0.8 {
            return Proposal::found(
                Entity::Phone,
                conf(valid, Entity::Phone),
                format!("{:.0}% valid phone numbers{}", valid * 100.0, agree(Entity::Phone)),
            );
        }
    }
    let f = p.frac(p.address);
    if f >= 0.6 || (f >= 0.3 && hinted(Entity::StreetAddress)) {
        return Proposal::found(
            Entity::StreetAddress,
            conf(f, Entity::StreetAddress),
            format!("{:.0}% street addresses{}", f * 100.0, agree(Entity::StreetAddress)),
        );
    }
    let f = p.frac(p.person);
    let varied = p.distinct >= 20.min((p.n as f32 * 0.3) as usize).max(2);
    if varied && !not_personal && (f >= 0.6 || (f >= 0.3 && hinted(Entity::PersonName))) {
        return Proposal::found(
            Entity::PersonName,
            conf(f, Entity::PersonName),
            format!("{:.0}% person names{}", f * 100.0, agree(Entity::PersonName)),
        );
    }
    let f = p.frac(p.gender);
    if f >= 0.9 && p.distinct <= 8 && (hinted(Entity::Gender) || p.distinct >= 2) {
        return Proposal::found(
            Entity::Gender,
            conf(f, Entity::Gender),
            format!("{:.0}% gender values{}", f * 100.0, agree(Entity::Gender)),
        );
    }
    let f = p.frac(p.postal_distinct);
    if f >= 0.8 {
        return Proposal::found(
            Entity::PostalCode,
            conf(f, Entity::PostalCode),
            format!("{:.0}% postal codes{}", f * 100.0, agree(Entity::PostalCode)),
        );
    }
    let f = p.frac(p.postal_digits);
    if f >= 0.8 && hinted(Entity::PostalCode) {
        return Proposal::found(
            Entity::PostalCode,
            conf(f, Entity::PostalCode),
            format!("{:.0}% ZIP-shaped codes; the name agrees", f * 100.0),
        );
    }
    let f = p.frac(p.years.len());
    if f >= 0.8 {
        if hinted(Entity::BirthDate) {
            return Proposal::found(Entity::BirthDate, conf(f, Entity::BirthDate), format!("{:.0}% dates; the name agrees", f * 100.0));
        }
        let mut years = p.years.clone();
        years.sort_unstable();
        let at = |q: f32| years[((years.len() - 1) as f32 * q) as usize];
        let (p10, median, p90) = (at(0.1), at(0.5), at(0.9));
        let plausible_ages = median + 90 >= opts.now_year && median + 16 <= opts.now_year;
        if hint.is_none() && !not_personal && plausible_ages && p90 - p10 >= 15 {
            return Proposal::found(
                Entity::BirthDate,
                0.6,
                format!("{:.0}% dates spread over {} years, median {median}: birth dates", f * 100.0, p90 - p10),
            );
        }
        return Proposal::nothing(0.8, format!("{:.0}% dates, not birth dates", f * 100.0));
    }
    let f = p.frac(p.job);
    if f >= 0.6 || (f >= 0.3 && hinted(Entity::JobTitle)) {
        return Proposal::found(
            Entity::JobTitle,
            conf(f, Entity::JobTitle),
            format!("{:.0}% job titles{}", f * 100.0, agree(Entity::JobTitle)),
        );
    }
    if let Some(proposal) = numeric(&p, hint, not_personal) {
        return proposal;
    }
    // A plain name and values that do not say otherwise.
    if let Some((e, Strength::Strong)) = hint
        && !matches!(e, Entity::Age | Entity::CreditScore | Entity::Score)
    {
        return Proposal::found(e, 0.55, format!("the name says {}; the values neither confirm nor contradict it", e.as_str()));
    }
    Proposal::nothing(0.8, "no personal data found in the name or the values".into())
}

/// Numeric profiles: credit scores (integers in 300–850), probabilities and behavioural scores
/// (0–1 with fine decimals), ages (integers 0–120, named so).
fn numeric(p: &Profile, hint: Option<(Entity, Strength)>, not_personal: bool) -> Option<Proposal> {
    if p.frac(p.numeric) < 0.95 || not_personal {
        return None;
    }
    let hinted = |e: Entity| hint.is_some_and(|(h, _)| h == e);
    let all_int = p.integers == p.numeric;
    if all_int && p.min >= 300.0 && p.max <= 850.0 && (hinted(Entity::CreditScore) || (p.std_dev() >= 25.0 && p.distinct >= 20)) {
        let c = if hinted(Entity::CreditScore) { 0.9 } else { 0.7 };
        return Some(Proposal::found(Entity::CreditScore, c, format!("integers {}–{}: a credit-score range", p.min, p.max)));
    }
    let unit = p.in_unit == p.numeric;
    if unit && (hinted(Entity::Score) || hinted(Entity::CreditScore)) {
        return Some(Proposal::found(Entity::Score, 0.85, "values in 0–1; the name says score".into()));
    }
    if unit && p.frac(p.fine_decimals) >= 0.6 && p.distinct * 2 >= p.n && hint.is_none() {
        return Some(Proposal::found(Entity::Score, 0.6, "fine-grained values in 0–1: a probability".into()));
    }
    if hinted(Entity::Age) && all_int && p.min >= 0.0 && p.max <= 120.0 {
        return Some(Proposal::found(Entity::Age, 0.85, format!("integers {}–{}; the name says age", p.min, p.max)));
    }
    if hinted(Entity::Score) && p.min >= 0.0 && p.max <= 1000.0 {
        return Some(Proposal::found(Entity::Score, 0.7, "numbers; the name says score".into()));
    }
    None
}

/// The smallest equivalence class over quasi-identifier columns (k-anonymity of the sample):
/// each row is the tuple of its quasi-identifier values. 0 for no rows.
pub fn k_anonymity(rows: &[Vec<Option<&str>>]) -> usize {
    let mut classes: std::collections::HashMap<&[Option<&str>], usize> = std::collections::HashMap::new();
    for r in rows {
        *classes.entry(r.as_slice()).or_default() += 1;
    }
    classes.values().copied().min().unwrap_or(0)
}

/// A uniform sample of fixed size from a stream of unknown length (Vitter's algorithm R),
/// deterministic for a seed.
#[derive(Debug)]
pub struct Reservoir<T> {
    capacity: usize,
    seen: u64,
    state: u64,
    items: Vec<T>,
}

impl<T> Reservoir<T> {
    pub fn new(capacity: usize, seed: u64) -> Self {
        // splitmix64 of the seed, so that neighbouring seeds start far apart.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self { capacity, seen: 0, state: (z ^ (z >> 31)) | 1, items: Vec::with_capacity(capacity.min(1 << 16)) }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn offer(&mut self, item: T) {
        self.offer_with(|| item);
    }

    /// Offers the item `make` would build, building it only if it is kept (most are not once
    /// the reservoir is full).
    pub fn offer_with(&mut self, make: impl FnOnce() -> T) {
        self.seen += 1;
        if self.items.len() < self.capacity {
            self.items.push(make());
            return;
        }
        let j = self.next() % self.seen;
        if let Ok(j) = usize::try_from(j)
            && j < self.capacity
        {
            self.items[j] = make();
        }
    }

    /// The items kept so far.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// How many items were offered.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    pub fn into_vec(self) -> Vec<T> {
        self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(name: &str, values: &[&str]) -> Proposal {
        let v: Vec<Option<&str>> = values.iter().map(|s| Some(*s)).collect();
        scan_column(name, &v, &ScanOptions::default())
    }

    #[test]
    fn values_decide_whatever_the_name() {
        let emails = ["a.b@example.com", "c@d.org", "x.y@mail.example.co.uk"];
        assert_eq!(scan("col_7", &emails).entity, Some(Entity::Email));
        assert_eq!(scan("notes", &["123-45-6789", "536-22-1234", "078-05-1121"]).entity, Some(Entity::Ssn));
        assert_eq!(scan("ref", &["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"]).entity, Some(Entity::Iban));
        // Near misses: 16 digits failing Luhn; SSN-shaped SKUs named so.
        assert_eq!(scan("col_3", &["4111111111111112", "4242424242424241", "5555555555554440"]).category, Category::None);
        assert_eq!(scan("sku", &["123-45-6789", "536-22-1234", "078-05-1121"]).category, Category::None);
        // Named SSN, shaped like one, issuing rules broken (test data): still an SSN, not a phone.
        assert_eq!(scan("ssn", &["123-45-6789", "987-65-4321"]).entity, Some(Entity::Ssn));
    }

    #[test]
    fn a_name_alone_is_a_weaker_proposal() {
        let p = scan("email", &["n/a", "unknown", "-"]);
        assert_eq!((p.entity, p.confidence < 0.6), (Some(Entity::Email), true));
        assert_eq!(scan("amount", &["1.5", "2.25"]).category, Category::None);
    }

    #[test]
    fn k_anonymity_is_the_smallest_class() {
        let rows = vec![vec![Some("02139"), Some("F")], vec![Some("02139"), Some("F")], vec![Some("10001"), Some("M")]];
        assert_eq!(k_anonymity(&rows), 1);
        assert_eq!(k_anonymity(&rows[..2]), 2);
        assert_eq!(k_anonymity(&[]), 0);
    }

    #[test]
    fn reservoir_is_uniform_enough_and_deterministic() {
        let mut counts = [0usize; 10];
        for seed in 0..2_000u64 {
            let mut r = Reservoir::new(1, seed);
            for i in 0..10 {
                r.offer(i);
            }
            counts[r.into_vec()[0]] += 1;
        }
        assert!(counts.iter().all(|c| (120..=280).contains(c)), "{counts:?}");
        let sample = |seed| {
            let mut r = Reservoir::new(5, seed);
            (0..1000).for_each(|i| r.offer(i));
            r.into_vec()
        };
        assert_eq!(sample(7), sample(7));
    }
}
