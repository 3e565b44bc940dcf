//! The device-side sync engine: builds a request from a store's pending changes, streams it
//! through a [`Transport`], and applies the reply to the store frame by frame, in one store
//! transaction committed only after `Done`.
//!
//! Memory: a batch packer (two `N`-byte buffers) and one body buffer while sending, one frame
//! decoder and a small receive buffer while applying, all of them `N` bytes or less (const
//! generic): a data set of any size syncs in the same RAM.
//!
//! Rules applied to the reply (`sent` is the highest edit number the request carried):
//! - `Mapping`: the local record gets its server id (nothing else changes: details point at
//!   their parent's local id, which stays).
//! - `Rejected`: the change goes to the rejected log with its body. A refused add is removed
//!   (with its descendants); a refused update or delete is marked clean and the next sync asks
//!   for a full refresh, which brings the server's version back. A record edited again since
//!   the request keeps its newer change pending.
//! - `Reset`: starts a full refresh; at `Done`, server-origin records that were neither
//!   delivered nor changed locally are dropped.
//! - `Upsert`: stores the server's version, unless the record was edited again since the
//!   request (that newer change is sent next time, and last-write-wins decides on the server).
//! - `Remove`: drops the record and its descendants; a local change still pending on any of
//!   them goes to the rejected log (`Deleted` or `ParentMissing`), never silently away.
//! - `Done`: every record sent (edit number ≤ `sent`) is confirmed: clean, or gone for good if
//!   it was a delete; the cursor is stored; the transaction commits. The server does not send
//!   back what the sync wrote, so in a full refresh a confirmed record counts as delivered.

use crate::body;
use crate::frame::{FrameDecoder, FrameEncoder, FrameError};
use crate::hlc::{Clock, Hlc};
use crate::id::{LocalId, RecordRef, ServerId, TableId};
use crate::meta::SyncMeta;
use crate::pack::Packer;
use crate::schema::Schema;
use crate::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use crate::stream::{ReplyCheck, StreamError};
use crate::track::{Descendants, MAX_DEPTH};
use crate::transport::Transport;
use crate::wire::{
    Change, Done, End, Hello, Mode, Op, RejectReason, Rejected, Reply, Request, Upsert,
    PROTOCOL_VERSION,
};
use core::fmt;

/// Size of the buffer the engine reads reply bytes into.
pub const RECEIVE_CHUNK: usize = 256;

/// Why a sync failed. Nothing was committed on the device; run the sync again.
#[derive(Debug, PartialEq, Eq)]
pub enum SyncError<SE, TE> {
    /// The store failed.
    Store(SE),
    /// The transport failed (server unreachable, HTTP error, connection cut).
    Transport(TE),
    /// `N` is too small for even the request's `Hello` or `End` frame (a build mistake).
    FrameTooSmall,
    /// A pending record's change does not fit in one frame.
    TooLarge {
        /// Table.
        table: TableId,
        /// Record.
        local: LocalId,
    },
    /// A reply frame is damaged or malformed.
    Frame {
        /// Index of the frame in the reply.
        frame: u32,
        /// What is wrong with it.
        error: FrameError,
    },
    /// The reply stream is out of order, cut short, or for another batch.
    Stream(StreamError),
    /// The reply carries a record that does not fit this device's schema.
    BadRecord {
        /// Index of the frame in the reply.
        frame: u32,
    },
    /// The schema is deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl<SE: fmt::Display, TE: fmt::Display> fmt::Display for SyncError<SE, TE> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SyncError::Store(e) => write!(f, "local store: {e}"),
            SyncError::Transport(e) => write!(f, "{e}"),
            SyncError::FrameTooSmall => write!(f, "frame size too small for the protocol"),
            SyncError::TooLarge { table, local } => {
                write!(f, "record {local} of {table} is too large for one frame")
            }
            SyncError::Frame { frame, error } => write!(f, "reply frame {frame}: {error}"),
            SyncError::Stream(e) => write!(f, "reply: {e}"),
            SyncError::BadRecord { frame } => {
                write!(f, "reply frame {frame}: record does not fit the schema")
            }
            SyncError::TooDeep => write!(f, "schema deeper than {MAX_DEPTH} levels"),
        }
    }
}

#[cfg(feature = "std")]
impl<SE: fmt::Debug + fmt::Display, TE: fmt::Debug + fmt::Display> std::error::Error
    for SyncError<SE, TE>
{
}

