use std::time::{Duration, Instant};

/// Polls `cond` until it returns Some or the deadline passes; panics naming
/// `what` on timeout. Polling a condition with a deadline, not sleeping a
/// guessed time, is how these tests synchronise.
pub fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
