//! Syncs without sockets: the server's request and reply path on byte slices, with the
//! server time given by the caller. The HTTP layer streams the same steps; simulations and
//! benchmarks use this to run whole device fleets deterministically in one thread.

use crate::store::{
    Device, Incoming, OwnedChange, OwnedRejected, ReplyItem, ReplyPlan, ServerStore, StoreError,
    SyncOutcome, SyncParams,
};
use crate::MAX_FRAME;
use ferrysync_core::frame::{FrameDecoder, FrameError};
use ferrysync_core::pack::{EmitError, Packer};
use ferrysync_core::stream::{RequestCheck, StreamError};
use ferrysync_core::wire::{
    peek_protocol, Accepted, Done, Hello, Rejected, Reply, Request, PROTOCOL_VERSION,
};
use std::fmt;

/// What [`write_reply`] sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyStats {
    /// The cursor sent in `Done`.
    pub cursor: u64,
    /// Frames written, `Accepted` and `Done` included.
    pub frames: u32,
    /// Upserts and removes sent.
    pub records: u64,
}

/// Frames a reply: records are packed into batch frames, other messages get their own.
struct ReplyFramer<'p> {
    pack: Box<Packer<MAX_FRAME>>,
    put: &'p mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
    stats: ReplyStats,
}

impl ReplyFramer<'_> {
    /// Sends `msg`: into the open batch when it is a record, in a frame of its own otherwise.
    fn send(&mut self, msg: &Reply<'_>) -> Result<(), StoreError> {
        let (put, stats) = (&mut self.put, &mut self.stats);
        self.pack
            .reply(msg, &mut |frame| {
                stats.frames = stats.frames.saturating_add(1);
                put(frame)
            })
            .map_err(|e| match e {
                EmitError::Encode(e) => {
                    StoreError::Corrupt(format!("reply frame does not fit {MAX_FRAME} bytes: {e}"))
                }
                EmitError::Emit(e) => e,
            })
    }
}

/// Writes a whole reply through `put`, frame by frame: `Accepted`, the mappings, the
/// rejections, the records of `device`'s scope from one snapshot (full or delta, as `hello`
/// asks) but for the records this sync wrote (the device holds them), then `Done`. Records
/// travel in batch frames.
pub fn write_reply(
    store: &dyn ServerStore,
    device: &Device,
    hello: &Hello,
    outcome: &SyncOutcome,
    server_time: u64,
    put: &mut dyn FnMut(&[u8]) -> Result<(), StoreError>,
) -> Result<ReplyStats, StoreError> {
    let mut w = ReplyFramer {
        pack: Box::new(Packer::new()),
        put,
        stats: ReplyStats::default(),
    };
    w.send(&Reply::Accepted(Accepted {
        batch_id: hello.batch_id,
        server_time,
    }))?;
    let mut count: u32 = 0;
    for m in &outcome.mappings {
        w.send(&Reply::Mapping(*m))?;
        count = count.saturating_add(1);
    }
    for r in &outcome.rejected {
        w.send(&rejected(r))?;
        count = count.saturating_add(1);
    }
    let plan = ReplyPlan {
        scope: &device.scope,
        mode: hello.mode,
        cursor: hello.cursor,
        extra: &outcome.losers,
    };
    let cursor = store.read_sync_reply(&plan, outcome.written, &mut |item| {
        count = count.saturating_add(1);
        match item {
            ReplyItem::Reset => w.send(&Reply::Reset),
            ReplyItem::Upsert(u) => {
                w.stats.records += 1;
                w.send(&Reply::Upsert(u))
            }
            ReplyItem::Remove(r) => {
                w.stats.records += 1;
                w.send(&Reply::Remove(r))
            }
        }
    })?;
    w.send(&Reply::Done(Done { cursor, count }))?;
    w.stats.cursor = cursor;
    Ok(w.stats)
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

/// Why a request stream was refused as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadError {
    /// Frame `frame` is malformed.
    Frame {
        /// Index of the frame.
        frame: u32,
        /// What is wrong.
        error: FrameError,
    },
    /// The stream breaks the protocol (order, count, schema, version, truncation).
    Stream {
        /// Index of the offending frame, when there is one.
        frame: Option<u32>,
        /// What is wrong.
        error: StreamError,
    },
    /// More frames than the reader's limit.
    TooManyFrames {
        /// The limit.
        limit: u32,
    },
}