type Res<T, S, Tr> = Result<T, SyncError<<S as LocalStore>::Error, <Tr as Transport>::Error>>;

/// What [`send_request`] sent; pass it to [`receive_reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Batch id of the request.
    pub batch_id: u64,
    /// Highest edit number the request carried.
    pub sent: u32,
    /// Number of changes sent.
    pub changes: u32,
    /// Whether a full refresh was asked for.
    pub full: bool,
}

/// What a completed sync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Changes sent.
    pub sent: u32,
    /// New records that got a server id.
    pub mapped: u32,
    /// Changes the server refused (now in the rejected log).
    pub rejected: u32,
    /// Records received and stored.
    pub upserts: u32,
    /// Records removed by the server.
    pub removes: u32,
    /// The reply was a full refresh.
    pub full: bool,
    /// Cursor stored for the next sync.
    pub cursor: u64,
}

/// The change a sync sends for a pending record: `(op, key)`.
pub fn change_for(rec: &Record) -> (Op, RecordRef) {
    let key = match rec.server {
        Some(s) => RecordRef::Server(s),
        None => RecordRef::Local(rec.local),
    };
    let op = if !rec.meta.is_active {
        Op::Delete
    } else if rec.server.is_none() {
        Op::Add
    } else {
        Op::Update
    };
    (op, key)
}

/// Sends the request: `Hello`, the pending records' changes in batches (tables in schema
/// order, so parents first), `End`. Writes nothing to the store.
pub async fn send_request<S: LocalStore, T: Transport, const N: usize>(
    schema: &Schema<'_>,
    store: &mut S,
    transport: &mut T,
    mode: Mode,
) -> Res<Outgoing, S, T> {
    let state = store.load_state().await.map_err(SyncError::Store)?;
    let full = mode == Mode::Full || state.cursor.is_none() || state.needs_full;
    let out_mode = if full { Mode::Full } else { Mode::Delta };
    let batch_id = state.syncs.wrapping_add(1);
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        schema_hash: schema.hash(),
        batch_id,
        cursor: state.cursor,
        mode: out_mode,
    };
    let mut pack = Packer::<N>::new();
    {
        let mut enc = FrameEncoder::<N>::new();
        let frame = enc
            .encode(&Request::Hello(hello))
            .map_err(|_| SyncError::FrameTooSmall)?;
        transport.send(frame).await.map_err(SyncError::Transport)?;
    }
    let mut body = [0u8; N];
    let mut count = 0u32;
    for (t, def) in schema.tables.iter().enumerate() {
        let table = TableId(t as u8);
        let mut after = None;
        while let Some(rec) = store
            .next(table, after, Filter::Pending)
            .await
            .map_err(SyncError::Store)?
        {
            after = Some(rec.local);
            let (op, key) = change_for(&rec);
            let parent = match (def.parent, rec.parent) {
                (Some(pt), Some(pl)) => {
                    Some(match store.get(pt, pl).await.map_err(SyncError::Store)? {
                        Some(Record {
                            server: Some(s), ..
                        }) => RecordRef::Server(s),
                        _ => RecordRef::Local(pl),
                    })
                }
                _ => None,
            };
            let too_large = SyncError::TooLarge {
                table,
                local: rec.local,
            };
            let len = if op == Op::Delete {
                0
            } else {
                store
                    .get_body(table, rec.local, &mut body)
                    .await
                    .map_err(|_| too_large)?
                    .unwrap_or(0)
            };
            let change = Change {
                table,
                op,
                key,
                parent,
                modified_at: rec.meta.modified_at,
                body: &body[..len],
            };
            while let Some(frame) = pack.change(&change).map_err(|_| SyncError::TooLarge {
                table,
                local: rec.local,
            })? {
                transport.send(frame).await.map_err(SyncError::Transport)?;
            }
            count = count.saturating_add(1);
        }
    }
    if let Some(frame) = pack.flush().map_err(|_| SyncError::FrameTooSmall)? {
        transport.send(frame).await.map_err(SyncError::Transport)?;
    }
    let mut enc = FrameEncoder::<N>::new();
    let frame = enc
        .encode(&Request::End(End { count }))
        .map_err(|_| SyncError::FrameTooSmall)?;
    transport.send(frame).await.map_err(SyncError::Transport)?;
    transport.finish().await.map_err(SyncError::Transport)?;
    Ok(Outgoing {
        batch_id,
        sent: state.edit_seq,
        changes: count,
        full,
    })
}

