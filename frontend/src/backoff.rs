//! Reconnection delays: exponential, capped, with jitter so many tabs do not retry in step.

/// Delay schedule for reconnecting a dropped WebSocket.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u32,
    max_ms: u32,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(500, 15_000)
    }
}

impl Backoff {
    pub fn new(base_ms: u32, max_ms: u32) -> Self {
        Backoff { base_ms, max_ms, attempt: 0 }
    }

    /// The delay before the next attempt. `unit_random` in `[0, 1)` spreads it over ±20 %.
    pub fn next_delay_ms(&mut self, unit_random: f64) -> u32 {
        let exponential = u64::from(self.base_ms) << self.attempt.min(16);
        let capped = exponential.min(u64::from(self.max_ms)) as f64;
        self.attempt = self.attempt.saturating_add(1);
        let jitter = 0.8 + 0.4 * unit_random.clamp(0.0, 1.0);
        (capped * jitter).round() as u32
    }

    /// Called once a connection is established: the next drop retries quickly again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let mut b = Backoff::new(500, 15_000);
        let delays: Vec<u32> = (0..8).map(|_| b.next_delay_ms(0.5)).collect();
        assert_eq!(delays, vec![500, 1000, 2000, 4000, 8000, 15_000, 15_000, 15_000]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let mut low = Backoff::new(1000, 60_000);
        let mut high = Backoff::new(1000, 60_000);
        assert_eq!(low.next_delay_ms(0.0), 800);
        assert_eq!(high.next_delay_ms(0.999_999), 1200);
    }

    #[test]
    fn reset_starts_over_and_many_attempts_do_not_overflow() {
        let mut b = Backoff::new(500, 15_000);
        for _ in 0..1000 {
            b.next_delay_ms(0.5);
        }
        assert_eq!(b.next_delay_ms(0.5), 15_000);
        b.reset();
        assert_eq!(b.next_delay_ms(0.5), 500);
    }
}
