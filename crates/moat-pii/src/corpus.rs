//! A labelled synthetic corpus, generated deterministically from a seed: tables in seven
//! locales whose columns carry a known truth (category and entity), with plain, foreign,
//! abbreviated and misleading names (`col_7`, `notes`, `ref`), near misses (16 digits failing
//! Luhn, SKUs shaped like SSNs, colours that are also surnames, narrow date ranges), NULLs,
//! junk placeholders (`n/a`, `TBD`), names typed in upper or lower case, and an age under a
//! meaningless name (which the scanner is expected to miss).
//! The scanner's precision, recall and F1 are measured on it (tests) and its speed (bench).
//! Given names and surnames are drawn partly from lists the scanner does *not* bundle, so
//! name detection is not measured against its own dictionary.

use crate::entity::{Category, Entity};
use crate::validate;

/// One column with its truth.
#[derive(Debug, Clone)]
pub struct LabelledColumn {
    pub table: String,
    pub name: String,
    pub values: Vec<Option<String>>,
    pub truth: Category,
    pub entity: Option<Entity>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len() as u64) as usize]
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.below(10) as u8)).collect()
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Clone, Copy)]
struct Locale {
    code: &'static str,
    given: &'static [&'static str],
    surnames: &'static [&'static str],
    streets: &'static [&'static str],
}

/// Names both on and off the scanner's lists (the second half of each list is not bundled).
const LOCALES: &[Locale] = &[
    Locale {
        code: "en_US",
        given: &["James", "Mary", "Robert", "Linda", "Michael", "Ashley", "Brayden", "Kinsley", "Jaxon", "Maverick", "Nevaeh", "Paisley"],
        surnames: &[
            "Smith",
            "Johnson",
            "Brown",
            "Garcia",
            "Miller",
            "Davis",
            "Kowalczyk",
            "Haversham",
            "Bellweather",
            "Quintero",
            "Ashworth",
            "Pembrook",
        ],
        streets: &["{n} Main Street", "{n} Oak Ave", "{n} Sunset Blvd", "{n} Maple Rd", "{n} Elm Drive", "Apt {m}, {n} Park Lane"],
    },
    Locale {
        code: "en_GB",
        given: &["Oliver", "Amelia", "Harry", "Isla", "George", "Poppy", "Alfie", "Florence", "Rory", "Imogen", "Hamish", "Tilly"],
        surnames: &[
            "Taylor",
            "Davies",
            "Evans",
            "Walsh",
            "Wright",
            "Hughes",
            "Featherstonehaugh",
            "Cholmondeley",
            "Pennington",
            "Ainsworth",
            "Blakemore",
            "Thackeray",
        ],
        streets: &["{n} High Street", "Flat {m}, {n} Baker Street", "{n} Church Road", "{n} Victoria Terrace", "{n} Mill Lane"],
    },
    Locale {
        code: "fr_FR",
        given: &["Jean", "Marie", "Pierre", "Camille", "Hugo", "Léa", "Thibault", "Margaux", "Gaëtan", "Solène", "Aurélien", "Clémence"],
        surnames: &[
            "Martin",
            "Bernard",
            "Dubois",
            "Moreau",
            "Lefèvre",
            "Girard",
            "Duchêne",
            "Vasseur",
            "Lemaire",
            "Couturier",
            "Delacroix",
            "Beaumont",
        ],
        streets: &[
            "{n} rue de la Paix",
            "{n} avenue Victor Hugo",
            "{n} boulevard Haussmann",
            "{n} chemin des Vignes",
            "{n} place du Marché",
        ],
    },
    Locale {
        code: "de_DE",
        given: &["Lukas", "Anna", "Jonas", "Lena", "Felix", "Sabine", "Ottokar", "Wiebke", "Kasimir", "Hiltrud", "Detlef", "Gesine"],
        surnames: &[
            "Müller",
            "Schmidt",
            "Schneider",
            "Fischer",
            "Weber",
            "Wagner",
            "Brandstätter",
            "Oberhauser",
            "Kettler",
            "Pfannkuch",
            "Rautenberg",
            "Stiegler",
        ],
        streets: &["Hauptstraße {n}", "Bahnhofstraße {n}", "Gartenweg {n}", "Marktplatz {n}", "Lindenallee {n}"],
    },
    Locale {
        code: "es_ES",
        given: &["Lucía", "Hugo", "Martina", "Pablo", "Carmen", "Javier", "Iker", "Ainhoa", "Unai", "Itziar", "Rocío", "Gonzalo"],
        surnames: &[
            "García",
            "Fernández",
            "López",
            "Martínez",
            "Sánchez",
            "Pérez",
            "Echeverría",
            "Zubizarreta",
            "Aranguren",
            "Olabarría",
            "Villalobos",
            "Barrenechea",
        ],
        streets: &["Calle Mayor {n}", "Avenida de América {n}", "Plaza de España {n}", "Paseo del Prado {n}", "Calle Alcalá {n}"],
    },
    Locale {
        code: "it_IT",
        given: &[
            "Giulia",
            "Marco",
            "Sofia",
            "Luca",
            "Chiara",
            "Matteo",
            "Ludovica",
            "Gianmarco",
            "Benedetta",
            "Pierluigi",
            "Ottavia",
            "Tommaso",
        ],
        surnames: &[
            "Rossi",
            "Russo",
            "Ferrari",
            "Esposito",
            "Bianchi",
            "Romano",
            "Capogrossi",
            "Santangelo",
            "Lombardozzi",
            "Bevilacqua",
            "Scognamiglio",
            "Trapanese",
        ],
        streets: &["Via Roma {n}", "Viale dei Mille {n}", "Piazza Garibaldi {n}", "Corso Vittorio Emanuele {n}", "Via Dante {n}"],
    },
    Locale {
        code: "nl_NL",
        given: &["Daan", "Sanne", "Lars", "Fleur", "Thijs", "Anouk", "Joost", "Marieke", "Sjoerd", "Femke", "Wouter", "Ilse"],
        surnames: &[
            "de Jong",
            "Jansen",
            "de Vries",
            "Bakker",
            "Visser",
            "Smit",
            "Hoekstra",
            "van Leeuwen",
            "Vermeulen",
            "Kuipers",
            "Veenstra",
            "Postma",
        ],
        streets: &["Damstraat {n}", "Kerkstraat {n}", "Prinsengracht {n}", "Stationsplein {n}", "Dorpsweg {n}"],
    },
];

