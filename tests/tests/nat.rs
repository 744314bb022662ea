//! Through NAT and firewalls: nodes accept no inbound connection, the submit
//! host admits only the schedd's port, and sessions still work by reverse
//! connection (shared port + daemon_sock dir) or through the relay.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use ssh_to_job::attach;
use stj_proto::preamble::{Preamble, Role};
use stj_tests::netns::SCHEDD_PORT;
use stj_tests::{ok, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

/// A NAT'd pool with a running job of alice's on node1, whose starter also
/// offers direct connections (which the NAT makes useless).
fn natted_job() -> (Cluster, TestUser, u64) {
    let mut c = Cluster::with_net();
    c.start_starter_with("node1", 4, &["--session-listen", "0.0.0.0:0"]);
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "sleep", "86410"]);
    c.wait_state(id, "running", T);
    (c, alice, id)
}

#[test]
fn nodes_are_unreachable_from_the_submit_host_and_sessions_still_work() {
    let (c, alice, id) = natted_job();
    let net = c.net.as_ref().unwrap();
    // Something listens on node1; the node itself reaches it, the submit host cannot.
    let node = net.nodes[0].clone();
    let port = net.within(&node, || {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::mem::forget(l);
        port
    });
    let target: SocketAddr = format!("{}:{port}", net.node_ip(0)).parse().unwrap();
    assert!(net.within(&node, move || TcpStream::connect_timeout(
        &target,
        Duration::from_secs(2)
    )
    .is_ok()));
    let dial = net.within(&net.submit.clone(), move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(2))
    });
    assert!(
        dial.is_err(),
        "a direct dial from the submit host into the NAT must fail"
    );

    let jid = id.to_string();
    // Reverse through the daemon_sock dir: shell, exit status, scp.
    assert_eq!(
        ok(c.ssh_to_job(
            &alice,
            &["--mode", "reverse", &jid, "echo reverse; id -u"],
            None
        )),
        format!("reverse\n{}\n", alice.uid)
    );
    assert_eq!(
        c.ssh_to_job(&alice, &["--mode", "reverse", &jid, "exit 9"], None)
            .status
            .code(),
        Some(9)
    );
    let wd = c.workdir(&alice);
    let src = wd.join("nat.txt");
    fs::write(&src, "through the NAT\n").unwrap();
    nix::unistd::chown(&src, Some(alice.uid.into()), Some(alice.gid.into())).unwrap();
    ok(c.ssh_to_job(
        &alice,
        &[
            "--mode",
            "reverse",
            "--ssh",
            "scp",
            &jid,
            "--",
            src.to_str().unwrap(),
            "remote:/tmp/nat.txt",
        ],
        None,
    ));
    assert_eq!(
        ok(c.ssh_to_job(&alice, &["--mode", "relay", &jid, "cat /tmp/nat.txt"], None)),
        "through the NAT\n"
    );

    // Auto: the advertised direct address is tried and fails, reverse works, quickly.
    let started = Instant::now();
    let out = c.ssh_to_job(&alice, &["--debug", &jid, "echo auto"], None);
    let took = started.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "auto\n", "{err}");
    assert!(
        err.contains("direct: failed") && err.contains("path=\"reverse\""),
        "--debug tells the story: {err}"
    );
    assert!(took < Duration::from_secs(5), "auto took {took:?}");
}

#[test]
fn without_the_daemon_sock_dir_reverse_says_what_to_do_and_auto_uses_the_relay() {
    let (mut c, alice, id) = natted_job();
    const WARNING: &str = "the daemon_sock dir is missing or not root's with mode 1733";
    assert!(!c.schedd_log().contains(WARNING), "{}", c.schedd_log());
    fs::remove_dir(&c.daemon_sock).unwrap();
    let jid = id.to_string();
    let out = c.ssh_to_job(&alice, &["--mode", "reverse", &jid, "true"], None);
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("create it with `stj-schedd init-daemon-sock` or set daemon_sock_dir"),
        "{err}"
    );

    let out = c.ssh_to_job(&alice, &[&jid, "echo relayed"], None);
    assert_eq!(ok(out.clone()), "relayed\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("using the relay instead").count(),
        1,
        "says so once: {err}"
    );

    // A schedd that starts without it says so, with the fix, in its log.
    c.kill_schedd();
    c.start_schedd();
    stj_tests::wait_until("the schedd's warning", T, || {
        c.schedd_log().contains(WARNING).then_some(())
    });
    assert!(c.schedd_log().contains("run `stj-schedd init-daemon-sock`"));
}

