//! Value validators. Each takes one raw cell (trimmed by the caller or not) and says whether it
//! *is* such an identifier, checking what the issuer checks (check digits, reserved ranges), not
//! only the shape. All are allocation-free or allocate at most a few bytes, and never panic.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The digits of `s` when it is only digits and the separators people write between groups
/// (space, `-`, `.`), with at most `max` digits; `None` otherwise.
fn digits_only(s: &str, max: usize) -> Option<([u8; 32], usize)> {
    let mut out = [0u8; 32];
    let mut n = 0;
    for b in s.trim().bytes() {
        match b {
            b'0'..=b'9' => {
                if n == max.min(32) {
                    return None;
                }
                out[n] = b - b'0';
                n += 1;
            }
            b' ' | b'-' | b'.' => {}
            _ => return None,
        }
    }
    Some((out, n))
}

/// The Luhn (mod 10) check over digit values, rightmost digit being the check digit.
pub fn luhn(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Card networks, by issuer identification number (IIN) range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardBrand {
    Visa,
    Mastercard,
    Amex,
    Discover,
    Jcb,
    Diners,
    UnionPay,
    Maestro,
}

/// The first `k` digits as a number.
fn prefix(d: &[u8], k: usize) -> u32 {
    d.iter().take(k).fold(0, |acc, &x| acc * 10 + u32::from(x))
}

/// The network whose IIN range and length `digits` fall in.
fn card_brand(d: &[u8]) -> Option<CardBrand> {
    let len = d.len();
    let (p1, p2, p3, p4, p6) = (prefix(d, 1), prefix(d, 2), prefix(d, 3), prefix(d, 4), prefix(d, 6));
    if p1 == 4 && matches!(len, 13 | 16 | 19) {
        return Some(CardBrand::Visa);
    }
    if ((51..=55).contains(&p2) || (2221..=2720).contains(&p4)) && len == 16 {
        return Some(CardBrand::Mastercard);
    }
    if matches!(p2, 34 | 37) && len == 15 {
        return Some(CardBrand::Amex);
    }
    if (p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 || (622_126..=622_925).contains(&p6)) && (16..=19).contains(&len) {
        return Some(CardBrand::Discover);
    }
    if (3528..=3589).contains(&p4) && (16..=19).contains(&len) {
        return Some(CardBrand::Jcb);
    }
    if ((300..=305).contains(&p3) || p2 == 36 || p2 == 38 || p2 == 39) && (14..=19).contains(&len) {
        return Some(CardBrand::Diners);
    }
    if p2 == 62 && (16..=19).contains(&len) {
        return Some(CardBrand::UnionPay);
    }
    if (p2 == 50 || (56..=69).contains(&p2)) && (12..=19).contains(&len) {
        return Some(CardBrand::Maestro);
    }
    None
}

/// A payment card number (PAN): 12–19 digits, optionally grouped by spaces or dashes, in a
/// known network's IIN range and length, passing Luhn.
pub fn card_number(s: &str) -> Option<CardBrand> {
    let (d, n) = digits_only(s, 19)?;
    let d = &d[..n];
    if n < 12 || !luhn(d) {
        return None;
    }
    card_brand(d)
}

/// A US Social Security number, `AAA-GG-SSSS` or nine digits: area not 000, 666 or 900–999,
/// group not 00, serial not 0000, and not one of the numbers known from advertising
/// (078-05-1120, 219-09-9999).
pub fn us_ssn(s: &str) -> bool {
    let s = s.trim();
    let b = s.as_bytes();
    let digits: [u8; 9] = match b.len() {
        11 if b[3] == b'-' && b[6] == b'-' || b[3] == b' ' && b[6] == b' ' => {
            let mut d = [0u8; 9];
            for (k, i) in [0, 1, 2, 4, 5, 7, 8, 9, 10].into_iter().enumerate() {
                if !b[i].is_ascii_digit() {
                    return false;
                }
                d[k] = b[i] - b'0';
            }
            d
        }
        9 if b.iter().all(u8::is_ascii_digit) => {
            let mut d = [0u8; 9];
            for (k, x) in b.iter().enumerate() {
                d[k] = x - b'0';
            }
            d
        }
        _ => return false,
    };
    let area = prefix(&digits, 3);
    let group = prefix(&digits[3..], 2);
    let serial = prefix(&digits[5..], 4);
    if area == 0 || area == 666 || area >= 900 || group == 0 || serial == 0 {
        return false;
    }
    !matches!((area, group, serial), (78, 5, 1120) | (219, 9, 9999))
}

/// `s` without spaces, upper-cased, when it fits in `N` bytes; `None` when longer.
fn compact_upper<const N: usize>(s: &str) -> Option<([u8; N], usize)> {
    let mut buf = [0u8; N];
    let mut n = 0;
    for b in s.trim().bytes() {
        if b == b' ' {
            continue;
        }
        if n == N {
            return None;
        }
        buf[n] = b.to_ascii_uppercase();
        n += 1;
    }
    Some((buf, n))
}

/// IBAN lengths per country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

/// An IBAN: country code with its registered length, two check digits, and mod-97 = 1 over the
/// rearranged number. Spaces between groups are allowed; letters may be lower case.
pub fn iban(s: &str) -> bool {
    let Some((buf, n)) = compact_upper::<34>(s) else {
        return false;
    };
    let v = &buf[..n];
    if !v.iter().all(u8::is_ascii_alphanumeric) {
        return false;
    }
    if n < 15 || !v[0].is_ascii_uppercase() || !v[1].is_ascii_uppercase() || !v[2].is_ascii_digit() || !v[3].is_ascii_digit() {
        return false;
    }
    let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| c.as_bytes() == &v[..2]) else {
        return false;
    };
    if n != len {
        return false;
    }
    // Move the first four characters to the end; letters count as 10..35.
    let mut rem: u32 = 0;
    for &c in v[4..].iter().chain(&v[..4]) {
        if c.is_ascii_digit() {
            rem = (rem * 10 + u32::from(c - b'0')) % 97;
        } else {
            let x = u32::from(c - b'A') + 10;
            rem = (rem * 100 + x) % 97;
        }
    }
    rem == 1
}

