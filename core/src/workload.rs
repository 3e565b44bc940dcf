//! The generated workload of the benchmarks (issue 7, feature `_test`), shaped like the peer
//! measurement it is compared with: `N` companies `{name, city, phone}` and `M` contacts
//! `{company, name, email, phone}`, contact `j` under company `j % N`; the 1 % update renames
//! every contact with `j % 100 == 0`. One generator for every bench of the workspace (server,
//! phone, scanner, end to end), so their figures are of the same records.
//!
//! Strings are deterministic and of realistic lengths (company names of about 20 characters,
//! French cities, formatted phone numbers, `first.last@company.example` emails), so body and
//! JSON sizes mean something. Records are 0-based here: company `i`, contact `j`.

use crate::body::{self, BodyError, Value};
use crate::id::TableId;
use crate::schema::EXAMPLE;
use core::fmt;
use std::borrow::ToOwned;
use std::format;
use std::string::String;
use std::vec;
use std::vec::Vec;

/// One workload size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    /// Its name in `FERRYSYNC_BENCH_SIZES` and in printed tables.
    pub name: &'static str,
    /// `N`, the number of companies.
    pub companies: usize,
    /// `M`, the number of contacts.
    pub contacts: usize,
}

impl Size {
    /// 100 companies, 1,000 contacts.
    pub const SMALL: Size = Size {
        name: "small",
        companies: 100,
        contacts: 1_000,
    };
    /// 1,000 companies, 10,000 contacts (the issue's default and the peer measurement's).
    pub const DEFAULT: Size = Size {
        name: "default",
        companies: 1_000,
        contacts: 10_000,
    };
    /// 10,000 companies, 100,000 contacts.
    pub const LARGE: Size = Size {
        name: "large",
        companies: 10_000,
        contacts: 100_000,
    };

    /// `N + M`.
    pub fn records(&self) -> usize {
        self.companies + self.contacts
    }

    /// The size called `name` (`small`, `default`, `large`).
    pub fn named(name: &str) -> Option<Size> {
        [Size::SMALL, Size::DEFAULT, Size::LARGE]
            .into_iter()
            .find(|s| s.name == name.trim())
    }

    /// The sizes listed in `FERRYSYNC_BENCH_SIZES` (comma-separated names, `all` for the three);
    /// the default size when unset.
    pub fn from_env() -> Result<Vec<Size>, String> {
        match std::env::var("FERRYSYNC_BENCH_SIZES") {
            Err(_) => Ok(vec![Size::DEFAULT]),
            Ok(list) => Size::parse_list(&list),
        }
    }

    /// Parses a comma-separated list of size names (`all` for the three).
    pub fn parse_list(list: &str) -> Result<Vec<Size>, String> {
        if list.trim() == "all" {
            return Ok(vec![Size::SMALL, Size::DEFAULT, Size::LARGE]);
        }
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                Size::named(s).ok_or_else(|| {
                    format!("unknown size {s:?} in FERRYSYNC_BENCH_SIZES: use small, default, large or all")
                })
            })
            .collect()
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}/{})", self.name, self.companies, self.contacts)
    }
}

/// A company as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Company {
    /// Company name.
    pub name: String,
    /// City.
    pub city: String,
    /// Switchboard number.
    pub phone: String,
}

/// A contact as the app sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Index of its company (`j % N`).
    pub company: usize,
    /// Full name.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Mobile number.
    pub phone: String,
}

