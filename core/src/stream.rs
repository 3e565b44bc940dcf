//! Validation of whole request and reply streams: frame order, counts and the end.
//!
//! Both sides run a checker over every decoded message, so a truncated, reordered or padded
//! stream is refused as a whole instead of half-applied. Checkers hold O(1) state.
//!
//! The rules are on single-record messages: give the checker the messages of
//! [`Request::items`] / [`Reply::items`] (a batch given whole is checked record by record).
//! Indexes in errors count those messages.
//!
//! Request: `Hello` first (known protocol, same schema hash), then `Change`s whose table ids
//! never decrease (the schema lists parents first, so parents come before children), then
//! `End` with the number of changes, then nothing.
//!
//! Reply: `Accepted` for the right batch first, then in this order `Mapping`s, `Rejected`s, at
//! most one `Reset`, `Upsert`s (table ids never decreasing) and `Remove`s in any mix, then
//! `Done` with the number of messages between `Accepted` and `Done`, then nothing.

use crate::frame::MessageError;
use crate::id::TableId;
use crate::wire::{Reply, Request, PROTOCOL_VERSION};
use core::fmt;

/// Why a stream is refused as a whole. `frame` is the 0-based index of the offending message
/// (single-record messages: a batch counts each of its records).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The first frame is not `Hello` (request) or `Accepted` (reply).
    MissingStart,
    /// The `Hello` speaks a protocol version this side does not.
    UnsupportedVersion {
        /// The version the peer sent.
        got: u16,
    },
    /// The peer's schema hash differs from ours.
    SchemaMismatch {
        /// The peer's hash.
        got: u64,
        /// Ours.
        want: u64,
    },
    /// The reply is for another batch.
    BatchMismatch {
        /// The batch id in `Accepted`.
        got: u64,
        /// The one we sent.
        want: u64,
    },
    /// A frame of a kind not allowed at this point (a second `Hello`, a `Mapping` after an
    /// `Upsert`, ...).
    OutOfOrder {
        /// Index of the message.
        frame: u32,
    },
    /// A child table's frame before its parent's (table ids went down).
    TableOrder {
        /// Index of the message.
        frame: u32,
    },
    /// `End`/`Done` declared a different number of records than were sent.
    CountMismatch {
        /// Declared.
        declared: u32,
        /// Seen.
        seen: u32,
    },
    /// A frame after `End`/`Done`.
    AfterEnd {
        /// Index of the message.
        frame: u32,
    },
    /// The stream ended before `End`/`Done`.
    Truncated,
    /// A record of a batch given whole to a checker does not decode.
    BadItem {
        /// Index of the message.
        frame: u32,
        /// What is wrong.
        error: MessageError,
    },
}

impl StreamError {
    /// A short stable name, for machine-readable error bodies.
    pub const fn as_str(self) -> &'static str {
        match self {
            StreamError::MissingStart => "missing_start",
            StreamError::UnsupportedVersion { .. } => "unsupported_version",
            StreamError::SchemaMismatch { .. } => "schema_mismatch",
            StreamError::BatchMismatch { .. } => "batch_mismatch",
            StreamError::OutOfOrder { .. } => "out_of_order",
            StreamError::TableOrder { .. } => "table_order",
            StreamError::CountMismatch { .. } => "count_mismatch",
            StreamError::AfterEnd { .. } => "after_end",
            StreamError::Truncated => "truncated",
            StreamError::BadItem { error, .. } => error.as_str(),
        }
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::MissingStart => f.write_str("stream does not start with hello/accepted"),
            StreamError::UnsupportedVersion { got } => write!(
                f,
                "protocol version {got} not supported (this side speaks {PROTOCOL_VERSION})"
            ),
            StreamError::SchemaMismatch { got, want } => write!(
                f,
                "schema mismatch: peer has {got:#018x}, this side has {want:#018x}"
            ),
            StreamError::BatchMismatch { got, want } => {
                write!(f, "reply is for batch {got}, expected {want}")
            }
            StreamError::OutOfOrder { frame } => write!(f, "message {frame} is out of order"),
            StreamError::TableOrder { frame } => {
                write!(f, "message {frame}: a child table came before its parent")
            }
            StreamError::CountMismatch { declared, seen } => {
                write!(f, "stream declares {declared} records but carried {seen}")
            }
            StreamError::AfterEnd { frame } => write!(f, "message {frame} after the end"),
            StreamError::Truncated => f.write_str("stream ended before its last frame"),
            StreamError::BadItem { frame, error } => {
                write!(
                    f,
                    "message {frame}: a batched record does not decode ({error:?})"
                )
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Start,
    Body,
    Ended,
}

/// Checks a request stream message by message (server side).
#[derive(Clone, Debug)]
pub struct RequestCheck {
    schema_hash: u64,
    phase: Phase,
    frame: u32,
    changes: u32,
    last_table: TableId,
}

impl RequestCheck {
    /// A checker for requests that must carry `schema_hash`.
    pub fn new(schema_hash: u64) -> Self {
        RequestCheck {
            schema_hash,
            phase: Phase::Start,
            frame: 0,
            changes: 0,
            last_table: TableId(0),
        }
    }

    /// Index of the next message.
    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// Number of changes accepted so far.
    pub fn changes(&self) -> u32 {
        self.changes
    }

