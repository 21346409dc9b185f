//! Wall-clock time as unix milliseconds (a leaf: every module that needs "now" imports it
//! from here, so nothing reaches up into the API or the state for a clock).

use std::time::{SystemTime, UNIX_EPOCH};

/// Now, as unix milliseconds (0 for a clock before 1970).
pub fn now_ms() -> u64 {
    ms(SystemTime::now())
}

/// `t` as unix milliseconds (0 before 1970).
pub fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
