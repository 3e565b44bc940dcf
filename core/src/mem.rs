//! An in-memory [`LocalStore`] for tests and simulations (feature `_test`, outside semver).
//!
//! Transactions copy the whole store on `begin` and restore the copy on `rollback`, so a test
//! can "crash" at any point by calling [`MemStore::crash`] and see exactly the committed state.
//! It can also be told to fail its n-th write, to test error paths.

use crate::id::{LocalId, ServerId, TableId};
use crate::store::{DeviceState, Filter, LocalStore, Record, RejectedEntry};
use core::fmt;
use std::collections::BTreeMap;
use std::vec::Vec;

/// The error of [`MemStore`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemError {
    /// A write failed on purpose ([`MemStore::fail_after`]).
    Injected,
    /// The body buffer is too small.
    BufferTooSmall,
    /// `put` with `body: None` of a record that does not exist.
    NoBody,
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::Injected => f.write_str("injected store failure"),
            MemError::BufferTooSmall => f.write_str("buffer too small"),
            MemError::NoBody => f.write_str("record has no body"),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct Data {
    state: Option<DeviceState>,
    records: BTreeMap<(TableId, LocalId), (Record, Vec<u8>)>,
    rejected: BTreeMap<u32, (RejectedEntry, Vec<u8>)>,
}