/// Reads the reply and applies it in one store transaction, committed only after `Done`.
/// On any error the transaction is rolled back: the device is exactly as before, and every
/// change is still pending.
pub async fn receive_reply<S: LocalStore, T: Transport, const N: usize>(
    schema: &Schema<'_>,
    store: &mut S,
    transport: &mut T,
    out: &Outgoing,
) -> Res<SyncReport, S, T> {
    store.begin_reply().await.map_err(SyncError::Store)?;
    let result = apply_reply::<S, T, N>(schema, store, transport, out).await;
    match result {
        Ok((report, state)) => match store.commit(&state).await {
            Ok(()) => Ok(report),
            Err(e) => {
                // A commit that failed may leave the transaction open: drop it.
                let _ = store.rollback().await;
                Err(SyncError::Store(e))
            }
        },
        Err(e) => {
            // The sync failed already; a failing rollback leaves the same committed state.
            let _ = store.rollback().await;
            Err(e)
        }
    }
}

/// One whole sync: [`send_request`] then [`receive_reply`].
pub async fn sync<S: LocalStore, T: Transport, const N: usize>(
    schema: &Schema<'_>,
    store: &mut S,
    transport: &mut T,
    mode: Mode,
) -> Res<SyncReport, S, T> {
    let out = send_request::<S, T, N>(schema, store, transport, mode).await?;
    receive_reply::<S, T, N>(schema, store, transport, &out).await
}

struct Apply<'s, 'a, const N: usize> {
    schema: &'s Schema<'a>,
    sent: u32,
    needs_full: bool,
    /// The last parent looked up by server id: details mostly arrive grouped by parent.
    parent_hit: Option<(TableId, ServerId, LocalId)>,
    state: DeviceState,
    clock: Clock,
    report: SyncReport,
    frame: u32,
}

async fn apply_reply<S: LocalStore, T: Transport, const N: usize>(
    schema: &Schema<'_>,
    store: &mut S,
    transport: &mut T,
    out: &Outgoing,
) -> Res<(SyncReport, DeviceState), S, T> {
    let state = store.load_state().await.map_err(SyncError::Store)?;
    let mut ap = Apply::<N> {
        schema,
        sent: out.sent,
        needs_full: false,
        parent_hit: None,
        clock: Clock::resume(state.clock),
        state,
        report: SyncReport {
            sent: out.changes,
            ..SyncReport::default()
        },
        frame: 0,
    };
    let mut dec = FrameDecoder::<N>::new();
    let mut check = ReplyCheck::new(out.batch_id);
    let mut rx = [0u8; RECEIVE_CHUNK];
    loop {
        let n = transport
            .receive(&mut rx)
            .await
            .map_err(SyncError::Transport)?;
        if n == 0 {
            break;
        }
        let mut pos = 0;
        while pos < n {
            let index = dec.frames();
            let fed = dec.feed::<Reply<'_>>(&rx[pos..n]);
            pos += fed.consumed;
            match fed.result {
                Ok(None) => {}
                Ok(Some(msg)) => {
                    ap.frame = index;
                    for item in msg.items() {
                        let item = item.map_err(|e| SyncError::Frame {
                            frame: index,
                            error: FrameError::Message(e),
                        })?;
                        check.handle(&item).map_err(SyncError::Stream)?;
                        ap.handle::<S, T>(store, &item).await?;
                    }
                }
                Err(error) => {
                    return Err(SyncError::Frame {
                        frame: index,
                        error,
                    })
                }
            }
        }
    }
    check.finish().map_err(SyncError::Stream)?;
    ap.state.clock = ap.clock.last();
    Ok((ap.report, ap.state))
}

fn walk_err<SE, TE>(e: Option<SE>) -> SyncError<SE, TE> {
    match e {
        Some(e) => SyncError::Store(e),
        None => SyncError::TooDeep,
    }
}