const COLOURS: &[&str] = &["Green", "White", "Brown", "Black", "Gray", "Blue", "Red"];
const JOBS: &[&str] = &[
    "Software Engineer",
    "Sales Manager",
    "Registered Nurse",
    "Accountant",
    "Marketing Director",
    "Data Analyst",
    "Teacher",
    "Senior Consultant",
    "Office Assistant",
    "Project Manager",
    "Chef",
    "Electrician",
    "Ingénieur logiciel",
    "Directeur commercial",
    "Entwickler",
    "Lehrer",
    "Ingeniero",
    "Abogado",
    "Ingegnere",
    "Medico",
];
const DOMAINS: &[&str] = &["example.com", "mail.example.org", "acme.example.co.uk", "post.example.de", "correo.example.es"];
const STATUS: &[&str] = &["active", "pending", "closed", "trial", "suspended"];
const PRODUCTS: &[&str] = &["Widget Pro 3000", "Gadget Mini", "Ultra Cable 2m", "Smart Lamp", "Desk Organizer", "Power Bank 10k"];
const COMMENTS: &[&str] = &[
    "Great product, fast delivery",
    "Arrived damaged, replacement sent",
    "Customer asked for an invoice copy",
    "Renewal due next quarter",
    "No issues reported",
    "Upgraded to the annual plan",
];

fn person(r: &mut Rng, l: &Locale) -> String {
    let (g, s) = (r.pick(l.given), r.pick(l.surnames));
    match r.below(10) {
        0 => format!("{s}, {g}"),
        1 => format!("{g} {} {s}", r.pick(l.given)),
        _ => format!("{g} {s}"),
    }
}

fn ascii_lower(s: &str) -> String {
    s.chars().map(crate::names::fold_accent).filter(|c| c.is_ascii_alphanumeric()).collect::<String>().to_lowercase()
}

fn email(r: &mut Rng, l: &Locale) -> String {
    let (g, s) = (ascii_lower(r.pick(l.given)), ascii_lower(r.pick(l.surnames)));
    match r.below(3) {
        0 => format!("{g}.{s}@{}", r.pick(DOMAINS)),
        1 => format!("{}{s}{}@{}", &g[..1], r.below(100), r.pick(DOMAINS)),
        _ => format!("{g}_{s}+news@{}", r.pick(DOMAINS)),
    }
}