/// /run/lock is writable by everyone: after a reboot a user may make the
/// daemon_sock dir first, and then own every socket others make in it
/// (delete them, rename their own in). Neither the client nor the schedd
/// uses such a directory; auto mode takes the relay.
#[test]
fn a_daemon_sock_dir_a_user_made_is_used_by_neither_client_nor_schedd() {
    let (c, alice, id) = natted_job();
    nix::unistd::chown(&c.daemon_sock, Some(alice.uid.into()), None).unwrap();
    let jid = id.to_string();
    let out = c.ssh_to_job(&alice, &["--mode", "reverse", &jid, "true"], None);
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not root's with mode 1733"), "{err}");

    // A client told to use a good directory: the schedd still refuses its
    // own, rather than hand a connection through the user's.
    let good = c.path().join("good_daemon_sock");
    ok(std::process::Command::new(stj_tests::bin("stj-schedd"))
        .args(["init-daemon-sock", "--dir"])
        .arg(&good)
        .output()
        .unwrap());
    let out = c.ssh_to_job(
        &alice,
        &[
            "--mode",
            "reverse",
            "--daemon-sock-dir",
            &good.to_string_lossy(),
            &jid,
            "true",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("made by another user first?"), "{err}");

    let out = c.ssh_to_job(&alice, &[&jid, "echo relayed"], None);
    assert_eq!(ok(out), "relayed\n");
}

#[test]
fn a_third_party_with_the_relay_session_id_gets_nothing_and_disturbs_nothing() {
    let (c, _alice, id) = natted_job();
    let net = c.net.as_ref().unwrap();
    let rt = stj_tests::rt();
    // Root may open sessions into any job; the test plays both the real client and the intruder.
    let grant = rt
        .block_on(attach::request(&c.socket, &id.into(), [7; 32]))
        .unwrap();
    let sid = stj_proto::capability::Capability::decode(&grant.capability)
        .unwrap()
        .session_id;
    let broker: SocketAddr = format!("127.0.0.1:{SCHEDD_PORT}").parse().unwrap();
    for role in [Role::Client, Role::Starter] {
        let intruder = Preamble::Relay {
            role,
            session_id: sid,
            token: [0x42; 32],
        }
        .encode();
        let got = net.within(&net.submit.clone(), move || {
            let mut s = TcpStream::connect(broker).unwrap();
            s.write_all(&intruder).unwrap();
            s.write_all(b"\0\0\0\x02hi").unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            buf
        });
        assert!(
            got.is_empty(),
            "the intruder ({role:?}) was dropped without a byte: {got:?}"
        );
    }
    // The real client still gets its session through the relay.
    let g = grant.clone();
    let user = net.within(&net.submit.clone(), move || {
        let rt = stj_tests::rt();
        rt.block_on(async move {
            let mut s = tokio::net::TcpStream::connect(broker).await.unwrap();
            let token: [u8; 32] = g.relay_token.as_slice().try_into().unwrap();
            let p = Preamble::Relay {
                role: Role::Client,
                session_id: sid,
                token,
            }
            .encode();
            tokio::io::AsyncWriteExt::write_all(&mut s, &p)
                .await
                .unwrap();
            attach::handshake(&mut s, &g, None, Default::default())
                .await
                .map(|s| s.user)
        })
    });
    assert_eq!(
        user.expect("the real session survives the intruders"),
        "stjtest-alice"
    );
}

#[test]
fn routing_names_that_could_escape_or_impersonate_are_refused() {
    let (c, _alice, id) = natted_job();
    let bob = TestUser::bob();
    let rt = stj_tests::rt();
    let grant = rt
        .block_on(attach::request(&c.socket, &id.into(), [7; 32]))
        .unwrap();
    let sid = stj_proto::capability::Capability::decode(&grant.capability)
        .unwrap()
        .session_id;
    let d = &c.daemon_sock;
    // As root requested this session, root's sockets are the session's own.
    let _real = std::os::unix::net::UnixListener::bind(d.join("real")).unwrap();
    std::os::unix::fs::symlink(d.join("real"), d.join("planted")).unwrap();
    fs::write(d.join("plain-file"), "").unwrap();
    let _bobs = std::os::unix::net::UnixListener::bind(d.join("bobs")).unwrap();
    nix::unistd::chown(&d.join("bobs"), Some(bob.uid.into()), Some(bob.gid.into())).unwrap();
    let long = "x".repeat(65);
    for (name, why) in [
        ("../x", "routing name"),
        (long.as_str(), "routing name"),
        ("planted", "symlink"),
        ("plain-file", "not a socket"),
        ("bobs", "belongs to uid"),
    ] {
        let r = rt.block_on(async {
            let mut cl = ssh_to_job::schedd_client::connect(&c.socket).await.unwrap();
            cl.connect_back(stj_proto::user::ConnectBackRequest {
                session_id: sid.to_vec(),
                route_name: name.to_string(),
            })
            .await
        });
        let e = r.expect_err(name);
        assert!(e.message().contains(why), "{name}: {}", e.message());
    }
    // A routing preamble for a name nobody asked for is dropped too.
    let net = c.net.as_ref().unwrap();
    let broker: SocketAddr = format!("127.0.0.1:{SCHEDD_PORT}").parse().unwrap();
    let got = net.within(&net.submit.clone(), move || {
        let mut s = TcpStream::connect(broker).unwrap();
        s.write_all(
            &Preamble::Route {
                name: "real".into(),
                token: [0; 32],
            }
            .encode(),
        )
        .unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf
    });
    assert!(got.is_empty());
    let probe = _real.set_nonblocking(true).and_then(|_| _real.accept());
    assert!(probe.is_err(), "nothing was routed to the socket");
}

#[test]
fn twenty_relayed_sessions_at_once() {
    let (c, alice, id) = natted_job();
    let jid = id.to_string();
    let children: Vec<_> = (0..20)
        .map(|i| {
            c.ssh_to_job_cmd(
                &alice,
                &["--mode", "relay", &jid, &format!("echo session-{i}")],
                None,
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert_eq!(ok(out), format!("session-{i}\n"));
    }
}

/// A laptop that reaches only the login host's sshd: plain OpenSSH there,
/// with the block `ssh-to-job ssh-config --laptop` printed, reaches a job
/// on a NAT'd node, and checks its one-time host key through the user's
/// host CA — the laptop's key never leaves it, and the CA's never leaves
/// the login host.
#[test]
fn a_laptop_through_the_login_node_reaches_the_job_with_its_host_key_checked() {
    let mut c = Cluster::with_net();
    c.start_starter_with("node1", 1, &[]);
    let dave = TestUser::get("stjtest-dave");
    let id = c.submit(&dave, &["--", "sleep", "86460"]);
    c.wait_state(id, "running", T);
    let laptop = c.net.as_mut().unwrap().add_laptop();
    let submit = c.net.as_ref().unwrap().submit.clone();
    let dir = c.path().join("login");
    fs::create_dir_all(&dir).unwrap();
    let as_dave = |cmd: &mut std::process::Command| {
        std::os::unix::process::CommandExt::uid(cmd, dave.uid);
        std::os::unix::process::CommandExt::gid(cmd, dave.gid);
        cmd.env("HOME", dave.home())
            .env_remove("STJ_SCHEDD_SOCKET")
            .env_remove("STJ_DAEMON_SOCK_DIR")
            .env_remove("XDG_RUNTIME_DIR")
            .stdin(std::process::Stdio::null());
    };

    // The login host's sshd, on the submit host's laptop-side address.
    // (useradd's accounts are locked, `!`; sshd refuses those without PAM.)
    stj_tests::sh(&format!("usermod -p '*' {}", dave.name));
    stj_tests::sh(&format!(
        "mkdir -p /run/sshd && ssh-keygen -q -t ed25519 -N '' -f {d}/host_key",
        d = dir.display()
    ));
    let ssh_dir = dave.home().join(".ssh");
    fs::remove_dir_all(&ssh_dir).ok();
    fs::create_dir_all(&ssh_dir).unwrap();
    stj_tests::sh(&format!(
        "chown {u}:{g} {s} && chmod 700 {s}",
        u = dave.uid,
        g = dave.gid,
        s = ssh_dir.display()
    ));
    let mut keygen = std::process::Command::new("ssh-keygen");
    keygen.args(["-q", "-t", "ed25519", "-N", "", "-C", "daves-laptop", "-f"]);
    keygen.arg(ssh_dir.join("id_ed25519"));
    as_dave(&mut keygen);
    assert!(keygen.status().unwrap().success());
    let laptop_pub = fs::read_to_string(ssh_dir.join("id_ed25519.pub")).unwrap();
    fs::write(dir.join("authorized_keys"), &laptop_pub).unwrap();
    fs::write(
        dir.join("sshd_config"),
        format!(
            "ListenAddress {ip}:22\nHostKey {d}/host_key\nPidFile none\nUsePAM no\nStrictModes no\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nAuthorizedKeysFile {d}/authorized_keys\n\
             AllowUsers {user}\n",
            ip = stj_tests::netns::LOGIN_IP,
            d = dir.display(),
            user = dave.name
        ),
    )
    .unwrap();
    let mut sshd = c
        .command(Some(&submit), None, std::path::Path::new("/usr/sbin/sshd"))
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stderr(fs::File::create(dir.join("sshd.log")).unwrap())
        .spawn()
        .unwrap();
    let net = c.net.as_ref().unwrap();
    stj_tests::wait_until("the login sshd to listen", T, || {
        let addr: SocketAddr = format!("{}:22", stj_tests::netns::LOGIN_IP)
            .parse()
            .unwrap();
        net.within(&laptop, move || {
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
        })
        .map(|_| ())
    });
    // The laptop reaches nothing else: not the schedd's port.
    let schedd: SocketAddr = format!("{}:{SCHEDD_PORT}", stj_tests::netns::LOGIN_IP)
        .parse()
        .unwrap();
    assert!(net
        .within(&laptop, move || TcpStream::connect_timeout(
            &schedd,
            Duration::from_secs(1)
        ))
        .is_err());

    // On the login host: the block for the laptop, and the CA line.
    let on_login = |args: &[&str]| {
        let mut cmd = std::process::Command::new(stj_tests::bin("ssh-to-job"));
        cmd.args(args).arg("--socket").arg(&c.socket);
        as_dave(&mut cmd);
        ok(cmd.output().unwrap())
    };
    let block = on_login(&[
        "ssh-config",
        "--laptop",
        "login",
        "--client-key",
        laptop_pub.trim(),
    ]);
    let ca = on_login(&["ssh-config", "--ca"]);
    assert!(ca.starts_with("@cert-authority "), "{ca}");
    let login_key = fs::read_to_string(dir.join("host_key.pub")).unwrap();
    fs::write(ssh_dir.join("stj_known_hosts"), &ca).unwrap();
    fs::write(
        ssh_dir.join("login_known_hosts"),
        format!("{} {login_key}", stj_tests::netns::LOGIN_IP),
    )
    .unwrap();
    fs::write(
        ssh_dir.join("config"),
        format!(
            "{block}\nHost login\n    HostName {}\n    UserKnownHostsFile ~/.ssh/login_known_hosts\n    StrictHostKeyChecking yes\n    IdentityFile ~/.ssh/id_ed25519\n    IdentitiesOnly yes\n",
            stj_tests::netns::LOGIN_IP
        ),
    )
    .unwrap();
    stj_tests::sh(&format!(
        "chown -R {}:{} {}",
        dave.uid,
        dave.gid,
        ssh_dir.display()
    ));

    // On the laptop: plain ssh.
    let mut ssh = c.command(Some(&laptop), Some(&dave), std::path::Path::new("ssh"));
    // (c.command switches to dave after entering the namespace.)
    ssh.args([&format!("stj-job-{id}"), "echo laptop-in-$STJ_JOB_ID"])
        .env("HOME", dave.home())
        .env_remove("STJ_SCHEDD_SOCKET")
        .env_remove("STJ_DAEMON_SOCK_DIR")
        .stdin(std::process::Stdio::null());
    let out = ssh.output().unwrap();
    sshd.kill().ok();
    sshd.wait().ok();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("laptop-in-{id}\n"),
        "{} / sshd: {}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
    );
    // The session logged in with the laptop's own key: the capability was
    // for it (the proxy had no private key of the laptop's to use).
    assert!(c
        .audit(Some(&dave), id)
        .iter()
        .any(|r| r["outcome"] == "granted"));
}