const SURNAMES: [&str; 24] = [
    "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy",
    "Moreau", "Simon", "Laurent", "Lefebvre", "Michel", "Garcia", "David", "Bertrand", "Roux",
    "Vincent", "Fournier", "Morel", "Girard", "Andre", "Mercier",
];
const TRADES: [&str; 12] = [
    "Logistique",
    "Transports",
    "Boulangerie",
    "Menuiserie",
    "Conseil",
    "Imprimerie",
    "Garage",
    "Pharmacie",
    "Electricite",
    "Batiment",
    "Informatique",
    "Distribution",
];
const FORMS: [&str; 4] = ["SARL", "SAS", "& Fils", "SA"];
const CITIES: [&str; 20] = [
    "Lyon",
    "Paris",
    "Marseille",
    "Toulouse",
    "Nice",
    "Nantes",
    "Strasbourg",
    "Montpellier",
    "Bordeaux",
    "Lille",
    "Rennes",
    "Reims",
    "Saint-Etienne",
    "Toulon",
    "Le Havre",
    "Grenoble",
    "Dijon",
    "Angers",
    "Villeurbanne",
    "Clermont-Ferrand",
];
const FIRST_NAMES: [&str; 20] = [
    "Camille", "Louise", "Lea", "Manon", "Chloe", "Ines", "Jade", "Sarah", "Emma", "Alice",
    "Lucas", "Hugo", "Louis", "Gabriel", "Arthur", "Jules", "Nathan", "Adam", "Raphael", "Paul",
];

/// Mixes an index so neighbours do not share every name part.
fn mix(i: usize, salt: usize) -> usize {
    (i.wrapping_mul(2_654_435_761) ^ salt.wrapping_mul(40_503)) >> 7
}

fn pick<'a>(list: &[&'a str], i: usize, salt: usize) -> &'a str {
    list[mix(i, salt) % list.len()]
}

fn phone_number(prefix: &str, n: usize) -> String {
    let n = n % 100_000_000;
    format!(
        "+33 {prefix} {:02} {:02} {:02} {:02}",
        n / 1_000_000,
        n / 10_000 % 100,
        n / 100 % 100,
        n % 100
    )
}

/// Company `i`.
pub fn company(i: usize) -> Company {
    Company {
        name: format!(
            "{} {} {}",
            pick(&SURNAMES, i, 1),
            pick(&TRADES, i, 2),
            FORMS[i % FORMS.len()]
        ),
        city: pick(&CITIES, i, 3).to_owned(),
        phone: phone_number("4", i.wrapping_mul(7_919) + 72_000_000),
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' | '-' => Some('-'),
            _ => None,
        })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// Contact `j` of a workload of `companies` companies (`companies` ≥ 1).
pub fn contact(j: usize, companies: usize) -> Contact {
    let company_index = j % companies.max(1);
    let first = pick(&FIRST_NAMES, j, 4);
    let last = pick(&SURNAMES, j, 5);
    let employer = company(company_index);
    let domain = slug(&format!(
        "{} {}",
        pick(&SURNAMES, company_index, 1),
        pick(&TRADES, company_index, 2)
    ));
    Contact {
        company: company_index,
        name: format!("{first} {last}"),
        email: format!(
            "{}.{}{}@{domain}.example",
            slug(first),
            slug(last),
            j % 1000
        ),
        phone: phone_number("6", j.wrapping_mul(104_729) + employer.phone.len()),
    }
}

/// The name contact `j` gets in the 1 % update.
pub fn renamed(j: usize) -> String {
    format!(
        "{} {}-{}",
        pick(&FIRST_NAMES, j, 6),
        pick(&SURNAMES, j, 5),
        pick(&SURNAMES, j, 7)
    )
}

/// Whether the 1 % update renames contact `j`.
pub fn is_renamed(j: usize) -> bool {
    j.is_multiple_of(100)
}

/// Table of companies in the example schema.
pub const COMPANY: TableId = TableId(0);
/// Table of contacts in the example schema.
pub const CONTACT: TableId = TableId(1);

/// Largest body of the workload, with room to spare.
pub const BODY_BUF: usize = 512;

/// A generated data set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its size.
    pub size: Size,
    /// Companies `0..N`.
    pub companies: Vec<Company>,
    /// Contacts `0..M`.
    pub contacts: Vec<Contact>,
}

impl Workload {
    /// Generates the data set of `size`.
    pub fn generate(size: Size) -> Workload {
        Workload {
            size,
            companies: (0..size.companies).map(company).collect(),
            contacts: (0..size.contacts)
                .map(|j| contact(j, size.companies))
                .collect(),
        }
    }

    /// `N + M`.
    pub fn records(&self) -> usize {
        self.companies.len() + self.contacts.len()
    }