impl<const N: usize> Apply<'_, '_, N> {
    async fn handle<S: LocalStore, T: Transport>(
        &mut self,
        store: &mut S,
        msg: &Reply<'_>,
    ) -> Res<(), S, T> {
        match msg {
            Reply::Accepted(a) => {
                self.clock.observe(Hlc::new(a.server_time, 0, 0));
            }
            Reply::Mapping(m) => {
                // A server id names one record: a mapping onto an id another record holds is a
                // broken reply, refused whole.
                if let Some(other) = store
                    .by_server(m.table, m.server)
                    .await
                    .map_err(SyncError::Store)?
                {
                    if other.local != m.local {
                        return Err(SyncError::BadRecord { frame: self.frame });
                    }
                }
                if let Some(mut rec) = store
                    .get(m.table, m.local)
                    .await
                    .map_err(SyncError::Store)?
                {
                    rec.server = Some(m.server);
                    rec.meta.is_from_server = true;
                    store.put(&rec, None).await.map_err(SyncError::Store)?;
                    self.report.mapped += 1;
                }
            }
            Reply::Rejected(r) => self.rejected::<S, T>(store, r).await?,
            Reply::Reset => {
                self.state.refresh = self.state.refresh.wrapping_add(1);
                self.report.full = true;
            }
            Reply::Upsert(u) => self.upsert::<S, T>(store, u).await?,
            Reply::Remove(r) => {
                if let Some(rec) = store
                    .by_server(r.table, r.id)
                    .await
                    .map_err(SyncError::Store)?
                {
                    self.remove_tree::<S, T>(store, rec, RejectReason::Deleted)
                        .await?;
                    self.report.removes += 1;
                }
            }
            Reply::Done(d) => self.done::<S, T>(store, d).await?,
            // Callers expand batches with `Reply::items`.
            Reply::Mappings(_) | Reply::Upserts(_) | Reply::Removes(_) => {
                return Err(SyncError::BadRecord { frame: self.frame })
            }
        }
        Ok(())
    }

    /// Logs a local change that can no longer be sent, so nothing is dropped silently.
    async fn log_orphan<S: LocalStore, T: Transport>(
        &mut self,
        store: &mut S,
        rec: &Record,
        reason: RejectReason,
    ) -> Res<(), S, T> {
        let (op, key) = change_for(rec);
        let mut body = [0u8; N];
        let len = store
            .get_body(rec.table, rec.local, &mut body)
            .await
            .map_err(SyncError::Store)?
            .unwrap_or(0);
        let entry = RejectedEntry {
            seq: 0,
            table: rec.table,
            op,
            key,
            local: Some(rec.local),
            reason,
            at: rec.meta.modified_at,
        };
        store
            .push_rejected(&entry, &body[..len])
            .await
            .map_err(SyncError::Store)
    }

    /// Removes `rec` and its descendants; local changes still pending on them (made after the
    /// request) go to the rejected log.
    async fn remove_tree<S: LocalStore, T: Transport>(
        &mut self,
        store: &mut S,
        rec: Record,
        reason: RejectReason,
    ) -> Res<(), S, T> {
        self.parent_hit = None;
        if rec.meta.is_active && rec.meta.edited_after(self.sent) {
            self.log_orphan::<S, T>(store, &rec, reason).await?;
        }
        let mut walk = Descendants::new(rec.table, rec.local);
        while let Some(child) = walk.next(self.schema, store).await.map_err(walk_err)? {
            if child.meta.is_active && child.meta.edited_after(self.sent) {
                self.log_orphan::<S, T>(store, &child, RejectReason::ParentMissing)
                    .await?;
            }
            store
                .remove(child.table, child.local)
                .await
                .map_err(SyncError::Store)?;
        }
        store
            .remove(rec.table, rec.local)
            .await
            .map_err(SyncError::Store)
    }

    async fn rejected<S: LocalStore, T: Transport>(
        &mut self,
        store: &mut S,
        r: &Rejected<'_>,
    ) -> Res<(), S, T> {
        self.report.rejected += 1;
        let rec = match r.key {
            RecordRef::Local(l) => store.get(r.table, l).await,
            RecordRef::Server(s) => store.by_server(r.table, s).await,
        }
        .map_err(SyncError::Store)?;
        let entry = RejectedEntry {
            seq: 0,
            table: r.table,
            op: r.op,
            key: r.key,
            local: rec.map(|x| x.local),
            reason: r.reason,
            at: rec.map(|x| x.meta.modified_at).unwrap_or_default(),
        };
        store
            .push_rejected(&entry, r.body)
            .await
            .map_err(SyncError::Store)?;
        let Some(mut rec) = rec else {
            return Ok(());
        };
        if rec.meta.edited_after(self.sent) {
            // A newer local change waits; it is sent next time and judged on its own.
            return Ok(());
        }
        if rec.server.is_none() {
            // The server never took this record: it lives on in the rejected log only.
            self.remove_tree::<S, T>(store, rec, RejectReason::ParentMissing)
                .await
        } else {
            rec.meta.is_modified = false;
            rec.meta.is_active = true;
            store.put(&rec, None).await.map_err(SyncError::Store)?;
            self.needs_full = true;
            Ok(())
        }
    }

