//! Everything that crosses the wire between ssh-to-job's programs: the
//! protobuf messages and gRPC services, the join token, and the framing of
//! the starter link with its size limits.

pub mod capability;
pub mod framing;
pub mod handshake;
pub mod job_ref;
pub mod job_state;
pub mod preamble;
pub mod refusal;
pub mod session_id;
pub mod tls_signatures;
pub mod token;

/// Generated code, nested as the protobuf packages are so that cross-package
/// references resolve.
mod pb {
    pub mod stj {
        pub mod user {
            pub mod v1 {
                tonic::include_proto!("stj.user.v1");
            }
        }
        pub mod starter {
            pub mod v1 {
                tonic::include_proto!("stj.starter.v1");
            }
        }
        pub mod session {
            pub mod v1 {
                tonic::include_proto!("stj.session.v1");
            }
        }
    }
}

pub use pb::stj::session::v1 as session;
pub use pb::stj::starter::v1 as starter;
pub use pb::stj::user::v1 as user;

/// Version the starter announces in its hello; the schedd refuses others.
/// 2: node keys in TLS and enrolment tokens, route tokens, start failures
/// that say whose fault they are.
pub const STARTER_PROTOCOL_VERSION: u32 = 2;

/// The node-name rule (starters, capabilities, enrolment): 1-64 characters
/// of `[A-Za-z0-9._-]`, not `.` or `..` — the same rule as routing names, so
/// a name is safe wherever it ends up.
pub fn valid_node_name(name: &str) -> bool {
    preamble::valid_name(name)
}

/// The name in the schedd's TLS certificate. Starters check it instead of the
/// host name they dialled, so the schedd may sit behind any address or NAT.
pub const SCHEDD_TLS_NAME: &str = "stj-schedd";
