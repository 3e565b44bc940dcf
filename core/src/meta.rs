//! Per-record sync metadata kept by every device store.

use crate::hlc::Hlc;
use serde::{Deserialize, Serialize};

/// The sync state of one local record.
///
/// `is_from_server`, `is_modified` and `is_active` are the pattern's three flags. `edits` is the
/// local edit counter: each local change stamps the record with the device's next edit number
/// (one counter per device, so it also orders changes across records). A sync remembers the
/// highest number it sent; its reply clears `is_modified` only on records whose stamp is not
/// higher, so a record edited while its sync was in flight stays pending. Comparing one number
/// needs no memory per record sent, which a scanner with a few KiB of RAM cannot spare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncMeta {
    /// The record exists on the server (it has a server id).
    pub is_from_server: bool,
    /// The record was changed locally since the server last confirmed it.
    pub is_modified: bool,
    /// `false` once deleted locally; the record stays until the server confirms the delete.
    pub is_active: bool,
    /// Local edit counter: the device's edit number of the last local change (0 = none).
    pub edits: u32,
    /// Clock of the last change (local or from the server).
    pub modified_at: Hlc,
}

impl SyncMeta {
    /// Metadata of a record just created offline, with edit number `edit`.
    pub fn new_local(at: Hlc, edit: u32) -> Self {
        SyncMeta {
            is_from_server: false,
            is_modified: true,
            is_active: true,
            edits: edit,
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

    /// Applies a local update with edit number `edit`: the record becomes pending.
    pub fn touch(&mut self, at: Hlc, edit: u32) {
        self.is_modified = true;
        self.edits = edit;
        self.modified_at = at;
    }

    /// Applies a local delete with edit number `edit`: soft until the server confirms it.
    pub fn delete(&mut self, at: Hlc, edit: u32) {
        self.touch(at, edit);
        self.is_active = false;
    }

    /// Whether a local change newer than edit number `sent` is waiting (it was made after the
    /// request that carried edit numbers up to `sent` was built).
    pub fn edited_after(&self, sent: u32) -> bool {
        self.is_pending() && self.edits > sent
    }

    /// Whether a sync has something to send for this record.
    pub fn is_pending(&self) -> bool {
        self.is_modified || !self.is_active || !self.is_from_server
    }

    /// After the server confirmed a request that carried edit numbers up to `sent`: clears the
    /// pending flag unless the record was edited again since. Returns whether it was cleared.
    pub fn confirm(&mut self, sent: u32) -> bool {
        if self.edits <= sent {
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
        let mut m = SyncMeta::new_local(t, 4);
        let sent = 4;
        m.touch(Hlc::new(2, 0, 1), 9);
        assert!(m.edited_after(sent));
        assert!(!m.confirm(sent));
        assert!(m.is_modified);
        assert!(m.is_from_server);
        assert!(m.confirm(9));
        assert!(!m.is_modified);
        assert!(!m.is_pending());
    }

    #[test]
    fn delete_is_soft_and_pending() {
        let mut m = SyncMeta::from_server(Hlc::new(1, 0, 0));
        assert!(!m.is_pending());
        m.delete(Hlc::new(2, 0, 3), 7);
        assert!(!m.is_active);
        assert!(m.is_pending());
        assert_eq!(m.edits, 7);
    }
}
