//! Syncs without sockets: the server's request and reply path on byte slices, with the
//! server time given by the caller. The HTTP layer streams the same steps; simulations and
//! benchmarks use this to run whole device fleets deterministically in one thread.

use crate::store::{
    Device, Incoming, OwnedChange, OwnedRejected, ReplyItem, ReplyPlan, ServerStore, StoreError,
    SyncOutcome, SyncParams,
};
use crate::MAX_FRAME;
use ferrysync_core::frame::{FrameDecoder, FrameEncoder, FrameError};
use ferrysync_core::stream::{RequestCheck, StreamError};
use ferrysync_core::wire::{Accepted, Done, Hello, Rejected, Reply, Request};
use std::fmt;

/// Writes a whole reply through `put`: `Accepted`, the mappings, the rejections, the records
/// of `device`'s scope from one snapshot (full or delta, as `hello` asks), then `Done`.
/// Returns the cursor sent in `Done`.
pub fn write_reply(
    store: &dyn ServerStore,
    device: &Device,
    hello: &Hello,
    outcome: &SyncOutcome,
    server_time: u64,
    put: &mut dyn FnMut(&Reply<'_>) -> Result<(), StoreError>,
) -> Result<u64, StoreError> {
    put(&Reply::Accepted(Accepted {
        batch_id: hello.batch_id,
        server_time,
    }))?;
    let mut count: u32 = 0;
    for m in &outcome.mappings {
        put(&Reply::Mapping(*m))?;
        count = count.saturating_add(1);
    }
    for r in &outcome.rejected {
        put(&rejected(r))?;
        count = count.saturating_add(1);
    }
    let plan = ReplyPlan {
        scope: &device.scope,
        mode: hello.mode,
        cursor: hello.cursor,
        extra: &outcome.losers,
    };
    let cursor = store.read_reply(&plan, &mut |item| {
        count = count.saturating_add(1);
        match item {
            ReplyItem::Reset => put(&Reply::Reset),
            ReplyItem::Upsert(u) => put(&Reply::Upsert(u)),
            ReplyItem::Remove(r) => put(&Reply::Remove(r)),
        }
    })?;
    put(&Reply::Done(Done { cursor, count }))?;
    Ok(cursor)
}

fn rejected(r: &OwnedRejected) -> Reply<'_> {
    Reply::Rejected(Rejected {
        table: r.table,
        op: r.op,
        key: r.key,
        reason: r.reason,
        body: &r.body,
    })
}

/// Why an in-process sync was refused; nothing was applied.
#[derive(Debug)]
pub enum DirectError {
    /// A request frame is malformed.
    Frame {
        /// Index of the frame.
        frame: u32,
        /// What is wrong.
        error: FrameError,
    },
    /// The request stream breaks the protocol (order, count, schema, truncation).
    Stream(StreamError),
    /// The store failed.
    Store(StoreError),
}

impl fmt::Display for DirectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirectError::Frame { frame, error } => write!(f, "frame {frame}: {error}"),
            DirectError::Stream(e) => e.fmt(f),
            DirectError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DirectError {}

/// Decodes and checks a whole request held in `request`, applies it for `device` in one
/// transaction, and returns the reply's bytes. A request refused as a whole changes nothing.
pub fn sync(
    store: &dyn ServerStore,
    schema_hash: u64,
    device: &Device,
    params: SyncParams,
    request: &[u8],
) -> Result<Vec<u8>, DirectError> {
    let mut dec = FrameDecoder::<MAX_FRAME>::new();
    let mut check = RequestCheck::new(schema_hash);
    let mut hello = None;
    let mut changes = Vec::new();
    let mut input = request;
    while !input.is_empty() {
        let index = dec.frames();
        let fed = dec.feed::<Request<'_>>(input);
        input = &input[fed.consumed..];
        match fed.result {
            Ok(None) => {}
            Err(error) => {
                return Err(DirectError::Frame {
                    frame: index,
                    error,
                })
            }
            Ok(Some(msg)) => {
                check.handle(&msg).map_err(DirectError::Stream)?;
                match msg {
                    Request::Hello(h) => hello = Some(h),
                    Request::Change(c) => changes.push(OwnedChange::from_wire(&c)),
                    Request::End(_) => {}
                }
            }
        }
    }
    if dec.is_mid_frame() {
        return Err(DirectError::Stream(StreamError::Truncated));
    }
    check.finish().map_err(DirectError::Stream)?;
    let hello = hello.ok_or(DirectError::Stream(StreamError::MissingStart))?;
    let mut source = changes
        .into_iter()
        .map(Incoming::Change)
        .chain(std::iter::once(Incoming::Commit));
    let outcome = store
        .sync(device, params, &mut source)
        .map_err(DirectError::Store)?;
    let mut enc = FrameEncoder::<MAX_FRAME>::new();
    let mut out = Vec::new();
    write_reply(store, device, &hello, &outcome, params.now_ms, &mut |m| {
        let frame = enc.encode(m).map_err(|e| {
            StoreError::Corrupt(format!("reply frame does not fit {MAX_FRAME} bytes: {e}"))
        })?;
        out.extend_from_slice(frame);
        Ok(())
    })
    .map_err(DirectError::Store)?;
    Ok(out)
}
