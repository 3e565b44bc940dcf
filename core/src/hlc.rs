//! Hybrid logical clock used for last-write-wins.
//!
//! A [`Hlc`] orders by wall-clock milliseconds, then a logical counter, then the device id as a
//! tie-break, so any two changes compare, and two devices never produce the same stamp.
//!
//! Rules:
//! - [`Clock::tick`] gives a stamp strictly greater than every stamp this clock gave or saw,
//!   and never behind the wall clock passed in.
//! - [`Clock::observe`] folds in a stamp from elsewhere (the server's time in a reply, a record
//!   received), so local edits made afterwards win over what was seen.
//! - [`Hlc::clamp`] caps a stamp that claims to be far in the future (a device with a wrong
//!   clock) at the server's time plus the allowed skew.

use serde::{Deserialize, Serialize};

/// A hybrid logical clock stamp: `(wall_ms, counter, device)`, compared in that order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch, as the writer's clock saw them (or later).
    pub wall_ms: u64,
    /// Logical counter that orders stamps within one millisecond.
    pub counter: u32,
    /// Device id of the writer (0 = the server); breaks ties between writers.
    pub device: u32,
}

impl Hlc {
    /// A stamp from its parts.
    pub const fn new(wall_ms: u64, counter: u32, device: u32) -> Self {
        Hlc {
            wall_ms,
            counter,
            device,
        }
    }

    /// Caps a stamp whose wall time is past `max_wall_ms`, keeping its counter and device.
    ///
    /// The server clamps every incoming stamp to `server_time + max_skew`, so a device whose
    /// clock runs a year ahead cannot win every future conflict.
    pub fn clamp(self, max_wall_ms: u64) -> Self {
        if self.wall_ms > max_wall_ms {
            Hlc {
                wall_ms: max_wall_ms,
                ..self
            }
        } else {
            self
        }
    }
}

/// A device's (or the server's) clock state: the last stamp given or seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clock {
    last: Hlc,
}

impl Clock {
    /// A clock for `device` that has seen nothing yet.
    pub const fn new(device: u32) -> Self {
        Clock {
            last: Hlc::new(0, 0, device),
        }
    }

    /// A clock resumed from its last stamp (as stored by a device).
    pub const fn resume(last: Hlc) -> Self {
        Clock { last }
    }

    /// The last stamp given or seen; store it to resume the clock after a restart.
    pub const fn last(&self) -> Hlc {
        self.last
    }

    /// Changes the device id of future stamps (after the server assigned one).
    pub fn set_device(&mut self, device: u32) {
        self.last.device = device;
    }

    /// A new stamp for a local change, given the wall clock `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> Hlc {
        let device = self.last.device;
        self.last = if now_ms > self.last.wall_ms {
            Hlc::new(now_ms, 0, device)
        } else if let Some(counter) = self.last.counter.checked_add(1) {
            Hlc::new(self.last.wall_ms, counter, device)
        } else {
            // Counter exhausted within one millisecond: borrow the next millisecond.
            Hlc::new(self.last.wall_ms.saturating_add(1), 0, device)
        };
        self.last
    }

    /// Folds in a stamp seen elsewhere, so the next [`tick`](Self::tick) is after it.
    pub fn observe(&mut self, seen: Hlc) {
        if (seen.wall_ms, seen.counter) > (self.last.wall_ms, self.last.counter) {
            self.last.wall_ms = seen.wall_ms;
            self.last.counter = seen.counter;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_when_wall_clock_stalls_or_goes_back() {
        let mut c = Clock::new(7);
        let a = c.tick(1000);
        let b = c.tick(1000);
        let d = c.tick(900);
        assert!(a < b && b < d);
        assert_eq!(d.wall_ms, 1000);
        assert_eq!(d.device, 7);
        let e = c.tick(2000);
        assert_eq!(e, Hlc::new(2000, 0, 7));
    }

    #[test]
    fn observe_moves_past_remote() {
        let mut c = Clock::new(1);
        c.tick(100);
        c.observe(Hlc::new(5000, 3, 2));
        let t = c.tick(200);
        assert!(t > Hlc::new(5000, 3, 2));
        assert_eq!(t.device, 1);
    }

    #[test]
    fn device_breaks_ties() {
        assert!(Hlc::new(5, 1, 2) > Hlc::new(5, 1, 1));
        assert!(Hlc::new(5, 2, 1) > Hlc::new(5, 1, 9));
        assert!(Hlc::new(6, 0, 0) > Hlc::new(5, 9, 9));
    }

    #[test]
    fn clamp_caps_future_only() {
        let far = Hlc::new(10_000, 4, 3);
        assert_eq!(far.clamp(500), Hlc::new(500, 4, 3));
        assert_eq!(far.clamp(20_000), far);
    }

    #[test]
    fn counter_overflow_borrows_next_ms() {
        let mut c = Clock::resume(Hlc::new(10, u32::MAX, 1));
        assert_eq!(c.tick(5), Hlc::new(11, 0, 1));
    }
}
