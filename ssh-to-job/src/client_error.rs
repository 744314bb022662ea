//! Why talking to the schedd or a node failed, typed so that what happens
//! next (retry with a fresh capability, or stop and tell the user) is
//! decided on codes and never on message text: rewording a message in the
//! schedd or the starter changes no behaviour here.

use stj_proto::session::ErrorCode;
use stj_proto::user::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The schedd refused a call: its gRPC code, its typed reason, and its
    /// message for people.
    #[error("{message}")]
    Refused {
        code: tonic::Code,
        refusal: Refusal,
        message: String,
    },
    /// The node answered the handshake with a refusal.
    #[error("node {node} refused the session: {message}")]
    NodeRefused {
        node: String,
        code: ErrorCode,
        message: String,
    },
    /// The starter's proof (or its Ready) did not verify: whoever answered
    /// does not hold this session's key.
    #[error("the peer that answered for node {node} could not prove it is the starter running job {job_id}: refusing to connect (a fake or misconfigured starter; tell your admin)")]
    Impersonation { node: String, job_id: u64 },
    /// A step (dial, dial-back, handshake) ran out of time.
    #[error("{0}")]
    TimedOut(String),
}

impl ClientError {
    pub fn from_status(s: tonic::Status) -> ClientError {
        ClientError::Refused {
            code: s.code(),
            refusal: stj_proto::refusal::of(&s),
            message: s.message().to_string(),
        }
    }

    /// The user's own cap on open sessions or unused capabilities is full:
    /// room comes as the user's other attempts finish.
    pub fn is_full_cap(&self) -> bool {
        matches!(
            self,
            ClientError::Refused {
                refusal: Refusal::TooManyPending | Refusal::TooManyOpen,
                ..
            }
        )
    }

    /// True for failures that trying again, with a fresh capability, can
    /// cure: the job has not started yet, its node is briefly away or busy,
    /// the user's other attempts still hold capabilities, or a step ran out
    /// of time under load.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Refused { refusal, .. } => matches!(
                refusal,
                Refusal::JobIdle | Refusal::NodeAway | Refusal::TooManyPending
            ),
            ClientError::NodeRefused { code, .. } => matches!(
                code,
                ErrorCode::Unavailable
                    | ErrorCode::NotReady
                    | ErrorCode::Busy
                    | ErrorCode::Replayed
                    | ErrorCode::InUse
                    | ErrorCode::Expired
            ),
            ClientError::Impersonation { .. } => false,
            ClientError::TimedOut(_) => true,
        }
    }
}

/// Whether `e` (or any error in its chain) is a transient [`ClientError`].
pub fn is_transient(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<ClientError>())
        .any(ClientError::is_transient)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(refusal: Refusal) -> anyhow::Error {
        ClientError::from_status(stj_proto::refusal::status(
            tonic::Code::FailedPrecondition,
            refusal,
            "any wording at all",
        ))
        .into()
    }

    fn node(code: ErrorCode) -> anyhow::Error {
        ClientError::NodeRefused {
            node: "n".into(),
            code,
            message: "any wording at all".into(),
        }
        .into()
    }

    /// Every code the schedd and the starter send, and what it means for a
    /// retry. A new code must be added here (the matches are exhaustive
    /// over the enums' values) before it can change behaviour.
    #[test]
    fn retry_table_over_every_code() {
        use ErrorCode as E;
        use Refusal as R;
        let schedd = [
            (R::Unspecified, false),
            (R::NoSuchJob, false),
            (R::NotOwner, false),
            (R::PoolDisabled, false),
            (R::JobSshDisabled, false),
            (R::JobIdle, true),
            (R::JobNotRunning, false),
            (R::NodeAway, true),
            (R::TooManyOpen, false),
            (R::TooManyPending, true),
            (R::NotAudited, false),
            (R::BadRequest, false),
            (R::NoPendingSession, false),
            (R::DaemonSock, false),
            (R::DialedBack, false),
            (R::JobSourceFailed, false),
            (R::NotInAllocation, false),
            (R::SlurmJobs, false),
        ];
        for (r, transient) in schedd {
            assert_eq!(is_transient(&refused(r)), transient, "{r:?}");
        }
        // Every value of the enum is in the table.
        assert!(Refusal::try_from(schedd.len() as i32).is_err());
        let starter = [
            (E::Unspecified, false),
            (E::BadMessage, false),
            (E::Expired, true),
            (E::Replayed, true),
            (E::WrongStarter, false),
            (E::JobNotHere, false),
            (E::BadProof, false),
            (E::Unavailable, true),
            (E::NotReady, true),
            (E::Busy, true),
            (E::UnsafeHome, false),
            (E::InUse, true),
            (E::NodeMisconfigured, false),
        ];
        for (c, transient) in starter {
            assert_eq!(is_transient(&node(c)), transient, "{c:?}");
        }
        assert!(ErrorCode::try_from(starter.len() as i32).is_err());
        assert!(is_transient(
            &ClientError::TimedOut("dialing".into()).into()
        ));
        assert!(!is_transient(
            &ClientError::Impersonation {
                node: "n".into(),
                job_id: 1
            }
            .into()
        ));
    }

    #[test]
    fn decided_on_codes_not_on_text() {
        // A message that reads like a transient one, under a final code...
        let e = ClientError::from_status(stj_proto::refusal::status(
            tonic::Code::PermissionDenied,
            Refusal::NotOwner,
            "job 1 is idle, not running; node is not connected to the schedd; timed out",
        ));
        assert!(!e.is_transient());
        // ...and the code survives context added on the way up.
        let wrapped = anyhow::Error::from(node(ErrorCode::Busy)).context("attaching to job 1");
        assert!(is_transient(&wrapped));
        // Plain errors (no code at all) are never retried.
        assert!(!is_transient(&anyhow::anyhow!("timed out; still starting")));
    }
}
