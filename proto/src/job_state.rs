//! Names of job states as users type and read them.

use crate::user::JobState;

impl JobState {
    pub fn label(self) -> &'static str {
        match self {
            JobState::Unspecified => "unknown",
            JobState::Idle => "idle",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Removed => "removed",
        }
    }

    pub fn from_label(s: &str) -> Option<JobState> {
        Some(match s {
            "idle" => JobState::Idle,
            "running" => JobState::Running,
            "completed" => JobState::Completed,
            "removed" => JobState::Removed,
            _ => return None,
        })
    }

    /// A job in a terminal state never changes state again.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Completed | JobState::Removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_round_trip() {
        for s in [
            JobState::Idle,
            JobState::Running,
            JobState::Completed,
            JobState::Removed,
        ] {
            assert_eq!(JobState::from_label(s.label()), Some(s));
        }
        assert_eq!(JobState::from_label("bogus"), None);
    }
}