    /// Number of contacts the 1 % update renames.
    pub fn renamed_count(&self) -> usize {
        (0..self.contacts.len()).filter(|&j| is_renamed(j)).count()
    }

    /// The postcard body of company `i` (as `ferrysync_core::body` encodes it).
    pub fn company_body<'b>(&self, i: usize, buf: &'b mut [u8]) -> Result<&'b [u8], BodyError> {
        let c = &self.companies[i];
        let values = [
            Value::Text(&c.name),
            Value::Text(&c.city),
            Value::Text(&c.phone),
        ];
        Ok(body::encode(&EXAMPLE.tables[0], &values, buf)?)
    }

    /// The postcard body of contact `j`, with `name` in place of its own when given.
    pub fn contact_body<'b>(
        &self,
        j: usize,
        name: Option<&str>,
        buf: &'b mut [u8],
    ) -> Result<&'b [u8], BodyError> {
        let c = &self.contacts[j];
        let values = [
            Value::Text(name.unwrap_or(&c.name)),
            Value::Text(&c.email),
            Value::Text(&c.phone),
        ];
        Ok(body::encode(&EXAMPLE.tables[1], &values, buf)?)
    }

    /// Total bytes of the bare postcard bodies of every record.
    pub fn body_bytes(&self) -> Result<u64, BodyError> {
        let mut buf = [0u8; BODY_BUF];
        let mut total = 0u64;
        for i in 0..self.companies.len() {
            total += self.company_body(i, &mut buf)?.len() as u64;
        }
        for j in 0..self.contacts.len() {
            total += self.contact_body(j, None, &mut buf)?.len() as u64;
        }
        Ok(total)
    }

    /// Total bytes of the bare postcard bodies of the contacts after the 1 % update.
    pub fn renamed_body_bytes(&self) -> Result<u64, BodyError> {
        let mut buf = [0u8; BODY_BUF];
        let mut total = 0u64;
        for j in (0..self.contacts.len()).filter(|&j| is_renamed(j)) {
            total += self.contact_body(j, Some(&renamed(j)), &mut buf)?.len() as u64;
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_default() {
        assert_eq!(
            Size::parse_list("small,large").unwrap(),
            vec![Size::SMALL, Size::LARGE]
        );
        assert_eq!(Size::parse_list("all").unwrap().len(), 3);
        assert!(Size::parse_list("huge").is_err());
        assert_eq!(Size::DEFAULT.records(), 11_000);
    }

    #[test]
    fn workload_follows_the_issue() {
        let w = Workload::generate(Size::SMALL);
        assert_eq!(w.companies.len(), 100);
        assert_eq!(w.contacts.len(), 1_000);
        assert!(w
            .contacts
            .iter()
            .enumerate()
            .all(|(j, c)| c.company == j % 100));
        assert_eq!(w.renamed_count(), 10);
        assert_ne!(renamed(0), w.contacts[0].name);
        // Realistic lengths: not one-letter strings, not pages of text.
        let avg = |v: &mut dyn Iterator<Item = usize>, n: usize| v.sum::<usize>() / n;
        let name = avg(&mut w.companies.iter().map(|c| c.name.len()), 100);
        let email = avg(&mut w.contacts.iter().map(|c| c.email.len()), 1_000);
        assert!((12..40).contains(&name), "company name length {name}");
        assert!((20..50).contains(&email), "email length {email}");
        assert_eq!(w.contacts[5].phone.len(), "+33 6 12 34 56 78".len());
        // The same generator gives the same data.
        assert_eq!(Workload::generate(Size::SMALL), w);
    }

    #[test]
    fn bodies_hold_the_strings() {
        let w = Workload::generate(Size::SMALL);
        let mut buf = [0u8; BODY_BUF];
        let body = w.contact_body(3, None, &mut buf).unwrap().len();
        let c = &w.contacts[3];
        // postcard: one length byte per short string, then its bytes.
        assert_eq!(body, 3 + c.name.len() + c.email.len() + c.phone.len());
        assert!(w.renamed_body_bytes().unwrap() > 0);
    }
}
