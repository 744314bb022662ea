//! The schedd's typed refusals: a [`Refusal`] travels in the details of the
//! gRPC status, so clients act on it and not on the message's wording.

use prost::Message;
use tonic::{Code, Status};

use crate::user::{Refusal, RefusalDetail};

/// A status with `message` for people and `refusal` for programs.
pub fn status(code: Code, refusal: Refusal, message: impl Into<String>) -> Status {
    let detail = RefusalDetail {
        refusal: refusal as i32,
    };
    Status::with_details(code, message, detail.encode_to_vec().into())
}

/// The refusal a status carries; Unspecified when it carries none (or one
/// this build does not know).
pub fn of(s: &Status) -> Refusal {
    RefusalDetail::decode(s.details())
        .ok()
        .and_then(|d| Refusal::try_from(d.refusal).ok())
        .unwrap_or(Refusal::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_survives_the_status_and_garbage_is_unspecified() {
        let s = status(Code::Unavailable, Refusal::NodeAway, "node n1 is away");
        assert_eq!(of(&s), Refusal::NodeAway);
        assert_eq!(s.code(), Code::Unavailable);
        assert_eq!(of(&Status::unavailable("no details")), Refusal::Unspecified);
        let junk = Status::with_details(Code::Internal, "x", vec![0xff, 0xff, 0xff].into());
        assert_eq!(of(&junk), Refusal::Unspecified);
    }
}
