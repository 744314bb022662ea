//! ConnectBack: the client of a granted session asks its starter to dial
//! back through the shared port to the client's socket in the daemon_sock
//! dir (reverse mode).

use stj_proto::refusal::status as refuse;
use stj_proto::session_id::SessionId;
use stj_proto::user::Refusal;
use tonic::{Code, Status};

use crate::state::Schedd;

/// Asks the starter of the granted session `req.session_id` to dial the
/// client's socket `req.route_name`.
pub fn connect_back(
    schedd: &Schedd,
    uid: u32,
    req: stj_proto::user::ConnectBackRequest,
) -> Result<(), Status> {
    let sid = SessionId::from_slice(&req.session_id).ok_or_else(|| {
        refuse(
            Code::InvalidArgument,
            Refusal::BadRequest,
            "session_id must be 16 bytes",
        )
    })?;
    let (node, owner) = schedd.rendezvous.lookup(&sid).ok_or_else(|| {
        refuse(
            Code::NotFound,
            Refusal::NoPendingSession,
            "no pending session with this id (expired? run ssh-to-job again)",
        )
    })?;
    if uid != owner {
        return Err(refuse(
            Code::PermissionDenied,
            Refusal::NotOwner,
            "this session was granted to another user",
        ));
    }
    let dir = &schedd.config.daemon_sock_dir;
    if !dir.is_dir() {
        return Err(refuse(Code::FailedPrecondition, Refusal::DaemonSock, format!(
            "the daemon_sock dir {} does not exist: create it with `stj-schedd init-daemon-sock` or set daemon_sock_dir",
            dir.display()
        )));
    }
    if !stj_cli::paths::is_daemon_sock_dir(dir) {
        return Err(refuse(Code::FailedPrecondition, Refusal::DaemonSock, format!(
            "the daemon_sock dir {} is not root's with mode 1733 (made by another user first?): remove it, run `stj-schedd init-daemon-sock` and restart stj-schedd",
            dir.display()
        )));
    }
    // Checked now for a clear error, and again on the very inode when routed.
    super::shared_port::open_socket(dir, &req.route_name, owner).map_err(|e| {
        refuse(
            Code::FailedPrecondition,
            Refusal::DaemonSock,
            format!("{e:#}"),
        )
    })?;
    // One dial-back per capability: repeated calls cannot make a node hold
    // a connection each (and capabilities are capped per user).
    schedd
        .rendezvous
        .dial_back_once(&sid)
        .map_err(|e| refuse(Code::AlreadyExists, Refusal::DialedBack, e.to_string()))?;
    let expiry = super::now() + schedd.config.relay_pairing_secs.max(10);
    let token = schedd
        .rendezvous
        .add_route(&req.route_name, sid, owner, expiry);
    let sent = schedd.registry.send(
        &node,
        stj_proto::starter::ScheddMessage {
            msg: Some(stj_proto::starter::schedd_message::Msg::DialRoute(
                stj_proto::starter::DialRoute {
                    session_id: sid.to_vec(),
                    name: req.route_name.clone(),
                    token: token.to_vec(),
                },
            )),
        },
    );
    if !sent {
        return Err(refuse(
            Code::Unavailable,
            Refusal::NodeAway,
            format!("node {node} is not connected to the schedd right now; retry shortly"),
        ));
    }
    tracing::info!(session_id = %sid, node = %node, "reverse connection requested");
    Ok(())
}