/// An in-memory store with real transaction semantics.
#[derive(Clone, Debug, Default)]
pub struct MemStore {
    data: Data,
    saved: Option<Data>,
    writes_left: Option<u32>,
    /// Number of commits so far.
    pub commits: u32,
}

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the `n`-th write from now (put, remove, push, commit) fail.
    pub fn fail_after(&mut self, n: u32) {
        self.writes_left = Some(n);
    }

    /// Simulates a crash: an open transaction is lost, committed data stays.
    pub fn crash(&mut self) {
        if let Some(saved) = self.saved.take() {
            self.data = saved;
        }
        self.writes_left = None;
    }

    /// Every record with its body, in `(table, local)` order.
    pub fn records(&self) -> Vec<(Record, Vec<u8>)> {
        self.data.records.values().cloned().collect()
    }

    fn write(&mut self) -> Result<(), MemError> {
        match self.writes_left {
            Some(0) => Err(MemError::Injected),
            Some(n) => {
                self.writes_left = Some(n - 1);
                if n == 1 {
                    return Err(MemError::Injected);
                }
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl LocalStore for MemStore {
    type Error = MemError;

    async fn load_state(&mut self) -> Result<DeviceState, MemError> {
        Ok(self.data.state.unwrap_or_default())
    }

    async fn begin(&mut self) -> Result<(), MemError> {
        self.saved = Some(self.data.clone());
        Ok(())
    }

    async fn commit(&mut self, state: &DeviceState) -> Result<(), MemError> {
        self.write()?;
        self.data.state = Some(*state);
        self.saved = None;
        self.commits += 1;
        Ok(())
    }

    async fn rollback(&mut self) -> Result<(), MemError> {
        self.crash();
        Ok(())
    }

    async fn get(&mut self, table: TableId, local: LocalId) -> Result<Option<Record>, MemError> {
        Ok(self.data.records.get(&(table, local)).map(|(r, _)| *r))
    }

    async fn get_body(
        &mut self,
        table: TableId,
        local: LocalId,
        buf: &mut [u8],
    ) -> Result<Option<usize>, MemError> {
        match self.data.records.get(&(table, local)) {
            None => Ok(None),
            Some((_, body)) => {
                let dst = buf.get_mut(..body.len()).ok_or(MemError::BufferTooSmall)?;
                dst.copy_from_slice(body);
                Ok(Some(body.len()))
            }
        }
    }

    async fn by_server(
        &mut self,
        table: TableId,
        server: ServerId,
    ) -> Result<Option<Record>, MemError> {
        Ok(self
            .data
            .records
            .values()
            .find(|(r, _)| r.table == table && r.server == Some(server))
            .map(|(r, _)| *r))
    }

    async fn put(&mut self, rec: &Record, body: Option<&[u8]>) -> Result<(), MemError> {
        self.write()?;
        let body = match body {
            Some(b) => b.to_vec(),
            None => self
                .data
                .records
                .get(&(rec.table, rec.local))
                .map(|(_, b)| b.clone())
                .ok_or(MemError::NoBody)?,
        };
        self.data
            .records
            .insert((rec.table, rec.local), (*rec, body));
        Ok(())
    }

    async fn remove(&mut self, table: TableId, local: LocalId) -> Result<(), MemError> {
        self.write()?;
        self.data.records.remove(&(table, local));
        Ok(())
    }

    async fn next(
        &mut self,
        table: TableId,
        after: Option<LocalId>,
        filter: Filter,
    ) -> Result<Option<Record>, MemError> {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        if after.is_some_and(|a| a.0 == u32::MAX) {
            return Ok(None);
        }
        Ok(self
            .data
            .records
            .range((table, LocalId(start))..=(table, LocalId(u32::MAX)))
            .map(|(_, (r, _))| *r)
            .find(|r| filter.accepts(r)))
    }

    async fn push_rejected(&mut self, entry: &RejectedEntry, body: &[u8]) -> Result<(), MemError> {
        self.write()?;
        let seq = self.data.rejected.keys().next_back().map_or(1, |k| k + 1);
        let entry = RejectedEntry { seq, ..*entry };
        self.data.rejected.insert(seq, (entry, body.to_vec()));
        Ok(())
    }

    async fn next_rejected(
        &mut self,
        after: Option<u32>,
        buf: &mut [u8],
    ) -> Result<Option<(RejectedEntry, usize)>, MemError> {
        let start = after.map_or(0, |a| a.saturating_add(1));
        match self.data.rejected.range(start..).next() {
            None => Ok(None),
            Some((_, (e, body))) => {
                let dst = buf.get_mut(..body.len()).ok_or(MemError::BufferTooSmall)?;
                dst.copy_from_slice(body);
                Ok(Some((*e, body.len())))
            }
        }
    }

    async fn clear_rejected(&mut self) -> Result<(), MemError> {
        self.write()?;
        self.data.rejected.clear();
        Ok(())
    }
}

/// Makes a reply from a whole request (a fake server).
pub type Responder<'a> = dyn FnMut(&[u8]) -> Vec<u8> + 'a;

/// The error of [`ScriptLink`]: the link is down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkDown;

impl fmt::Display for LinkDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("link down")
    }
}

/// A [`Transport`](crate::transport::Transport) for tests: records the request and plays a
/// reply back `chunk` bytes at a time (0 = as much as asked). The reply is either set before
/// the sync or made from the request at `finish` by a responder (a fake server).
#[derive(Default)]
pub struct ScriptLink<'r> {
    /// The request bytes sent so far.
    pub sent: Vec<u8>,
    /// The reply to play back.
    pub reply: Vec<u8>,
    /// Bytes per `receive` (0: as many as the caller's buffer holds).
    pub chunk: usize,
    /// Fail every `send` (a link that is down).
    pub fail_send: bool,
    pos: usize,
    respond: Option<&'r mut Responder<'r>>,
}

impl<'r> ScriptLink<'r> {
    /// A link that plays back `reply`.
    pub fn replying(reply: Vec<u8>) -> Self {
        ScriptLink {
            reply,
            ..Self::default()
        }
    }

    /// A link whose reply `respond` makes from the whole request.
    pub fn answering(respond: &'r mut Responder<'r>) -> Self {
        ScriptLink {
            respond: Some(respond),
            ..Self::default()
        }
    }
}

impl crate::transport::Transport for ScriptLink<'_> {
    type Error = LinkDown;

    async fn send(&mut self, bytes: &[u8]) -> Result<(), LinkDown> {
        if self.fail_send {
            return Err(LinkDown);
        }
        self.sent.extend_from_slice(bytes);
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), LinkDown> {
        if let Some(respond) = self.respond.as_mut() {
            self.reply = respond(&self.sent);
            self.pos = 0;
        }
        Ok(())
    }

    async fn receive(&mut self, buf: &mut [u8]) -> Result<usize, LinkDown> {
        let chunk = if self.chunk == 0 {
            buf.len()
        } else {
            self.chunk
        };
        let n = chunk
            .min(buf.len())
            .min(self.reply.len().saturating_sub(self.pos));
        buf[..n].copy_from_slice(&self.reply[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