fn phone(r: &mut Rng, l: &Locale) -> String {
    match l.code {
        "en_US" => {
            format!("({}) {}-{}", r.pick(&["212", "415", "312", "617", "202", "305", "713", "206"]), 200 + r.below(700), r.digits(4))
        }
        "en_GB" => format!("+44 20 7{} {}", r.digits(3), r.digits(4)),
        "fr_FR" => format!("0{} {} {} {} {}", r.pick(&["1", "6", "7"]), r.digits(2), r.digits(2), r.digits(2), r.digits(2)),
        "de_DE" => format!("+49 {} {}", r.pick(&["30", "89", "40", "69"]), r.digits(7)),
        "es_ES" => format!("+34 6{} {} {}", r.digits(2), r.digits(3), r.digits(3)),
        "it_IT" => format!("+39 3{} {} {}", r.pick(&["20", "33", "47"]), r.digits(3), r.digits(4)),
        _ => format!("+31 6 {}", r.digits(8)),
    }
}

fn ssn(r: &mut Rng) -> String {
    loop {
        let s = format!("{:03}-{:02}-{:04}", 1 + r.below(899), 1 + r.below(99), 1 + r.below(9999));
        if validate::us_ssn(&s) {
            return s;
        }
    }
}

fn luhn_complete(prefix: &str, len: usize, r: &mut Rng) -> String {
    let mut d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
    while d.len() < len - 1 {
        d.push(r.below(10) as u8);
    }
    for check in 0..10u8 {
        let mut full = d.clone();
        full.push(check);
        if validate::luhn(&full) {
            return full.iter().map(|x| char::from(b'0' + x)).collect();
        }
    }
    String::new()
}

fn card(r: &mut Rng) -> String {
    let (prefix, len) = [("4", 16), ("51", 16), ("55", 16), ("37", 15), ("6011", 16)][r.below(5) as usize];
    let pan = luhn_complete(prefix, len, r);
    if r.chance(30) { pan.as_bytes().chunks(4).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(" ") } else { pan }
}

fn iban(r: &mut Rng) -> String {
    let (country, bban) = match r.below(5) {
        0 => ("DE", r.digits(18)),
        1 => ("FR", r.digits(23)),
        2 => ("GB", format!("{}{}", r.pick(&["NWBK", "BARC", "LOYD"]), r.digits(14))),
        3 => ("ES", r.digits(20)),
        _ => ("NL", format!("{}{}", r.pick(&["ABNA", "INGB", "RABO"]), r.digits(10))),
    };
    let mut rem = 0u32;
    for c in format!("{bban}{country}00").bytes() {
        rem = if c.is_ascii_digit() { (rem * 10 + u32::from(c - b'0')) % 97 } else { (rem * 100 + u32::from(c - b'A') + 10) % 97 };
    }
    format!("{country}{:02}{bban}", 98 - rem)
}

fn nino(r: &mut Rng) -> String {
    format!("{}{}{}", r.pick(&["AB", "CE", "JK", "PR", "WL", "YZ"]), r.digits(6), r.pick(&["A", "B", "C", "D"]))
}

fn insee(r: &mut Rng) -> String {
    let body = format!("{}{:02}{:02}{:02}{}{}", 1 + r.below(2), r.below(100), 1 + r.below(12), 1 + r.below(95), r.digits(3), r.digits(3));
    let n: u64 = body.parse().unwrap_or(0);
    format!("{body}{:02}", 97 - n % 97)
}

fn ipaddr(r: &mut Rng) -> String {
    if r.chance(20) {
        format!("2001:db8:{:x}::{:x}", r.below(0xffff), r.below(0xffff))
    } else {
        format!("{}.{}.{}.{}", 1 + r.below(223), r.below(256), r.below(256), 1 + r.below(254))
    }
}

fn street(r: &mut Rng, l: &Locale) -> String {
    r.pick(l.streets).replace("{n}", &(1 + r.below(250)).to_string()).replace("{m}", &(1 + r.below(30)).to_string())
}

fn postal(r: &mut Rng, l: &Locale) -> String {
    match l.code {
        "en_US" => format!("{:05}", 1000 + r.below(98_000)),
        "en_GB" => {
            format!("{} {}{}", r.pick(&["SW1A", "EC2R", "M1", "B33", "LS6", "CR2"]), 1 + r.below(9), r.pick(&["AA", "BD", "NX", "QT"]))
        }
        "nl_NL" => format!("{} {}", 1000 + r.below(8999), r.pick(&["AB", "CD", "KL", "XZ"])),
        _ => format!("{:05}", 1000 + r.below(94_000)),
    }
}

