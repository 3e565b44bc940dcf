//! Record and table identifiers.
//!
//! A record created offline gets a [`LocalId`] from its device; once the server has stored it,
//! it is known everywhere by its [`ServerId`]. A [`RecordRef`] is one or the other, which is
//! what a change names as its key and its parent.

use core::fmt;
use serde::{Deserialize, Serialize};

/// Index of a table in the [`Schema`](crate::schema::Schema), in parent-first order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableId(pub u8);

/// Id of a record created on a device and not yet confirmed by the server.
///
/// Local ids are unique per device and table; they are never reused by that device, so a
/// retried batch names the same record with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LocalId(pub u32);

/// Id of a record on the server, unique per table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServerId(pub u64);

/// A reference to a record: by its device-local id before its first sync, by its server id after.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordRef {
    /// Created offline on this device; the server maps it to a [`ServerId`].
    Local(LocalId),
    /// Known to the server.
    Server(ServerId),
}

impl RecordRef {
    /// The server id, if this reference has one.
    pub fn server(self) -> Option<ServerId> {
        match self {
            RecordRef::Server(id) => Some(id),
            RecordRef::Local(_) => None,
        }
    }

    /// The local id, if this reference is device-local.
    pub fn local(self) -> Option<LocalId> {
        match self {
            RecordRef::Local(id) => Some(id),
            RecordRef::Server(_) => None,
        }
    }
}

impl From<LocalId> for RecordRef {
    fn from(id: LocalId) -> Self {
        RecordRef::Local(id)
    }
}

impl From<ServerId> for RecordRef {
    fn from(id: ServerId) -> Self {
        RecordRef::Server(id)
    }
}

impl fmt::Display for TableId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table #{}", self.0)
    }
}

impl fmt::Display for LocalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "L{}", self.0)
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordRef::Local(id) => id.fmt(f),
            RecordRef::Server(id) => id.fmt(f),
        }
    }
}
