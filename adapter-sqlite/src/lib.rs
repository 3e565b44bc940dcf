//! ferrysync on SQLite, for phone apps: a [`LocalStore`](ferrysync_core::LocalStore) whose
//! tables are real SQL tables the app can query, the change-tracking API on top of it
//! ([`Phone`]), and an HTTP [`Transport`](ferrysync_core::Transport) that streams both ways.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ferrysync_sqlite::Error> {
//! use ferrysync_core::{schema::EXAMPLE, wire::Mode};
//! use ferrysync_sqlite::{HttpTransport, Phone};
//! let mut phone = Phone::open("phone.db", EXAMPLE)?;
//! let acme = phone.insert("company", &[("name", "ACME"), ("city", "Lyon"), ("phone", "1")])?;
//! phone.insert("contact", &[("company_id", &acme.0.to_string()), ("name", "Ann"),
//!                           ("email", "ann@acme"), ("phone", "2")])?;
//! let mut link = HttpTransport::new("http://127.0.0.1:7878", "TOKEN");
//! let report = phone.sync(&mut link, Mode::Delta).await?;
//! println!("{} sent, {} mapped", report.sent, report.mapped);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod coding;
mod http;
mod phone;
mod store;

pub use http::{HttpError, HttpTransport, CONTENT_TYPE};
pub use phone::{Error, OwnedValue, Phone, RejectedRow, Row, MAX_FRAME};
/// The rusqlite this crate is built on, for the app's own queries on [`SqliteStore::connection`].
pub use rusqlite;
pub use store::{check_ident, is_reserved, SqliteStore, StoreError, RESERVED};
