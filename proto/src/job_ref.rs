//! A job as users name it. The schedd's own queue numbers jobs `42`;
//! Slurm also has array tasks (`42_7`) and heterogeneous job components
//! (`42+1`), each a job of its own with an id of its own, which the job
//! source resolves. On the wire (RequestSessionRequest) the id travels as
//! `job_id` and the whole form as `job`.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobRef {
    pub id: u64,
    pub part: Option<Part>,
}

/// The part of a Slurm job a ref names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// `42_7`: task 7 of array job 42.
    ArrayTask(u32),
    /// `42+1`: component 1 of heterogeneous job 42.
    HetComponent(u32),
}

impl JobRef {
    pub fn plain(id: u64) -> JobRef {
        JobRef { id, part: None }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a job id: give a number like 42 (Slurm also takes 42_7 for an array task, 42+1 for a heterogeneous component)")]
pub struct BadJobRef(pub String);

impl FromStr for JobRef {
    type Err = BadJobRef;
    fn from_str(s: &str) -> Result<JobRef, BadJobRef> {
        let bad = || BadJobRef(s.chars().take(64).collect());
        let digits =
            |t: &str| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit());
        let (id, part) = match s.find(['_', '+']) {
            None => (s, None),
            Some(at) => {
                let (id, rest) = s.split_at(at);
                let n = &rest[1..];
                if !digits(n) {
                    return Err(bad());
                }
                let n: u32 = n.parse().map_err(|_| bad())?;
                let part = match rest.as_bytes()[0] {
                    b'_' => Part::ArrayTask(n),
                    _ => Part::HetComponent(n),
                };
                (id, Some(part))
            }
        };
        if !digits(id) {
            return Err(bad());
        }
        Ok(JobRef {
            id: id.parse().map_err(|_| bad())?,
            part,
        })
    }
}

impl fmt::Display for JobRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.part {
            None => write!(f, "{}", self.id),
            Some(Part::ArrayTask(t)) => write!(f, "{}_{t}", self.id),
            Some(Part::HetComponent(c)) => write!(f, "{}+{c}", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_users_type_and_nothing_else() {
        for (s, want) in [
            ("42", JobRef::plain(42)),
            (
                "42_7",
                JobRef {
                    id: 42,
                    part: Some(Part::ArrayTask(7)),
                },
            ),
            (
                "42+1",
                JobRef {
                    id: 42,
                    part: Some(Part::HetComponent(1)),
                },
            ),
        ] {
            let r: JobRef = s.parse().unwrap();
            assert_eq!(r, want);
            assert_eq!(r.to_string(), s);
        }
        for bad in [
            "",
            "x",
            "42_",
            "_7",
            "42_7_1",
            "42+-1",
            "4 2",
            "-1",
            "42_x",
            "99999999999999999999999",
            "42+1+2",
            "1;rm",
        ] {
            assert!(bad.parse::<JobRef>().is_err(), "{bad:?}");
        }
    }
}
