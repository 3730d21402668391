//! Per-caller request rates, so that one runaway agent loop cannot starve the
//! other callers of a pod or hammer the shared store. Keyed by the caller's
//! effective SPIFFE ID, which takes a bounded set of values (the agent-level
//! ID and one per configured role), so the limiter's state stays small.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// Requests per second each caller may make, and how many it may make at once
/// after a quiet spell (twice the rate unless configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSettings {
    /// 0 turns limiting off.
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateSettings {
    fn default() -> Self {
        Self {
            per_second: 1000,
            burst: 2000,
        }
    }
}

/// A token bucket per caller (GCRA, from the governor crate).
pub struct RateLimiter {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
    clock: DefaultClock,
}

impl RateLimiter {
    pub fn new(settings: RateSettings) -> Self {
        let limiter = NonZeroU32::new(settings.per_second).map(|rate| {
            let burst = NonZeroU32::new(settings.burst.max(settings.per_second)).unwrap_or(rate);
            DefaultKeyedRateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Spends one request of `caller`'s budget, or says how long until one is free.
    pub fn check(&self, caller: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(&caller.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_caller_has_its_own_budget() {
        let limiter = RateLimiter::new(RateSettings {
            per_second: 1,
            burst: 3,
        });
        for _ in 0..3 {
            assert!(limiter.check("a").is_ok());
        }
        let wait = limiter.check("a").expect_err("a is over its burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limiter.check("b").is_ok(), "b is not limited by a");
    }

    #[test]
    fn zero_turns_limiting_off() {
        let limiter = RateLimiter::new(RateSettings {
            per_second: 0,
            burst: 0,
        });
        assert!((0..10_000).all(|_| limiter.check("a").is_ok()));
    }
}