/// A UK National Insurance number (`AB123456C`, spaces allowed): prefix letters from the allowed
/// sets and not an unallocated pair, six digits, suffix A–D.
pub fn uk_nino(s: &str) -> bool {
    let Some((buf, n)) = compact_upper::<9>(s) else {
        return false;
    };
    if n != 9 {
        return false;
    }
    let (a, b) = (buf[0], buf[1]);
    let first_ok = a.is_ascii_uppercase() && !b"DFIQUV".contains(&a);
    let second_ok = b.is_ascii_uppercase() && !b"DFIOQUV".contains(&b);
    let pair = [a, b];
    let unallocated = [b"BG", b"GB", b"NK", b"KN", b"TN", b"NT", b"ZZ"].iter().any(|p| **p == pair);
    first_ok && second_ok && !unallocated && buf[2..8].iter().all(u8::is_ascii_digit) && (b'A'..=b'D').contains(&buf[8])
}

/// A French social security number (NIR / INSEE): 13 characters (sex, year, month, department
/// — `2A`/`2B` for Corsica —, commune, order) and a two-digit key = 97 − (number mod 97).
/// Spaces allowed.
pub fn fr_insee(s: &str) -> bool {
    let Some((buf, n)) = compact_upper::<15>(s) else {
        return false;
    };
    if n != 15 || !matches!(buf[0], b'1' | b'2' | b'3' | b'4' | b'7' | b'8') {
        return false;
    }
    // Corsica: 2A counts as 19, 2B as 18 in the key computation.
    let mut body = buf;
    let corsica = match (buf[5], buf[6]) {
        (b'2', b'A') => Some(1_000_000u64),
        (b'2', b'B') => Some(2_000_000u64),
        _ => None,
    };
    if corsica.is_some() {
        body[6] = b'0';
    }
    if !body.iter().all(u8::is_ascii_digit) {
        return false;
    }
    let month = (body[3] - b'0') * 10 + (body[4] - b'0');
    if !(matches!(month, 1..=12) || matches!(month, 20..=42 | 50..=99)) {
        return false;
    }
    let number = body[..13].iter().fold(0u64, |acc, &c| acc * 10 + u64::from(c - b'0'));
    let number = number - corsica.unwrap_or(0);
    let key = u64::from(body[13] - b'0') * 10 + u64::from(body[14] - b'0');
    key == 97 - number % 97
}

