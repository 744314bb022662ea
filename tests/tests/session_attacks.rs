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

/// A pool whose node advertises `addr` for direct sessions: where a
/// test's impostor or man in the middle listens.
fn pool_advertising(addr: &str) -> Cluster {
    let mut c = Cluster::new();
    c.start_starter_with(
        "node1",
        1,
        &[
            "--session-listen",
            "127.0.0.1:0",
            "--session-advertise",
            addr,
        ],
    );
    c
}

/// Alice attaches directly to a new job of hers (`sleep SECS`): the client
/// must give up before ssh runs, since whoever answered could not prove it
/// is the node.
fn direct_attach_is_refused_as_unproven(c: &Cluster, secs: &str) {
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "sleep", secs]);
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
}

/// The client side of a handshake, as the tests drive it by hand.
async fn try_handshake(grant: &attach::Grant) -> Result<attach::Session, HandshakeError> {
    let mut s = tokio::net::TcpStream::connect(grant.direct_addr.as_deref().unwrap()).await?;
    attach::handshake(&mut s, grant, None, Default::default()).await
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
    let q = stj_schedd::queue::Queue::open(&c.state_dir.join(stj_schedd::queue::DB_FILE)).unwrap();
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
        .block_on(attach::request(&c.socket, &id.into(), [7; 32]))
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
        .block_on(attach::request(&c.socket, &id.into(), [7; 32]))
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
        .block_on(attach::request(&c.socket, &id.into(), [7; 32]))
        .unwrap();
    for pos in 0..grant.capability.len() {
        let mut forged = grant.clone();
        forged.capability[pos] ^= 0x01;
        let outcome = rt.block_on(async {
            let mut s = tokio::net::TcpStream::connect(grant.direct_addr.as_deref().unwrap())
                .await
                .unwrap();
            let k = grant.k;
            let (mut hs, hello) = ClientHandshake::start(forged.capability.clone(), &k, [1; 32]);
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
                msg: Some(Msg::Proof(Proof {
                    proof: vec![0; 32],
                    ..Default::default()
                })),
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

    let c = pool_advertising(&fake_addr);
    direct_attach_is_refused_as_unproven(&c, "86405");
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

/// A Hello for job `id` on node1 that looks right in every field but is
/// signed with a guessed k: what an attacker who read `stj q` can forge.
fn forged_hello(id: u64, session: u8) -> HandshakeMessage {
    let cap = Capability {
        session_id: stj_proto::session_id::SessionId([session; 16]),
        job_id: id,
        owner_uid: TestUser::alice().uid,
        expiry: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600,
        client_pubkey: [7; 32],
        starter_id: "node1".into(),
    };
    ClientHandshake::start(cap.encode().unwrap(), &[session; 32], [1; 32]).1
}

#[test]
fn forged_hellos_hold_no_handshake_slot() {
    let (c, alice, id) = pool("");
    let addr = c.session_listen_addr("node1");
    let rt = rt();
    // 300 connections (more than the node's 256 slots) each send a forged
    // Hello and stay open. Every one is refused at once, before any slot.
    let conns = rt.block_on(async {
        let mut conns = Vec::new();
        for i in 0..300u32 {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            write_message(&mut s, &forged_hello(id, i as u8))
                .await
                .unwrap();
            conns.push(s);
        }
        for s in conns.iter_mut() {
            let (reply, _) = tokio::time::timeout(T, read_message(s))
                .await
                .expect("a forged Hello is answered at once")
                .unwrap();
            match reply.msg {
                Some(Msg::Error(e)) => assert_eq!(e.code, ErrorCode::BadProof as i32),
                other => panic!("a forged Hello got {other:?}"),
            }
        }
        conns
    });
    // With the forgers still connected, the owner gets a session.
    let out = c.ssh_to_job(
        &alice,
        &["--mode", "direct", &id.to_string(), "echo in"],
        None,
    );
    assert_eq!(stj_tests::ok(out), "in\n");
    drop(conns);
}

#[test]
fn one_users_stalled_handshakes_do_not_lock_others_out() {
    let mut c = Cluster::new();
    c.start_starter("node1", 4);
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    let bobs = c.submit(&bob, &["--", "sleep", "86406"]);
    let alices = c.submit(&alice, &["--", "sleep", "86407"]);
    c.wait_state(bobs, "running", T);
    c.wait_state(alices, "running", T);
    let rt = rt();
    // 40 real capabilities into bob's job (root's requests are not capped
    // by the schedd), each handshake stalled after its Hello.
    let stalled = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..40 {
            let grant = attach::request(&c.socket, &bobs.into(), [7; 32])
                .await
                .unwrap();
            let k = grant.k;
            let mut s = tokio::net::TcpStream::connect(grant.direct_addr.as_deref().unwrap())
                .await
                .unwrap();
            let (_, hello) = ClientHandshake::start(grant.capability.clone(), &k, [1; 32]);
            write_message(&mut s, &hello).await.unwrap();
            v.push(s);
        }
        // 32 (the per-user share) get their Challenge; the rest wait.
        let mut challenged = 0;
        for s in v.iter_mut() {
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(300), read_message(s)).await {
                assert!(matches!(r.unwrap().0.msg, Some(Msg::Challenge(_))));
                challenged += 1;
            }
        }
        assert_eq!(challenged, 32, "one user's share of the node's handshakes");
        v
    });
    // Meanwhile alice attaches to her own job on the same node.
    let out = c.ssh_to_job(
        &alice,
        &["--mode", "direct", &alices.to_string(), "echo mine"],
        None,
    );
    assert_eq!(stj_tests::ok(out), "mine\n");
    drop(stalled);
}

#[test]
fn a_rewritten_login_name_is_caught_before_ssh_runs() {
    // A man in the middle between client and starter that forwards the
    // handshake but changes the login name in Ready.
    let mitm = TcpListener::bind("127.0.0.1:0").unwrap();
    let mitm_addr = mitm.local_addr().unwrap().to_string();
    let c = pool_advertising(&mitm_addr);
    let real = c.session_listen_addr("node1");
    let relay = std::thread::spawn(move || {
        let (client, _) = mitm.accept().unwrap();
        let rt = rt();
        rt.block_on(async move {
            client.set_nonblocking(true).unwrap();
            let mut client = tokio::net::TcpStream::from_std(client).unwrap();
            let mut node = tokio::net::TcpStream::connect(&real).await.unwrap();
            let (hello, _) = read_message(&mut client).await.unwrap();
            write_message(&mut node, &hello).await.unwrap();
            let (challenge, _) = read_message(&mut node).await.unwrap();
            write_message(&mut client, &challenge).await.unwrap();
            let (proof, _) = read_message(&mut client).await.unwrap();
            write_message(&mut node, &proof).await.unwrap();
            let (ready, _) = read_message(&mut node).await.unwrap();
            let Some(Msg::Ready(mut r)) = ready.msg else {
                panic!("expected Ready, got {ready:?}")
            };
            r.user = "stjtest-bob".into();
            let forged = HandshakeMessage {
                msg: Some(Msg::Ready(r)),
            };
            write_message(&mut client, &forged).await.unwrap();
            // Whatever the client sends next would be SSH.
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(
                T,
                tokio::io::AsyncReadExt::read_to_end(&mut client, &mut rest),
            )
            .await;
            rest
        })
    });
    direct_attach_is_refused_as_unproven(&c, "86408");
    assert!(
        relay.join().unwrap().is_empty(),
        "no SSH bytes after a tampered Ready"
    );
}

#[test]
fn a_local_user_cannot_hijack_a_reverse_connection() {
    let (c, alice, id) = pool("");
    let bob = TestUser::bob();
    let starter = nix::unistd::Pid::from_raw(c.starter_pid("node1").unwrap() as i32);
    // Hold the starter so the impostor surely comes first.
    nix::sys::signal::kill(starter, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let mut session = c
        .ssh_to_job_cmd(
            &alice,
            &["--mode", "reverse", &id.to_string(), "echo genuine"],
            None,
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The client's socket name is public: /proc/net/unix lists it.
    let dir = c.daemon_sock.to_string_lossy().into_owned();
    let name = wait_until("the client's reverse socket", T, || {
        fs::read_to_string("/proc/net/unix")
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(7))
            .find_map(|p| p.strip_prefix(&format!("{dir}/")).map(str::to_string))
    });
    wait_until("the schedd to expect the reverse connection", T, || {
        c.schedd_log()
            .contains("reverse connection requested")
            .then_some(())
    });
    // Bob dials the schedd's port and names that socket, with a guessed token.
    let addr = c.addr.clone().unwrap();
    let impostor = Command::new("python3")
        .args([
            "-c",
            "import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2]))); \
             n=sys.argv[3].encode(); s.sendall(b'STJR\\x02'+bytes([len(n)])+n+b'\\x00'*32); \
             s.settimeout(10); print(len(s.recv(100)))",
            addr.split(':').next().unwrap(),
            addr.split(':').nth(1).unwrap(),
            &name,
        ])
        .uid(bob.uid)
        .gid(bob.gid)
        .output()
        .unwrap();
    assert_eq!(
        stj_tests::ok(impostor).trim(),
        "0",
        "the impostor is not routed"
    );
    wait_until("the schedd to refuse the impostor", T, || {
        c.schedd_log().contains("wrong route token").then_some(())
    });
    nix::sys::signal::kill(starter, nix::sys::signal::Signal::SIGCONT).unwrap();
    // The genuine starter still reaches the client.
    let done = wait_until("the session to end", T, || session.try_wait().unwrap());
    let mut out = String::new();
    session
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    session
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(done.success(), "{err}");
    assert_eq!(out, "genuine\n");
}

#[test]
fn one_capability_buys_one_dial_back() {
    let (c, _alice, id) = pool("");
    let rt = rt();
    let grant = rt
        .block_on(attach::request(&c.socket, &id.into(), [7; 32]))
        .unwrap();
    let sid = Capability::decode(&grant.capability).unwrap().session_id;
    // Root asked for the session, so root's sockets are the session's own.
    let listeners: Vec<_> = (0..50)
        .map(|i| {
            std::os::unix::net::UnixListener::bind(c.daemon_sock.join(format!("amp-{i}"))).unwrap()
        })
        .collect();
    let answers: Vec<_> = (0..50)
        .map(|i| {
            rt.block_on(async {
                let mut cl = ssh_to_job::schedd_client::connect(&c.socket).await.unwrap();
                cl.connect_back(stj_proto::user::ConnectBackRequest {
                    session_id: sid.to_vec(),
                    route_name: format!("amp-{i}"),
                })
                .await
            })
        })
        .collect();
    assert!(answers[0].is_ok(), "{:?}", answers[0]);
    for a in &answers[1..] {
        let e = a.as_ref().unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        assert!(e.message().contains("already requested"), "{}", e.message());
    }
    wait_until("the one dial-back to be handed over", T, || {
        c.schedd_log()
            .contains("connection handed to the client")
            .then_some(())
    });
    assert_eq!(
        c.schedd_log()
            .matches("reverse connection requested")
            .count(),
        1
    );
    drop(listeners);
}

/// sshd runs in the job's mount namespace and reads what the job put there:
/// a container whose OpenSSL config loads a module of the job's gets that
/// code run inside the session's sshd. It must find nothing of the node
/// through sshd's handles: the session files and the kit reach sshd as
/// read-only copies whose roots are their own (`..` stays inside), and its
/// working directory is the container's. The module tries every handle and
/// writes what it saw; the node must be untouched.
#[test]
fn code_the_job_runs_inside_sshd_finds_no_way_to_the_node() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let bundle = c.workdir(&alice).join("bundle");
    let rootfs = bundle.join("rootfs");
    // Somewhere alice could write on the node, if she reached it.
    let escape = std::path::PathBuf::from(format!(
        "/var/tmp/stj-escaped-{}",
        c.path().file_name().unwrap().to_string_lossy()
    ));
    let src = c.path().join("evil.c");
    std::fs::write(
        &src,
        format!(
            r#"#include <stdio.h>
#include <sys/stat.h>
#include <errno.h>
#include <string.h>
__attribute__((constructor)) static void evil(void) {{
    FILE *r = fopen("/tmp/evil-report", "a");
    if (!r) return;
    const char *via[] = {{"/proc/self/fd/3", "/proc/self/fd/4", "/proc/self/cwd", "."}};
    for (int i = 0; i < 4; i++) {{
        char p[4096];
        snprintf(p, sizeof p, "%s/../../../../../../../../..%s", via[i], "{escape}");
        int rc = mkdir(p, 0777);
        fprintf(r, "%s mkdir=%d errno=%s\n", via[i], rc, rc ? strerror(errno) : "none");
    }}
    fclose(r);
}}
int OSSL_provider_init(void) {{ return 0; }}
"#,
            escape = escape.display()
        ),
    )
    .unwrap();
    stj_tests::rootfs::oci_bundle(
        &bundle,
        &alice,
        &["sh", "-c", "exec sleep 86471"],
        &[],
        "/tmp",
    );
    let so = rootfs.join("evil.so");
    let out = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(&src)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gcc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(rootfs.join("usr/lib/ssl")).unwrap();
    std::fs::write(
        rootfs.join("usr/lib/ssl/openssl.cnf"),
        "openssl_conf = init\n[init]\nproviders = prov\n[prov]\nevil = evil_sect\ndefault = def\n[evil_sect]\nmodule = /evil.so\nactivate = 1\n[def]\nactivate = 1\n",
    )
    .unwrap();
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    nix::unistd::chown(
        &rootfs.join("tmp"),
        Some(alice.uid.into()),
        Some(alice.gid.into()),
    )
    .unwrap();
    let id = c.submit(
        &alice,
        &[
            "--",
            "runc",
            "--root",
            "/tmp/runc-state",
            "run",
            "--bundle",
            bundle.to_str().unwrap(),
            "evil-ctr",
        ],
    );
    c.wait_state(id, "running", T);
    wait_until("the container's program", T, || {
        (!stj_tests::cluster::pids_matching("sleep 86471").is_empty()).then_some(())
    });
    // The session itself may or may not survive the module; what matters
    // is what the module could reach.
    let _ = c.ssh_to_job(&alice, &[&id.to_string(), "true"], None);
    let report = wait_until("the module to run in sshd", T, || {
        std::fs::read_to_string(rootfs.join("tmp/evil-report"))
            .ok()
            .filter(|r| r.lines().count() >= 4)
    });
    let escaped = escape.exists();
    std::fs::remove_dir(&escape).ok();
    assert!(!escaped, "sshd's handles led to the node: {report}");
    assert!(
        !report.contains("mkdir=0"),
        "nothing was made anywhere: {report}"
    );
}