fn date_in(r: &mut Rng, from_year: u64, span: u64, style: u64) -> String {
    let (y, m, d) = (from_year + r.below(span), 1 + r.below(12), 1 + r.below(28));
    match style {
        0 => format!("{y}-{m:02}-{d:02}"),
        1 => format!("{d:02}/{m:02}/{y}"),
        _ => format!("{d:02}.{m:02}.{y}"),
    }
}

/// Column names per locale for each kind: `(plain, foreign or abbreviated)`.
fn names_for(l: &Locale, kind: &str) -> &'static str {
    let i = match l.code {
        "fr_FR" => 1,
        "de_DE" => 2,
        "es_ES" => 3,
        "it_IT" => 4,
        "nl_NL" => 5,
        _ => 0,
    };
    let table: &[(&str, [&str; 6])] = &[
        ("name", ["full_name", "nom", "Nachname", "nombre", "cognome", "achternaam"]),
        ("email", ["email", "courriel", "E-Mail", "correo", "email_address", "emailadres"]),
        ("phone", ["phone", "telephone", "Telefon", "telefono", "cellulare", "tel"]),
        ("street", ["address", "adresse", "Strasse", "direccion", "indirizzo", "addr"]),
        ("postal", ["zip", "code_postal", "PLZ", "codigo_postal", "postcode", "postcode"]),
        ("birth", ["date_of_birth", "date_de_naissance", "Geburtsdatum", "fecha_nacimiento", "data_di_nascita", "dob"]),
        ("age", ["age", "age", "Alter", "edad", "age", "leeftijd"]),
        ("gender", ["gender", "sexe", "Geschlecht", "genero", "sesso", "geslacht"]),
        ("job", ["job_title", "poste", "Beruf", "puesto", "professione", "functie"]),
    ];
    table.iter().find(|(k, _)| *k == kind).map_or("x", |(_, n)| n[i])
}

struct Builder {
    rows: usize,
    out: Vec<LabelledColumn>,
}

/// What people type when they have no value.
const JUNK: &[&str] = &["n/a", "unknown", "-", "TBD", "none", "?"];

impl Builder {
    /// A column with 0–30% NULLs and, for personal columns, 0–12% junk placeholders.
    fn col(
        &mut self,
        r: &mut Rng,
        table: &str,
        name: &str,
        truth: Category,
        entity: Option<Entity>,
        mut make: impl FnMut(&mut Rng) -> String,
    ) {
        let null_pct = r.below(30);
        let junk_pct = if truth == Category::None { 0 } else { r.below(13) };
        let values = (0..self.rows)
            .map(|_| {
                if r.chance(null_pct) {
                    None
                } else if r.chance(junk_pct) {
                    Some(r.pick(JUNK).to_owned())
                } else {
                    Some(make(r))
                }
            })
            .collect();
        self.out.push(LabelledColumn { table: table.to_owned(), name: name.to_owned(), values, truth, entity });
    }
}

