//! Change tracking: what local inserts, updates and deletes do to a store.
//!
//! Every function runs in one store transaction: it reads the device state, stamps the change
//! with the next edit number and a clock tick, writes, and commits; on any error it rolls back,
//! so a crash or an error leaves no half-made change. Time is a parameter (`now_ms`, wall-clock
//! milliseconds), as everywhere in the core.

use crate::body::{self, BodyError};
use crate::hlc::Clock;
use crate::id::{LocalId, TableId};
use crate::meta::SyncMeta;
use crate::schema::Schema;
use crate::store::{DeviceState, Filter, LocalStore, Record};
use core::fmt;

/// Most levels below a master (master → detail → sub-detail ...) the device walks when it
/// cascades a delete.
pub const MAX_DEPTH: usize = 8;

/// Why a local change was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum TrackError<E> {
    /// The store failed.
    Store(E),
    /// No such table in the schema.
    UnknownTable(TableId),
    /// No such record (or it is deleted).
    NotFound {
        /// Table.
        table: TableId,
        /// Record.
        local: LocalId,
    },
    /// The body does not fit the table.
    InvalidBody(BodyError),
    /// A detail needs an existing, active parent in the parent table; a master takes none.
    BadParent,
    /// The schema is deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl<E: fmt::Display> fmt::Display for TrackError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrackError::Store(e) => write!(f, "store error: {e}"),
            TrackError::UnknownTable(t) => write!(f, "unknown {t}"),
            TrackError::NotFound { table, local } => {
                write!(f, "no active record {local} in {table}")
            }
            TrackError::InvalidBody(e) => write!(f, "invalid body: {e}"),
            TrackError::BadParent => {
                f.write_str("a detail needs an active parent record; a master takes none")
            }
            TrackError::TooDeep => write!(f, "schema deeper than {MAX_DEPTH} levels"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: fmt::Debug + fmt::Display> std::error::Error for TrackError<E> {}

/// Walks the descendants of one record, depth first, parents before their children, with a
/// fixed-size stack (no heap). Removing or rewriting the record just returned is allowed.
pub struct Descendants {
    stack: heapless::Vec<Level, MAX_DEPTH>,
}

struct Level {
    parent_table: TableId,
    parent: LocalId,
    child_table: usize,
    after: Option<LocalId>,
}

impl Descendants {
    /// A walk below `(table, local)` (the record itself is not returned).
    pub fn new(table: TableId, local: LocalId) -> Self {
        let mut stack = heapless::Vec::new();
        // A fresh stack has room for one level (MAX_DEPTH > 0), so this push cannot fail.
        let _ = stack.push(Level {
            parent_table: table,
            parent: local,
            child_table: table.0 as usize + 1,
            after: None,
        });
        Descendants { stack }
    }

    /// The next descendant; `Err(None)` when the tree is deeper than [`MAX_DEPTH`].
    pub async fn next<S: LocalStore>(
        &mut self,
        schema: &Schema<'_>,
        store: &mut S,
    ) -> Result<Option<Record>, Option<S::Error>> {
        loop {
            let Some(top) = self.stack.last_mut() else {
                return Ok(None);
            };
            while top.child_table < schema.tables.len()
                && schema.tables[top.child_table].parent != Some(top.parent_table)
            {
                top.child_table += 1;
                top.after = None;
            }
            if top.child_table >= schema.tables.len() {
                self.stack.pop();
                continue;
            }
            let table = TableId(top.child_table as u8);
            match store
                .next(table, top.after, Filter::Children(top.parent))
                .await
                .map_err(Some)?
            {
                None => {
                    top.child_table += 1;
                    top.after = None;
                }
                Some(rec) => {
                    top.after = Some(rec.local);
                    self.stack
                        .push(Level {
                            parent_table: rec.table,
                            parent: rec.local,
                            child_table: rec.table.0 as usize + 1,
                            after: None,
                        })
                        .map_err(|_| None)?;
                    return Ok(Some(rec));
                }
            }
        }
    }
}

async fn finish<S: LocalStore, T>(
    store: &mut S,
    result: Result<(T, DeviceState), TrackError<S::Error>>,
) -> Result<T, TrackError<S::Error>> {
    match result {
        Ok((value, state)) => match store.commit(&state).await {
            Ok(()) => Ok(value),
            Err(e) => {
                // A commit that failed may leave the transaction open: drop it.
                let _ = store.rollback().await;
                Err(TrackError::Store(e))
            }
        },
        Err(e) => {
            // The change failed already; a failing rollback leaves the same committed state.
            let _ = store.rollback().await;
            Err(e)
        }
    }
}

fn stamp(state: &mut DeviceState, now_ms: u64) -> (crate::hlc::Hlc, u32) {
    let mut clock = Clock::resume(state.clock);
    let at = clock.tick(now_ms);
    state.clock = clock.last();
    state.edit_seq = state.edit_seq.wrapping_add(1);
    (at, state.edit_seq)
}

async fn active<S: LocalStore>(
    store: &mut S,
    table: TableId,
    local: LocalId,
) -> Result<Record, TrackError<S::Error>> {
    match store.get(table, local).await.map_err(TrackError::Store)? {
        Some(r) if r.meta.is_active => Ok(r),
        _ => Err(TrackError::NotFound { table, local }),
    }
}

/// Creates a record offline; returns its new local id.
pub async fn insert<S: LocalStore>(
    schema: &Schema<'_>,
    store: &mut S,
    table: TableId,
    parent: Option<LocalId>,
    body: &[u8],
    now_ms: u64,
) -> Result<LocalId, TrackError<S::Error>> {
    let def = schema.table(table).ok_or(TrackError::UnknownTable(table))?;
    body::validate(def, body).map_err(TrackError::InvalidBody)?;
    store.begin().await.map_err(TrackError::Store)?;
    let result = async {
        match (def.parent, parent) {
            (Some(pt), Some(p)) => {
                active(store, pt, p)
                    .await
                    .map_err(|_| TrackError::BadParent)?;
            }
            (None, None) => {}
            _ => return Err(TrackError::BadParent),
        }
        let mut state = store.load_state().await.map_err(TrackError::Store)?;
        let (at, edit) = stamp(&mut state, now_ms);
        let local = LocalId(state.next_local);
        state.next_local = state.next_local.wrapping_add(1);
        let rec = Record {
            table,
            local,
            server: None,
            parent,
            meta: SyncMeta::new_local(at, edit),
            mark: 0,
        };
        store
            .put(&rec, Some(body))
            .await
            .map_err(TrackError::Store)?;
        Ok((local, state))
    }
    .await;
    finish(store, result).await
}

/// Replaces the body of an active record; it becomes pending.
pub async fn update<S: LocalStore>(
    schema: &Schema<'_>,
    store: &mut S,
    table: TableId,
    local: LocalId,
    body: &[u8],
    now_ms: u64,
) -> Result<(), TrackError<S::Error>> {
    let def = schema.table(table).ok_or(TrackError::UnknownTable(table))?;
    body::validate(def, body).map_err(TrackError::InvalidBody)?;
    store.begin().await.map_err(TrackError::Store)?;
    let result = async {
        let mut rec = active(store, table, local).await?;
        let mut state = store.load_state().await.map_err(TrackError::Store)?;
        let (at, edit) = stamp(&mut state, now_ms);
        rec.meta.touch(at, edit);
        store
            .put(&rec, Some(body))
            .await
            .map_err(TrackError::Store)?;
        Ok(((), state))
    }
    .await;
    finish(store, result).await
}

/// Deletes an active record and, as the server will, all its descendants. The delete is soft
/// (`is_active = false`) until the server confirms it.
pub async fn delete<S: LocalStore>(
    schema: &Schema<'_>,
    store: &mut S,
    table: TableId,
    local: LocalId,
    now_ms: u64,
) -> Result<(), TrackError<S::Error>> {
    schema.table(table).ok_or(TrackError::UnknownTable(table))?;
    store.begin().await.map_err(TrackError::Store)?;
    let result = async {
        let mut rec = active(store, table, local).await?;
        let mut state = store.load_state().await.map_err(TrackError::Store)?;
        let (at, edit) = stamp(&mut state, now_ms);
        rec.meta.delete(at, edit);
        store.put(&rec, None).await.map_err(TrackError::Store)?;
        let mut walk = Descendants::new(table, local);
        while let Some(mut child) = walk.next(schema, store).await.map_err(|e| match e {
            Some(e) => TrackError::Store(e),
            None => TrackError::TooDeep,
        })? {
            if child.meta.is_active {
                child.meta.delete(at, edit);
                store.put(&child, None).await.map_err(TrackError::Store)?;
            }
        }
        Ok(((), state))
    }
    .await;
    finish(store, result).await
}

/// Counts the records a sync would send.
pub async fn pending_count<S: LocalStore>(
    schema: &Schema<'_>,
    store: &mut S,
) -> Result<u32, S::Error> {
    let mut n = 0u32;
    for t in 0..schema.tables.len() {
        let mut after = None;
        while let Some(r) = store.next(TableId(t as u8), after, Filter::Pending).await? {
            after = Some(r.local);
            n = n.saturating_add(1);
        }
    }
    Ok(n)
}

/// Empties the rejected log (after the app has read it).
pub async fn clear_rejected<S: LocalStore>(store: &mut S) -> Result<(), S::Error> {
    store.begin().await?;
    let state = store.load_state().await;
    let result = match state {
        Ok(state) => match store.clear_rejected().await {
            Ok(()) => store.commit(&state).await,
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    if result.is_err() {
        let _ = store.rollback().await;
    }
    result
}
