//! Registrations at a bounded rate. When the schedd restarts, every
//! starter of the pool calls back within seconds (each at a random moment,
//! `stj_cli::backoff`); TLS handshakes and reconciliation for all of them
//! at once would crowd out what starters already back need (their
//! sessions). Each registration is given the next free moment, at most
//! `max_registrations_per_sec` a second; one whose moment is further off
//! than it may wait is turned away and calls back later.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Pace {
    interval: Duration,
    max_wait: Duration,
    next: Mutex<Instant>,
}

impl Pace {
    pub fn new(per_sec: u32, max_wait: Duration) -> Pace {
        Pace {
            interval: Duration::from_secs(1) / per_sec.max(1),
            max_wait,
            next: Mutex::new(Instant::now()),
        }
    }

    /// How long this registration waits for its moment; None: longer than
    /// it may (turned away).
    pub fn slot(&self, now: Instant) -> Option<Duration> {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let at = (*next).max(now);
        let wait = at - now;
        if wait > self.max_wait {
            return None;
        }
        *next = at + self.interval;
        Some(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_spaced_and_a_full_queue_turns_callers_away() {
        let p = Pace::new(100, Duration::from_millis(50));
        let t = Instant::now();
        let waits: Vec<Option<Duration>> = (0..7).map(|_| p.slot(t)).collect();
        assert_eq!(waits[0], Some(Duration::ZERO));
        assert_eq!(waits[1], Some(Duration::from_millis(10)));
        assert_eq!(waits[5], Some(Duration::from_millis(50)));
        assert_eq!(waits[6], None, "60 ms off: turned away");
        // Time passing frees moments again.
        assert_eq!(p.slot(t + Duration::from_secs(1)), Some(Duration::ZERO));
    }
}
