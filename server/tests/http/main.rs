//! Sync over real HTTP on 127.0.0.1: the pattern's story, conflicts, rejections, retries,
//! hierarchies, scopes, error statuses, delta and full replies, health and metrics.

#[macro_use]
mod common;

mod concurrency;
mod conflicts;
mod delta;
mod errors;
mod hierarchy;
mod ops;
mod rejections;
mod scopes;
mod story;
