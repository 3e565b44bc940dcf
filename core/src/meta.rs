//! Per-record sync metadata kept by every device store.

use crate::hlc::Hlc;
use serde::{Deserialize, Serialize};

/// The sync state of one local record.
///
/// `is_from_server`, `is_modified` and `is_active` are the pattern's three flags. `edits` is a
/// per-record counter bumped by every local change: a sync remembers the value it sent, and a
/// reply clears `is_modified` only when the counter has not moved since, so a record edited
/// while its sync was in flight stays pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMeta {
    /// The record exists on the server (it has a server id).
    pub is_from_server: bool,
    /// The record was changed locally since the server last confirmed it.
    pub is_modified: bool,
    /// `false` once deleted locally; the record stays until the server confirms the delete.
    pub is_active: bool,
    /// Local edit counter, bumped by each insert, update and delete.
    pub edits: u32,
    /// Clock of the last change (local or from the server).
    pub modified_at: Hlc,
}

impl SyncMeta {
    /// Metadata of a record just created offline.
    pub fn new_local(at: Hlc) -> Self {
        SyncMeta {
            is_from_server: false,
            is_modified: true,
            is_active: true,
            edits: 1,
            modified_at: at,
        }
    }

    /// Metadata of a record as the server sent it: clean, active, confirmed.
    pub fn from_server(at: Hlc) -> Self {
        SyncMeta {
            is_from_server: true,
            is_modified: false,
            is_active: true,
            edits: 0,
            modified_at: at,
        }
    }

    /// Applies a local update: the record becomes pending with a new clock.
    pub fn touch(&mut self, at: Hlc) {
        self.is_modified = true;
        self.edits = self.edits.wrapping_add(1);
        self.modified_at = at;
    }

    /// Applies a local delete: soft until the server confirms it.
    pub fn delete(&mut self, at: Hlc) {
        self.touch(at);
        self.is_active = false;
    }

    /// Whether a sync has something to send for this record.
    pub fn is_pending(&self) -> bool {
        self.is_modified || !self.is_active || !self.is_from_server
    }

    /// After the server confirmed the change sent with edit counter `sent`: clears the
    /// pending flag unless the record was edited again since. Returns whether it was cleared.
    pub fn confirm(&mut self, sent: u32) -> bool {
        if self.edits == sent {
            self.is_modified = false;
            self.is_from_server = true;
            true
        } else {
            self.is_from_server = true;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_during_sync_stays_pending() {
        let t = Hlc::new(1, 0, 1);
        let mut m = SyncMeta::new_local(t);
        let sent = m.edits;
        m.touch(Hlc::new(2, 0, 1));
        assert!(!m.confirm(sent));
        assert!(m.is_modified);
        assert!(m.is_from_server);
        let sent = m.edits;
        assert!(m.confirm(sent));
        assert!(!m.is_modified);
        assert!(!m.is_pending());
    }

    #[test]
    fn delete_is_soft_and_pending() {
        let mut m = SyncMeta::from_server(Hlc::new(1, 0, 0));
        assert!(!m.is_pending());
        m.delete(Hlc::new(2, 0, 3));
        assert!(!m.is_active);
        assert!(m.is_pending());
        assert_eq!(m.edits, 1);
    }
}
