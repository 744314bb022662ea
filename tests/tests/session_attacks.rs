//! Every authentication and authorisation rule of a session, attacked.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ssh_to_job::attach;
use stj_proto::capability::Capability;
use stj_proto::handshake::{read_message, write_message, ClientHandshake, HandshakeError};
use stj_proto::session::{handshake_message::Msg, ErrorCode, HandshakeMessage, Proof};
use stj_tests::{bin, rt, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

fn pool(schedd_toml: &str) -> (Cluster, TestUser, u64) {
    let mut c = Cluster::with_schedd_config(schedd_toml);
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "sleep", "86404"]);
    c.wait_state(id, "running", T);
    (c, alice, id)
}

/// The client side of a handshake, as the tests drive it by hand.
async fn try_handshake(
    grant: &stj_proto::user::RequestSessionReply,
) -> Result<attach::Session, HandshakeError> {
    let mut s = tokio::net::TcpStream::connect(&grant.direct_addr).await?;
    attach::handshake(&mut s, grant).await
}

fn remote_code(r: Result<attach::Session, HandshakeError>) -> ErrorCode {
    match r {
        Err(HandshakeError::Remote { code, .. }) => code,
        other => panic!(
            "expected a refusal from the starter, got {:?}",
            other.map(|_| "a session")
        ),
    }
}

#[test]
fn another_user_gets_no_session() {
    let (c, alice, id) = pool("");
    let bob = TestUser::bob();
    let out = c.ssh_to_job(&bob, &[&id.to_string(), "id"], None);
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("only its owner or root"), "{err}");
    assert!(out.stdout.is_empty());
    assert_eq!(
        fs::read_dir(c.runtime_dir(&bob)).unwrap().count(),
        0,
        "nothing left behind on refusal"
    );

    // The refusal and a granted session are both in the audit records.
    assert!(c
        .ssh_to_job(&alice, &[&id.to_string(), "true"], None)
        .status
        .success());
    // Records are written in batches within milliseconds.
    let q = stj_schedd::queue::Queue::open(&c.state_dir.join("queue.sqlite")).unwrap();
    let records = wait_until("both audit records", T, || {
        let r = q.sessions(id, None).unwrap();
        let denied = r
            .iter()
            .any(|r| r.uid == bob.uid && r.outcome.contains("only its owner or root"));
        let granted = r
            .iter()
            .any(|r| r.uid == alice.uid && r.node == "node1" && r.outcome == "granted");
        (denied && granted).then_some(r)
    });
    assert!(
        records.iter().all(|r| !r.session_id.is_empty()),
        "{records:?}"
    );

    // `stj audit`: root and the job's owner see both; bob only his own.
    for viewer in [None, Some(&alice)] {
        let r = c.audit(viewer, id);
        assert!(
            r.iter()
                .any(|x| x["outcome"] == "granted" && x["uid"] == alice.uid),
            "{r:?}"
        );
        assert!(
            r.iter().any(|x| x["uid"] == bob.uid
                && x["outcome"].as_str().unwrap().contains("only its owner")),
            "{r:?}"
        );
    }
    let r = c.audit(Some(&bob), id);
    assert!(
        !r.is_empty() && r.iter().all(|x| x["uid"] == bob.uid),
        "bob sees only his own: {r:?}"
    );
}

#[test]
fn an_expired_capability_is_refused() {
    let (c, _alice, id) = pool("capability_ttl_secs = 1");
    let rt = rt();
    let grant = rt
        .block_on(attach::request(&c.socket, id, [7; 32]))
        .unwrap();
    let expiry = Capability::decode(&grant.capability).unwrap().expiry;
    wait_until("the capability to expire", T, || {
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > expiry)
            .then_some(())
    });
    assert_eq!(
        remote_code(rt.block_on(try_handshake(&grant))),
        ErrorCode::Expired
    );
}

#[test]
fn a_session_id_is_accepted_once() {
    let (c, _alice, id) = pool("");
    let rt = rt();
    let grant = rt
        .block_on(attach::request(&c.socket, id, [7; 32]))
        .unwrap();
    rt.block_on(try_handshake(&grant))
        .expect("first use succeeds");
    assert_eq!(
        remote_code(rt.block_on(try_handshake(&grant))),
        ErrorCode::Replayed
    );
}

