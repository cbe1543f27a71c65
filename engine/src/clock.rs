//! The clock seam: time for roll-by-age and retention, injectable in tests.

use std::cell::Cell;
use std::rc::Rc;

/// Wall-clock milliseconds since the Unix epoch.
pub trait Clock {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("system clock after 1970");
        i64::try_from(since.as_millis()).expect("milliseconds fit in i64")
    }
}

/// A clock moved by hand (tests and simulation).
#[derive(Debug, Clone, Default)]
pub struct ManualClock {
    now_ms: Rc<Cell<i64>>,
}

impl ManualClock {
    /// A clock reading `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock {
            now_ms: Rc::new(Cell::new(now_ms)),
        }
    }
    /// Moves the clock forward by `delta_ms`.
    pub fn advance(&self, delta_ms: i64) {
        self.now_ms.set(self.now_ms.get() + delta_ms);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.get()
    }
}