    async fn upsert<S: LocalStore, T: Transport>(
        &mut self,
        store: &mut S,
        u: &Upsert<'_>,
    ) -> Res<(), S, T> {
        let bad = SyncError::BadRecord { frame: self.frame };
        let def = self.schema.table(u.table).ok_or(bad)?;
        // A store that checks bodies itself refuses a bad one at `put` (below); the paths that
        // do not put the body check it here, so a bad body fails the sync on every path.
        let check =
            || body::validate(def, u.body).map_err(|_| SyncError::BadRecord { frame: self.frame });
        if !S::CHECKS_BODIES {
            check()?;
        }
        self.clock.observe(u.modified_at);
        let parent = match (def.parent, u.parent) {
            (Some(pt), Some(ps)) => match self.parent_hit {
                Some((t, s, l)) if t == pt && s == ps => Some(l),
                _ => match store.by_server(pt, ps).await.map_err(SyncError::Store)? {
                    Some(p) => {
                        self.parent_hit = Some((pt, ps, p.local));
                        Some(p.local)
                    }
                    None => {
                        // The parent is not here (a server that sent children first, or a
                        // scope change): skip, and heal with a full refresh next time.
                        if S::CHECKS_BODIES {
                            check()?;
                        }
                        self.needs_full = true;
                        return Ok(());
                    }
                },
            },
            (None, None) => None,
            _ => return Err(SyncError::BadRecord { frame: self.frame }),
        };
        self.report.upserts += 1;
        let existing = store
            .by_server(u.table, u.id)
            .await
            .map_err(SyncError::Store)?;
        let rec = match existing {
            Some(mut rec) if rec.meta.edited_after(self.sent) => {
                // Keep the newer local change; only note that the record is still in scope.
                if S::CHECKS_BODIES {
                    check()?;
                }
                rec.mark = self.state.refresh;
                return store.put(&rec, None).await.map_err(SyncError::Store);
            }
            Some(rec) => Record {
                parent,
                meta: SyncMeta::from_server(u.modified_at),
                mark: self.state.refresh,
                ..rec
            },
            None => {
                let local = LocalId(self.state.next_local);
                self.state.next_local = self.state.next_local.wrapping_add(1);
                Record {
                    table: u.table,
                    local,
                    server: Some(u.id),
                    parent,
                    meta: SyncMeta::from_server(u.modified_at),
                    mark: self.state.refresh,
                }
            }
        };
        match store.put(&rec, Some(u.body)).await {
            Ok(()) => Ok(()),
            // The store refused the body: the same bad record as for any other store.
            Err(e) => match check() {
                Err(bad) if S::CHECKS_BODIES => Err(bad),
                _ => Err(SyncError::Store(e)),
            },
        }
    }

    async fn done<S: LocalStore, T: Transport>(
        &mut self,
        store: &mut S,
        d: &Done,
    ) -> Res<(), S, T> {
        // The server holds the versions it confirmed and does not send them back: in a full
        // refresh a confirmation is the record's delivery (the server removes one it no longer
        // has, a retried add deleted since, in the reply), so it takes the refresh's mark.
        let mark = self.report.full.then_some(self.state.refresh);
        for t in 0..self.schema.tables.len() {
            store
                .confirm(TableId(t as u8), self.sent, mark)
                .await
                .map_err(SyncError::Store)?;
        }
        if self.report.full {
            for t in 0..self.schema.tables.len() {
                store
                    .sweep(TableId(t as u8), self.state.refresh)
                    .await
                    .map_err(SyncError::Store)?;
            }
        }
        self.state.cursor = Some(d.cursor);
        self.state.syncs = self.state.syncs.wrapping_add(1);
        self.report.cursor = d.cursor;
        self.state.needs_full = self.needs_full;
        Ok(())
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
