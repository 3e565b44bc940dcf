//! The benchmarks' workload (issue 7) on a phone: the records and their bodies come from
//! [`ferrysync_core::workload`] (one generator for every bench); this adds what needs a
//! [`Phone`]: storing the records as an app would, and the 1 % update.

pub use ferrysync_core::workload::*;

use ferrysync_core::body::BodyError;
use ferrysync_core::id::LocalId;
use ferrysync_core::LocalStore;
use ferrysync_sqlite::{Error, Phone};
use std::fmt;

/// Local ids of a workload stored on a device, by index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Locals {
    /// Local id of company `i`.
    pub companies: Vec<LocalId>,
    /// Local id of contact `j`.
    pub contacts: Vec<LocalId>,
}

/// What a [`Phone`] does with a [`Workload`].
pub trait OnPhone {
    /// Inserts every record on `phone` as new local records (companies first), each in its
    /// own device transaction, as an app would; returns their local ids.
    fn fill<S: LocalStore>(&self, phone: &mut Phone<S>) -> Result<Locals, Error<S::Error>>
    where
        S::Error: fmt::Display;

    /// Applies the 1 % update on `phone`: renames every contact with `j % 100 == 0`.
    fn rename<S: LocalStore>(
        &self,
        phone: &mut Phone<S>,
        locals: &Locals,
    ) -> Result<usize, Error<S::Error>>
    where
        S::Error: fmt::Display;
}

impl OnPhone for Workload {
    fn fill<S: LocalStore>(&self, phone: &mut Phone<S>) -> Result<Locals, Error<S::Error>>
    where
        S::Error: fmt::Display,
    {
        let mut buf = [0u8; BODY_BUF];
        let mut locals = Locals::default();
        for i in 0..self.companies.len() {
            let body = self.company_body(i, &mut buf).map_err(bad_body)?;
            locals
                .companies
                .push(phone.insert_body(COMPANY, None, body)?);
        }
        for (j, c) in self.contacts.iter().enumerate() {
            let parent = locals.companies[c.company];
            let body = self.contact_body(j, None, &mut buf).map_err(bad_body)?;
            locals
                .contacts
                .push(phone.insert_body(CONTACT, Some(parent), body)?);
        }
        Ok(locals)
    }

    fn rename<S: LocalStore>(
        &self,
        phone: &mut Phone<S>,
        locals: &Locals,
    ) -> Result<usize, Error<S::Error>>
    where
        S::Error: fmt::Display,
    {
        let mut buf = [0u8; BODY_BUF];
        let mut n = 0;
        for j in (0..self.contacts.len()).filter(|&j| is_renamed(j)) {
            let body = self
                .contact_body(j, Some(&renamed(j)), &mut buf)
                .map_err(bad_body)?;
            phone.update_body(CONTACT, locals.contacts[j], body)?;
            n += 1;
        }
        Ok(n)
    }
}

fn bad_body<E>(e: BodyError) -> Error<E> {
    Error::BadValue {
        field: "body".into(),
        value: String::new(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrysync_core::schema::EXAMPLE;

    #[test]
    fn fill_and_rename_on_a_phone() {
        let w = Workload::generate(Size::SMALL);
        let store = ferrysync_sqlite::SqliteStore::open_in_memory(EXAMPLE).unwrap();
        let mut phone = Phone::with_store(store);
        let locals = w.fill(&mut phone).unwrap();
        assert_eq!(phone.pending().unwrap().len(), 1_100);
        let row = phone.get("contact", locals.contacts[7]).unwrap().unwrap();
        assert_eq!(row.record.parent, Some(locals.companies[7]));
        assert_eq!(row.values[0].to_string(), w.contacts[7].name);
        assert_eq!(w.rename(&mut phone, &locals).unwrap(), 10);
        let row = phone.get("contact", locals.contacts[100]).unwrap().unwrap();
        assert_eq!(row.values[0].to_string(), renamed(100));
    }
}