    /// Checks the next message.
    pub fn handle(&mut self, msg: &Request<'_>) -> Result<(), StreamError> {
        if let Request::Changes(_) = msg {
            for item in msg.items() {
                let item = item.map_err(|error| StreamError::BadItem {
                    frame: self.frame,
                    error,
                })?;
                self.handle(&item)?;
            }
            return Ok(());
        }
        let frame = self.frame;
        self.frame = self.frame.saturating_add(1);
        match (self.phase, msg) {
            (Phase::Ended, _) => Err(StreamError::AfterEnd { frame }),
            (Phase::Start, Request::Hello(h)) => {
                if h.protocol != PROTOCOL_VERSION {
                    return Err(StreamError::UnsupportedVersion { got: h.protocol });
                }
                if h.schema_hash != self.schema_hash {
                    return Err(StreamError::SchemaMismatch {
                        got: h.schema_hash,
                        want: self.schema_hash,
                    });
                }
                self.phase = Phase::Body;
                Ok(())
            }
            (Phase::Start, _) => Err(StreamError::MissingStart),
            (Phase::Body, Request::Change(c)) => {
                if c.table < self.last_table {
                    return Err(StreamError::TableOrder { frame });
                }
                self.last_table = c.table;
                self.changes = self.changes.saturating_add(1);
                Ok(())
            }
            (Phase::Body, Request::End(e)) => {
                if e.count != self.changes {
                    return Err(StreamError::CountMismatch {
                        declared: e.count,
                        seen: self.changes,
                    });
                }
                self.phase = Phase::Ended;
                Ok(())
            }
            (Phase::Body, Request::Hello(_)) => Err(StreamError::OutOfOrder { frame }),
            // Expanded above.
            (Phase::Body, Request::Changes(_)) => Ok(()),
        }
    }

    /// Whether `End` was seen.
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Call when the byte stream ends: an error unless `End` was seen.
    pub fn finish(&self) -> Result<(), StreamError> {
        if self.is_complete() {
            Ok(())
        } else {
            Err(StreamError::Truncated)
        }
    }
}

/// Checks a reply stream message by message (device side).
#[derive(Clone, Debug)]
pub struct ReplyCheck {
    batch_id: u64,
    phase: Phase,
    /// 1 = mappings, 2 = rejections, 3 = reset seen, 4 = records.
    section: u8,
    frame: u32,
    between: u32,
    last_upsert: TableId,
}

impl ReplyCheck {
    /// A checker for the reply to batch `batch_id`.
    pub fn new(batch_id: u64) -> Self {
        ReplyCheck {
            batch_id,
            phase: Phase::Start,
            section: 1,
            frame: 0,
            between: 0,
            last_upsert: TableId(0),
        }
    }

    /// Index of the next message.
    pub fn frame(&self) -> u32 {
        self.frame
    }

    /// Checks the next message.
    pub fn handle(&mut self, msg: &Reply<'_>) -> Result<(), StreamError> {
        if let Reply::Mappings(_) | Reply::Upserts(_) | Reply::Removes(_) = msg {
            for item in msg.items() {
                let item = item.map_err(|error| StreamError::BadItem {
                    frame: self.frame,
                    error,
                })?;
                self.handle(&item)?;
            }
            return Ok(());
        }
        let frame = self.frame;
        self.frame = self.frame.saturating_add(1);
        match self.phase {
            Phase::Ended => return Err(StreamError::AfterEnd { frame }),
            Phase::Start => {
                return match msg {
                    Reply::Accepted(a) if a.batch_id == self.batch_id => {
                        self.phase = Phase::Body;
                        Ok(())
                    }
                    Reply::Accepted(a) => Err(StreamError::BatchMismatch {
                        got: a.batch_id,
                        want: self.batch_id,
                    }),
                    _ => Err(StreamError::MissingStart),
                };
            }
            Phase::Body => {}
        }
        let section = match msg {
            Reply::Accepted(_) => return Err(StreamError::OutOfOrder { frame }),
            Reply::Mapping(_) => 1,
            Reply::Rejected(_) => 2,
            Reply::Reset => {
                if self.section >= 3 {
                    return Err(StreamError::OutOfOrder { frame });
                }
                3
            }
            Reply::Upsert(u) => {
                if u.table < self.last_upsert {
                    return Err(StreamError::TableOrder { frame });
                }
                self.last_upsert = u.table;
                4
            }
            Reply::Remove(_) => 4,
            // Expanded above.
            Reply::Mappings(_) | Reply::Upserts(_) | Reply::Removes(_) => return Ok(()),
            Reply::Done(d) => {
                if d.count != self.between {
                    return Err(StreamError::CountMismatch {
                        declared: d.count,
                        seen: self.between,
                    });
                }
                self.phase = Phase::Ended;
                return Ok(());
            }
        };
        if section < self.section {
            return Err(StreamError::OutOfOrder { frame });
        }
        self.section = section;
        self.between = self.between.saturating_add(1);
        Ok(())
    }

    /// Whether `Done` was seen.
    pub fn is_complete(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Call when the byte stream ends: an error unless `Done` was seen.
    pub fn finish(&self) -> Result<(), StreamError> {
        if self.is_complete() {
            Ok(())
        } else {
            Err(StreamError::Truncated)
        }
    }
}
