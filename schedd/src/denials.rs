//! Denied ssh-to-job requests are audited one by one up to a rate per user;
//! a flood beyond it (a script asking for other people's jobs, or for job
//! ids that do not exist) is counted and written as one summary record per
//! user and minute. The records of a flood cannot grow the database, nor
//! bury the rest of the audit, without bound.

use std::collections::HashMap;
use std::sync::Mutex;

/// Denials recorded one by one per user and minute.
pub const PER_MINUTE: u32 = 60;
const WINDOW: i64 = 60;

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Record this denial.
    Record,
    /// Count it only.
    Suppress,
}

struct Window {
    start: i64,
    recorded: u32,
    suppressed: u64,
}

impl Window {
    fn new(start: i64) -> Window {
        Window {
            start,
            recorded: 0,
            suppressed: 0,
        }
    }

    fn over(&self, now: i64) -> bool {
        now - self.start >= WINDOW
    }

    /// What was counted but not recorded in this minute, if anything.
    fn summary(&self, uid: u32) -> Option<Summary> {
        (self.suppressed > 0).then_some(Summary {
            uid,
            since: self.start,
            count: self.suppressed,
        })
    }
}

/// A summary to write: `uid` had `count` denials more, in the minute from
/// `since`, than were recorded one by one.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub uid: u32,
    pub since: i64,
    pub count: u64,
}

#[derive(Default)]
pub struct Denials {
    windows: Mutex<HashMap<u32, Window>>,
}

impl Denials {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Window>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A denial for `uid` at `now`; also the summary of its previous
    /// minute, if that one had suppressed denials and is over.
    pub fn denied(&self, uid: u32, now: i64) -> (Verdict, Option<Summary>) {
        let mut w = self.lock();
        let mut summary = None;
        let win = w.entry(uid).or_insert_with(|| Window::new(now));
        if win.over(now) {
            summary = win.summary(uid);
            *win = Window::new(now);
        }
        let verdict = if win.recorded < PER_MINUTE {
            win.recorded += 1;
            Verdict::Record
        } else {
            win.suppressed += 1;
            Verdict::Suppress
        };
        (verdict, summary)
    }

    /// The summaries of minutes that are over (for users who stopped
    /// asking); forgets quiet users.
    pub fn flush(&self, now: i64) -> Vec<Summary> {
        let mut out = Vec::new();
        self.lock().retain(|&uid, win| {
            if !win.over(now) {
                return true;
            }
            out.extend(win.summary(uid));
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_recorded_up_to_the_rate_then_summed_up() {
        let d = Denials::default();
        for i in 0..PER_MINUTE {
            assert_eq!(d.denied(1000, 100 + (i as i64 % 50)).0, Verdict::Record);
        }
        for _ in 0..5000 {
            assert_eq!(d.denied(1000, 150).0, Verdict::Suppress);
        }
        // Another user is not affected.
        assert_eq!(d.denied(1001, 150).0, Verdict::Record);
        // The next minute starts with the summary of the last.
        let (v, s) = d.denied(1000, 161);
        assert_eq!(v, Verdict::Record);
        assert_eq!(
            s,
            Some(Summary {
                uid: 1000,
                since: 100,
                count: 5000
            })
        );
        // A user who stops asking gets the summary from the flush.
        for _ in 0..PER_MINUTE + 7 {
            d.denied(1002, 200);
        }
        assert!(d.flush(230).is_empty());
        assert_eq!(
            d.flush(260),
            vec![Summary {
                uid: 1002,
                since: 200,
                count: 7
            }]
        );
    }
}
