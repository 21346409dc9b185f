//! Reconnect delays: exponential (0.5 s doubling to 30 s) with full jitter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const INITIAL: Duration = Duration::from_millis(500);
pub const MAX: Duration = Duration::from_secs(30);

/// Jittered exponential backoff. The randomness is a tiny xorshift seeded by time and pid:
/// it only has to keep many agents from reconnecting in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self::with_seed(nanos ^ (u64::from(std::process::id()) << 32))
    }
}

impl Backoff {
    pub fn with_seed(seed: u64) -> Self {
        Backoff {
            attempt: 0,
            rng: seed | 1, // xorshift must not start at 0
        }
    }

    /// The ceiling of the next delay: 0.5 s × 2^attempt, at most 30 s.
    pub fn ceiling(&self) -> Duration {
        INITIAL.saturating_mul(1 << self.attempt.min(16)).min(MAX)
    }

    /// The next delay: uniform in [0, ceiling]; the ceiling then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        self.jitter(Duration::ZERO, ceiling)
    }

    /// After the controller refused our certificate: wait long (uniform in [MAX/2, MAX]).
    pub fn max_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.jitter(MAX / 2, MAX)
    }

    /// A session lasted long enough: start again from the smallest delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    fn jitter(&mut self, low: Duration, high: Duration) -> Duration {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let span = high.saturating_sub(low).as_millis() as u64;
        low + Duration::from_millis(self.rng % (span + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_reset() {
        let mut b = Backoff::with_seed(42);
        let ceilings: Vec<u64> = (0..10)
            .map(|_| {
                let c = b.ceiling();
                assert!(b.next_delay() <= c);
                c.as_millis() as u64
            })
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        for _ in 0..1000 {
            assert!(b.next_delay() <= MAX);
            let d = b.max_delay();
            assert!(d >= MAX / 2 && d <= MAX);
        }
        b.reset();
        assert_eq!(b.ceiling(), INITIAL);
        // Jitter: the delays are not all the same.
        let mut b = Backoff::default();
        let delays: std::collections::HashSet<_> = (0..50).map(|_| b.max_delay()).collect();
        assert!(delays.len() > 10);
    }
}