/// An e-mail address as people store them: one `@`, a non-empty local part of allowed
/// characters, a domain of dot-separated labels (letters, digits, inner hyphens) ending in an
/// alphabetic top-level domain of at least two letters.
pub fn email(s: &str) -> bool {
    let s = s.trim();
    if s.len() > 254 {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+/=?^_`{|}~.-".contains(&b));
    if !local_ok || domain.contains('@') {
        return false;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let tld = labels[labels.len() - 1];
    labels.iter().all(|l| label_ok(l)) && tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic())
}

/// A dotted-quad IPv4 address (no leading zeros, which are ambiguous).
pub fn ipv4(s: &str) -> bool {
    s.trim().parse::<Ipv4Addr>().is_ok()
}

/// An IPv6 address in any of its textual forms.
pub fn ipv6(s: &str) -> bool {
    let s = s.trim();
    s.contains(':') && s.parse::<Ipv6Addr>().is_ok()
}

/// Whether `s` has the shape of a phone number: only digits and the characters people write
/// around them (`+ ( ) - . /` and spaces), 7–15 digits (E.164), an optional `x`/`ext`
/// extension, and not a calendar date (`2024-06-01` fits some numbering plans). Cheap;
/// [`phone`] then asks the numbering plans.
pub fn phone_shaped(s: &str) -> bool {
    let s = s.trim();
    if date(s).is_some() {
        return false;
    }
    let body = match s.find(['x', 'X', 'e']) {
        Some(i) => &s[..i],
        None => s,
    };
    let mut digits = 0;
    for b in body.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'+' | b'(' | b')' | b'-' | b'.' | b'/' | b' ' => {}
            _ => return false,
        }
    }
    (7..=15).contains(&digits)
}

/// Regions whose national formats are tried for a number without a country prefix.
pub const PHONE_REGIONS: &[phonenumber::country::Id] = {
    use phonenumber::country::Id;
    &[Id::US, Id::GB, Id::FR, Id::DE, Id::ES, Id::IT, Id::NL, Id::PT, Id::BE, Id::CH, Id::CA, Id::AU, Id::IE]
};

/// A phone number that a numbering plan accepts (libphonenumber's metadata via the
/// `phonenumber` crate): international (`+44 20 7946 0958`, `0044…`) or in the national format
/// of one of `regions`.
pub fn phone(s: &str, regions: &[phonenumber::country::Id]) -> bool {
    if !phone_shaped(s) {
        return false;
    }
    let s = s.trim();
    // The parser is third-party code fed with untrusted text: a panic in it is a "no".
    let valid_in = |region: Option<phonenumber::country::Id>| {
        std::panic::catch_unwind(|| phonenumber::parse(region, s).is_ok_and(|n| phonenumber::is_valid(&n))).unwrap_or(false)
    };
    if s.starts_with('+') || s.starts_with("00") {
        return valid_in(None);
    }
    regions.iter().any(|r| valid_in(Some(*r)))
}

/// A calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        _ => 0,
    }
}

fn number(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A real calendar date written `YYYY-MM-DD` (optionally followed by a time), `YYYY/MM/DD`,
/// `DD/MM/YYYY`, `MM/DD/YYYY`, `DD.MM.YYYY` or `DD-MM-YYYY`; an ambiguous day/month order
/// reads day first unless that is impossible. Years 1800–2199.
pub fn date(s: &str) -> Option<Date> {
    let s = s.trim();
    let s = s.split(['T', ' ']).next().unwrap_or(s);
    let sep = s.bytes().find(|b| matches!(b, b'-' | b'/' | b'.'))?;
    if s.len() > 10 || s.bytes().filter(|b| *b == sep).count() != 2 {
        return None;
    }
    let parts: Vec<&str> = s.split(sep as char).collect();
    let [a, b, c] = parts.as_slice() else {
        return None;
    };
    let (a, b, c) = (number(a)?, number(b)?, number(c)?);
    let candidates: &[(u16, u16, u16)] = if parts[0].len() == 4 {
        &[(a, b, c)]
    } else if parts[2].len() == 4 {
        &[(c, b, a), (c, a, b)]
    } else {
        return None;
    };
    candidates.iter().find_map(|&(y, m, d)| {
        let (m, d) = (u8::try_from(m).ok()?, u8::try_from(d).ok()?);
        ((1800..=2199).contains(&y) && (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)).then_some(Date {
            year: y,
            month: m,
            day: d,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cards_need_luhn_and_an_issuer_range() {
        for (pan, brand) in [
            ("4111 1111 1111 1111", CardBrand::Visa),
            ("4242-4242-4242-4242", CardBrand::Visa),
            ("5555555555554444", CardBrand::Mastercard),
            ("2223003122003222", CardBrand::Mastercard),
            ("378282246310005", CardBrand::Amex),
            ("6011111111111117", CardBrand::Discover),
            ("3530111333300000", CardBrand::Jcb),
            ("30569309025904", CardBrand::Diners),
            ("6200000000000005", CardBrand::UnionPay),
        ] {
            assert_eq!(card_number(pan), Some(brand), "{pan}");
        }
        // Near misses: one digit off (Luhn fails), right Luhn but no issuer, too short, letters.
        for not in ["4111111111111112", "1234567812345670", "0000000000000000", "411111111111", "4111-1111-1111-111a", ""] {
            assert_eq!(card_number(not), None, "{not}");
        }
    }

    #[test]
    fn ssn_rules() {
        for ok in ["123-45-6789", "078-05-1121", "123456789", " 536-22-1234 "] {
            assert!(us_ssn(ok), "{ok}");
        }
        for not in [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "123-00-4567",
            "123-45-0000",
            "078-05-1120",
            "12-345-6789",
            "ABC-12-3456",
            "1234567890",
        ] {
            assert!(!us_ssn(not), "{not}");
        }
    }

    #[test]
    fn iban_mod_97_and_length() {
        for ok in ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000", "fr1420041010050500013m02606", "NL91ABNA0417164300"] {
            assert!(iban(ok), "{ok}");
        }
        for not in ["GB82 WEST 1234 5698 7654 33", "DE8937040044053201300", "XX89370400440532013000", "GB82-WEST-1234"] {
            assert!(!iban(not), "{not}");
        }
    }

    #[test]
    fn national_ids() {
        assert!(uk_nino("AB 12 34 56 C"));
        assert!(uk_nino("ce123456a"));
        for not in ["DA123456A", "AO123456A", "BG123456A", "AB123456E", "AB12345C"] {
            assert!(!uk_nino(not), "{not}");
        }
        // 1 84 12 76 451 089, key 46 (a published example); Corsica 2A.
        assert!(fr_insee("1 84 12 76 451 089 46"));
        assert!(!fr_insee("1 84 12 76 451 089 47"));
        assert!(fr_insee(&corsican_example()));
        assert!(!fr_insee("5 84 12 76 451 089 46"), "sex digit");
    }

    /// A Corsican NIR with its key computed the documented way (2A → 19 is the same as
    /// subtracting 1,000,000).
    fn corsican_example() -> String {
        let body = "185122A123456";
        let n: u64 = body.replace("2A", "19").parse().expect("digits");
        format!("{body}{:02}", 97 - n % 97)
    }

    #[test]
    fn emails_and_addresses() {
        for ok in ["jane.doe@example.com", "j+tag@mail.example.co.uk", "x_1@a-b.io"] {
            assert!(email(ok), "{ok}");
        }
        for not in [
            "jane",
            "@example.com",
            "jane@",
            "jane@localhost",
            "a@b@c.com",
            "jane..doe@example.com",
            "jane@exa mple.com",
            "jane@example.c0m",
        ] {
            assert!(!email(not), "{not}");
        }
        assert!(ipv4("192.168.0.1") && !ipv4("256.1.1.1") && !ipv4("1.2.3"));
        assert!(ipv6("2001:db8::1") && ipv6("::1") && !ipv6("2001:db8:::1") && !ipv6("12345"));
    }

    #[test]
    fn phones_follow_numbering_plans() {
        for ok in
            ["+44 20 7946 0958", "(415) 555-2671", "+1 415 555 2671", "01 42 68 53 00", "+33 1 42 68 53 00", "030 901820", "+49 30 901820"]
        {
            assert!(phone(ok, PHONE_REGIONS), "{ok}");
        }
        for not in ["123", "555-0000000000000000", "2024-06-01", "+1 123 456 7890", "+99 123", "hello", "0000000"] {
            assert!(!phone(not, PHONE_REGIONS), "{not}");
        }
    }

    #[test]
    fn dates_are_real_calendar_dates() {
        assert_eq!(date("1984-02-29"), Some(Date { year: 1984, month: 2, day: 29 }));
        assert_eq!(date("1985-02-29"), None);
        assert_eq!(date("2024-06-01T10:00:00Z"), Some(Date { year: 2024, month: 6, day: 1 }));
        assert_eq!(date("31/12/1999"), Some(Date { year: 1999, month: 12, day: 31 }));
        assert_eq!(date("12/31/1999"), Some(Date { year: 1999, month: 12, day: 31 }), "month first when day first is impossible");
        assert_eq!(date("24.12.2001"), Some(Date { year: 2001, month: 12, day: 24 }));
        for not in ["2024-13-01", "1999", "12-2024", "99/99/9999", "SKU-12-3456", "1700-01-01"] {
            assert_eq!(date(not), None, "{not}");
        }
    }

    proptest! {
        /// No input makes a validator panic.
        #[test]
        fn validators_never_panic(s in ".{0,64}") {
            let _ = (card_number(&s), us_ssn(&s), iban(&s), uk_nino(&s), fr_insee(&s), email(&s), ipv4(&s), ipv6(&s), date(&s), phone(&s, PHONE_REGIONS));
        }

        /// Changing one digit of a valid card number breaks its Luhn check.
        #[test]
        fn one_digit_off_is_not_a_card(i in 0usize..16, delta in 1u8..10) {
            let mut d: Vec<u8> = "4111111111111111".bytes().map(|b| b - b'0').collect();
            d[i] = (d[i] + delta) % 10;
            prop_assert!(!luhn(&d));
        }
    }
}