/// The corpus for `seed`: one customer table and one orders table per locale, `rows` rows each.
pub fn corpus(seed: u64, rows: usize) -> Vec<LabelledColumn> {
    let mut r = Rng(seed | 1);
    let mut b = Builder { rows, out: Vec::new() };
    use Category::{Derived, Direct, None as NoPii, Quasi};
    for (li, l) in LOCALES.iter().enumerate() {
        let t = format!("customers_{}", l.code);
        // Misleading names for some columns, in turn per locale.
        let odd =
            |k: usize| if (li + k).is_multiple_of(3) { Some(["col_7", "notes", "ref", "field3", "x", "data"][(li + k) % 6]) } else { None };
        b.col(&mut r, &t, "id", NoPii, None, {
            let mut i = 0u64;
            move |_| {
                i += 1;
                i.to_string()
            }
        });
        // Names as typed: mostly capitalised, in one locale upper case, in another lower case.
        b.col(&mut r, &t, names_for(l, "name"), Direct, Some(Entity::PersonName), |r| match li {
            1 => person(r, l).to_uppercase(),
            4 => person(r, l).to_lowercase(),
            _ => person(r, l),
        });
        b.col(&mut r, &t, odd(1).unwrap_or(names_for(l, "email")), Direct, Some(Entity::Email), |r| email(r, l));
        b.col(&mut r, &t, odd(2).unwrap_or(names_for(l, "phone")), Direct, Some(Entity::Phone), |r| phone(r, l));
        b.col(&mut r, &t, names_for(l, "street"), Direct, Some(Entity::StreetAddress), |r| street(r, l));
        b.col(&mut r, &t, names_for(l, "postal"), Quasi, Some(Entity::PostalCode), |r| postal(r, l));
        b.col(&mut r, &t, names_for(l, "birth"), Quasi, Some(Entity::BirthDate), |r| date_in(r, 1940, 66, li as u64 % 3));
        b.col(&mut r, &t, names_for(l, "age"), Quasi, Some(Entity::Age), |r| (18 + r.below(70)).to_string());
        b.col(&mut r, &t, names_for(l, "gender"), Quasi, Some(Entity::Gender), |r| {
            r.pick(&[["M", "F", "X"], ["male", "female", "other"], ["homme", "femme", "autre"]][li % 3]).to_owned()
        });
        b.col(&mut r, &t, names_for(l, "job"), Quasi, Some(Entity::JobTitle), |r| r.pick(JOBS).to_owned());
        b.col(&mut r, &t, odd(3).unwrap_or("credit_score"), Derived, Some(Entity::CreditScore), |r| (300 + r.below(551)).to_string());
        b.col(&mut r, &t, odd(4).unwrap_or("churn_probability"), Derived, Some(Entity::Score), |r| {
            format!("{:.4}", r.below(10_000) as f64 / 10_000.0)
        });
        // An age under a name that says nothing: a number column like any other. The scanner is
        // expected to miss it (ages are too common a number shape to guess without a name).
        if li == 0 {
            b.col(&mut r, &t, "col_a", Quasi, Some(Entity::Age), |r| (18 + r.below(70)).to_string());
        }
        b.col(&mut r, &t, "status", NoPii, None, |r| r.pick(STATUS).to_owned());
        b.col(&mut r, &t, "signup_date", NoPii, None, |r| date_in(r, 2019, 6, 0));
        b.col(&mut r, &t, "comment", NoPii, None, |r| r.pick(COMMENTS).to_owned());
        b.col(&mut r, &t, "favourite_colour", NoPii, None, |r| r.pick(COLOURS).to_owned());
        // Identifiers of the locale.
        match l.code {
            "en_US" => b.col(&mut r, &t, odd(5).unwrap_or("ssn"), Direct, Some(Entity::Ssn), ssn),
            "en_GB" => b.col(&mut r, &t, odd(5).unwrap_or("ni_number"), Direct, Some(Entity::Nino), nino),
            "fr_FR" => b.col(&mut r, &t, odd(5).unwrap_or("numero_securite_sociale"), Direct, Some(Entity::Insee), insee),
            _ => b.col(&mut r, &t, odd(5).unwrap_or("iban"), Direct, Some(Entity::Iban), iban),
        }

        let t = format!("orders_{}", l.code);
        b.col(&mut r, &t, "order_id", NoPii, None, |r| r.digits(10));
        b.col(&mut r, &t, odd(6).unwrap_or("card_number"), Direct, Some(Entity::CreditCard), card);
        b.col(&mut r, &t, odd(7).unwrap_or("client_ip"), Direct, Some(Entity::IpAddress), ipaddr);
        // Near misses: SKUs shaped like SSNs, 16-digit references failing Luhn, amounts,
        // quantities, discount rates, product names, timestamps in a narrow range.
        b.col(&mut r, &t, "sku", NoPii, None, |r| format!("{}-{}-{}", r.digits(3), r.digits(2), r.digits(4)));
        b.col(&mut r, &t, "tracking_ref", NoPii, None, |r| {
            loop {
                let v = format!("{}{}", 1 + r.below(9), r.digits(15));
                if validate::card_number(&v).is_none() {
                    break v;
                }
            }
        });
        b.col(&mut r, &t, "amount", NoPii, None, |r| format!("{}.{:02}", r.below(5000), r.below(100)));
        b.col(&mut r, &t, "quantity", NoPii, None, |r| (1 + r.below(50)).to_string());
        b.col(&mut r, &t, "discount_rate", NoPii, None, |r| format!("{:.2}", r.below(40) as f64 / 100.0));
        b.col(&mut r, &t, "product_name", NoPii, None, |r| r.pick(PRODUCTS).to_owned());
        b.col(&mut r, &t, "created_at", NoPii, None, |r| format!("{}T10:{:02}:00Z", date_in(r, 2023, 2, 0), r.below(60)));
        b.col(&mut r, &t, "currency", NoPii, None, |r| r.pick(&["EUR", "USD", "GBP"]).to_owned());
    }
    b.out
}