#[test]
fn a_capability_with_one_byte_changed_gets_no_session() {
    let (c, _alice, id) = pool("");
    let rt = rt();
    let grant = rt
        .block_on(attach::request(&c.socket, id, [7; 32]))
        .unwrap();
    for pos in 0..grant.capability.len() {
        let mut forged = grant.clone();
        forged.capability[pos] ^= 0x01;
        let outcome = rt.block_on(async {
            let mut s = tokio::net::TcpStream::connect(&grant.direct_addr)
                .await
                .unwrap();
            let k: [u8; 32] = grant.k.as_slice().try_into().unwrap();
            let (hs, hello) = ClientHandshake::start(forged.capability.clone(), &k, [1; 32]);
            write_message(&mut s, &hello).await.unwrap();
            let (reply, _) = read_message(&mut s).await.unwrap();
            if let Some(Msg::Error(e)) = reply.msg {
                return ErrorCode::try_from(e.code).unwrap();
            }
            // The starter derived a different k: its proof cannot verify...
            assert!(
                matches!(hs.on_challenge(reply), Err(HandshakeError::BadProof)),
                "byte {pos}"
            );
            // ...and whatever proof the forger sends is refused.
            let fake = HandshakeMessage {
                msg: Some(Msg::Proof(Proof { proof: vec![0; 32] })),
            };
            write_message(&mut s, &fake).await.unwrap();
            let (last, _) = read_message(&mut s).await.unwrap();
            match last.msg {
                Some(Msg::Error(e)) => ErrorCode::try_from(e.code).unwrap(),
                other => panic!("byte {pos}: forged capability got {other:?}"),
            }
        });
        assert_ne!(outcome, ErrorCode::Unspecified, "byte {pos}");
    }
    // The genuine capability still works afterwards: forgeries burn nothing.
    rt.block_on(try_handshake(&grant))
        .expect("genuine capability");
}

#[test]
fn a_fake_starter_is_refused_before_ssh_runs() {
    // A "starter" that does not know the starter key, sitting at the address
    // the real one advertises.
    let fake = TcpListener::bind("127.0.0.1:0").unwrap();
    let fake_addr = fake.local_addr().unwrap().to_string();
    let server = std::thread::spawn(move || {
        let (mut s, _) = fake.accept().unwrap();
        let rt = rt();
        rt.block_on(async {
            let std = s.try_clone().unwrap();
            std.set_nonblocking(true).unwrap();
            let mut t = tokio::net::TcpStream::from_std(std).unwrap();
            read_message(&mut t).await.unwrap();
            let challenge = HandshakeMessage {
                msg: Some(Msg::Challenge(stj_proto::session::Challenge {
                    starter_nonce: vec![9; 32],
                    host_pubkey: vec![9; 32],
                    proof: vec![9; 32],
                })),
            };
            write_message(&mut t, &challenge).await.unwrap();
        });
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        rest
    });

    let mut c = Cluster::new();
    c.start_starter_with(
        "node1",
        1,
        &[
            "--session-listen",
            "127.0.0.1:0",
            "--session-advertise",
            &fake_addr,
        ],
    );
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "sleep", "86405"]);
    c.wait_state(id, "running", T);
    let out = c.ssh_to_job(
        &alice,
        &["--mode", "direct", &id.to_string(), "echo reached"],
        None,
    );
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not prove"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("reached"));
    let after_challenge = server.join().unwrap();
    assert!(
        after_challenge.is_empty(),
        "the client sent nothing more (no proof, no SSH): {after_challenge:?}"
    );
}

#[test]
fn another_uid_gets_no_fd_from_the_client_socket() {
    let c = Cluster::new();
    let bob = TestUser::bob();
    let dir = c.path().join("fdpass");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let sock = dir.join("p");
    // Worker threads drive the server while this thread waits for processes.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let _g = rt.enter();
    let listener = ssh_to_job::fd_pass::bind(&sock).unwrap();
    // Even if the socket itself were reachable, the uid check must hold.
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o777)).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut peer = TcpStream::connect(tcp.local_addr().unwrap()).unwrap();
    let (session, _) = tcp.accept().unwrap();
    let serving = rt.spawn(ssh_to_job::fd_pass::serve(listener, session));

    let out = Command::new(bin("stj-proxy"))
        .args(["--copy"])
        .arg(&sock)
        .uid(bob.uid)
        .gid(bob.gid)
        .output()
        .unwrap();
    assert!(!out.status.success(), "bob must get nothing");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sent no socket"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The owner (root here) still gets the socket afterwards.
    peer.write_all(b"for the owner only").unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    let owner = Command::new(bin("stj-proxy"))
        .arg("--copy")
        .arg(&sock)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&owner.stdout), "for the owner only");
    rt.block_on(serving).unwrap().unwrap();
}
