//! Sync over real HTTP on 127.0.0.1: the pattern's story, conflicts, rejections, retries,
//! hierarchies, scopes, error statuses, delta and full replies, health and metrics, and several
//! server instances over one database. Each test runs on SQLite and on PostgreSQL
//! (`store_test!` in `common.rs`).

#[macro_use]
mod common;

mod concurrency;
mod conflicts;
mod delta;
mod errors;
mod hierarchy;
mod instances;
mod ops;
mod rejections;
mod scopes;
mod story;
