//! How a starter waits before it dials the schedd again. When a schedd
//! restarts, every starter of the pool loses its link at the same instant:
//! were they all to call back at once, and again in lockstep after each
//! refusal, the schedd would meet the whole pool in a few bursts. So the
//! first call after a link that worked comes at a random moment within
//! `first`, and each later delay is drawn from the upper half of a window
//! that doubles up to `cap` ("equal jitter": never hammering, never
//! waiting twice as long as needed).

use std::time::Duration;

pub struct Backoff {
    first: Duration,
    cap: Duration,
    /// The window of the next delay; None right after a link that worked.
    window: Option<Duration>,
}

/// A random fraction in [0, 1) from the system's generator (a constant
/// where it fails: still a delay, if not a spread one).
fn fraction() -> f64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom(2) into a local buffer of its size.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != 8 {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            window: None,
        }
    }

    /// The link worked (the starter registered): the next delay is the
    /// short, spread first one again.
    pub fn reset(&mut self) {
        self.window = None;
    }

    /// How long to wait before the next call.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(fraction())
    }

    fn next_with(&mut self, r: f64) -> Duration {
        match self.window {
            None => {
                self.window = Some(self.first.max(Duration::from_millis(1)));
                self.first.mul_f64(r)
            }
            Some(w) => {
                let w = (w * 2).min(self.cap);
                self.window = Some(w);
                w / 2 + (w / 2).mul_f64(r)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_first_then_doubling_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        assert_eq!(b.next_with(0.25), Duration::from_millis(250));
        // Windows 2, 4, 8, 16, 30, 30 s; delays in their upper halves.
        for (r, want) in [
            (0.0, 1000),
            (1.0, 4000),
            (0.5, 6000),
            (0.0, 8000),
            (0.0, 15000),
            (0.5, 22500),
        ] {
            assert_eq!(b.next_with(r), Duration::from_millis(want), "r={r}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_secs(1));
        let d = (0..100).map(|_| fraction()).collect::<Vec<_>>();
        assert!(d.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(d.iter().any(|f| *f != d[0]), "random, not constant");
    }
}