/// Decodes and checks a request stream as its bytes arrive, in chunks of any size: the one
/// reader behind the HTTP handler and [`sync`].
pub struct RequestReader {
    dec: Box<FrameDecoder<MAX_FRAME>>,
    check: RequestCheck,
    hello: Option<Hello>,
    max_frames: u32,
}

impl RequestReader {
    /// A reader for requests that must carry `schema_hash`, refusing more than `max_frames`.
    pub fn new(schema_hash: u64, max_frames: u32) -> Self {
        RequestReader {
            dec: Box::new(FrameDecoder::new()),
            check: RequestCheck::new(schema_hash),
            hello: None,
            max_frames,
        }
    }

    /// The request's `Hello`, once read.
    pub fn hello(&self) -> Option<Hello> {
        self.hello
    }

    /// Consumes `input`, appending the changes it completes to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<OwnedChange>) -> Result<(), ReadError> {
        while !input.is_empty() {
            let index = self.dec.frames();
            let fed = self.dec.feed::<Request<'_>>(input);
            input = &input[fed.consumed..];
            match fed.result {
                Ok(None) => {}
                Err(error) => {
                    // A later version's Hello may not decode as v1's; its first field is
                    // still the version (docs/wire-format.md, versions).
                    if index == 0 {
                        if let Some(got) = self.dec.last_message().and_then(peek_protocol) {
                            if got != PROTOCOL_VERSION {
                                return Err(ReadError::Stream {
                                    frame: Some(0),
                                    error: StreamError::UnsupportedVersion { got },
                                });
                            }
                        }
                    }
                    return Err(ReadError::Frame {
                        frame: index,
                        error,
                    });
                }
                Ok(Some(msg)) => {
                    for item in msg.items() {
                        let item = item.map_err(|e| ReadError::Frame {
                            frame: index,
                            error: FrameError::Message(e),
                        })?;
                        self.check
                            .handle(&item)
                            .map_err(|error| ReadError::Stream {
                                frame: Some(index),
                                error,
                            })?;
                        match item {
                            Request::Hello(h) => self.hello = Some(h),
                            Request::Change(c) => out.push(OwnedChange::from_wire(&c)),
                            Request::End(_) | Request::Changes(_) => {}
                        }
                    }
                }
            }
            if self.dec.frames() > self.max_frames {
                return Err(ReadError::TooManyFrames {
                    limit: self.max_frames,
                });
            }
        }
        Ok(())
    }

    /// The bytes ended: the `Hello` of a complete request, or why it is not one.
    pub fn finish(&self) -> Result<Hello, ReadError> {
        if self.dec.is_mid_frame() {
            return Err(ReadError::Stream {
                frame: Some(self.dec.frames()),
                error: StreamError::Truncated,
            });
        }
        self.check.finish().map_err(|error| ReadError::Stream {
            frame: Some(self.check.frame()),
            error,
        })?;
        self.hello.ok_or(ReadError::Stream {
            frame: None,
            error: StreamError::Truncated,
        })
    }
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
    let mut reader = RequestReader::new(schema_hash, u32::MAX);
    let mut changes = Vec::new();
    let read = reader
        .push(request, &mut changes)
        .and_then(|()| reader.finish());
    let hello = match read {
        Ok(hello) => hello,
        Err(ReadError::Frame { frame, error }) => return Err(DirectError::Frame { frame, error }),
        Err(ReadError::Stream { error, .. }) => return Err(DirectError::Stream(error)),
        // No frame limit here (`u32::MAX` frames cannot be counted past).
        Err(ReadError::TooManyFrames { .. }) => {
            return Err(DirectError::Stream(StreamError::Truncated))
        }
    };
    // A request without changes (a pull) takes no write transaction, as over HTTP.
    let outcome = if changes.is_empty() {
        SyncOutcome::default()
    } else {
        let mut source = changes
            .into_iter()
            .map(Incoming::Change)
            .chain(std::iter::once(Incoming::Commit));
        store
            .sync(device, params, &mut source)
            .map_err(DirectError::Store)?
    };
    let mut out = Vec::new();
    write_reply(
        store,
        device,
        &hello,
        &outcome,
        params.now_ms,
        &mut |frame| {
            out.extend_from_slice(frame);
            Ok(())
        },
    )
    .map_err(DirectError::Store)?;
    Ok(out)
}
