//! Exponential backoff with equal jitter, for every loop that retries a
//! shared service (the Workload API, Redis through the audit writer).
//!
//! Each delay is half the current step plus a random part of up to the other
//! half, so sidecars that lost the service together do not retry in lockstep
//! when it comes back, yet none waits longer than the step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    step: Duration,
}

impl Backoff {
    /// Steps double from `start` up to `max`; `max` below `start` caps the first step too.
    pub fn new(start: Duration, max: Duration) -> Self {
        let start = start.min(max);
        Self {
            start,
            max,
            step: start,
        }
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.start;
    }

    /// No failure since the start or the last [`reset`](Self::reset).
    pub fn is_fresh(&self) -> bool {
        self.step == self.start
    }

    /// The pause before the next attempt, in `[step / 2, step]`; the step then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(self.max);
        let half = step / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let (start, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = Backoff::new(start, max);
        assert!(backoff.is_fresh());
        let mut step = start;
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
            step = (step * 2).min(max);
        }
        assert_eq!(backoff.step, max);
        assert!(!backoff.is_fresh());
        backoff.reset();
        assert!(backoff.is_fresh());
        assert!(backoff.next_delay() <= start);
    }

    #[test]
    fn a_cap_below_the_start_caps_the_first_step() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(10));
        assert!(backoff.next_delay() <= Duration::from_millis(10));
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }
}
