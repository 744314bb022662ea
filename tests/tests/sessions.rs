//! `ssh-to-job JOBID`: a real OpenSSH session inside the job's own container.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use stj_tests::{ok, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A pool with one starter and a long-running job of alice's.
fn running_job(env: &[&str]) -> (Cluster, TestUser, u64) {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let mut args: Vec<&str> = Vec::new();
    for e in env {
        args.extend(["--env", e]);
    }
    args.extend(["--", "sleep", "86401"]);
    let id = c.submit(&alice, &args);
    c.wait_state(id, "running", T);
    (c, alice, id)
}

#[test]
fn the_session_is_inside_the_job() {
    let (c, alice, id) = running_job(&["STJ_TEST_VAR=from submit"]);
    let jid = id.to_string();
    let out = ok(c.ssh_to_job(
        &alice,
        &[
            &jid,
            "ps -eo comm; ps -eo uid= | sed 's/^ */UID /'; echo \"VAR=$STJ_TEST_VAR\"; echo JOB=$STJ_JOB_ID; env | grep '^STJ_PASSWD' || echo no-internal-vars; pwd; id -u",
        ],
        None,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"sleep"),
        "same PID namespace: the job's own command is listed: {out}"
    );
    assert!(lines.contains(&"stj-init"), "{out}");
    // Nothing in the job runs as root: not its init, not the session's sshd.
    let uids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("UID "))
        .collect();
    assert!(
        !uids.is_empty() && uids.iter().all(|u| *u == alice.uid.to_string()),
        "{out}"
    );
    // The session's sshd shows under its own name, not as the kit's loader.
    assert!(lines.contains(&"sshd"), "{out}");
    assert!(!out.contains("ld-linux"), "{out}");
    assert!(
        !out.contains("stj-starter") && !out.contains("stj-schedd"),
        "no host processes: {out}"
    );
    assert!(lines.contains(&"VAR=from submit"), "{out}");
    assert!(
        lines.contains(&"no-internal-vars"),
        "the shim's variable is sshd's alone: {out}"
    );
    assert!(lines.contains(&format!("JOB={id}").as_str()), "{out}");
    assert!(
        lines.contains(&c.workdir(&alice).to_str().unwrap()),
        "starts in the job's cwd: {out}"
    );
    assert_eq!(lines.last().copied(), Some(alice.uid.to_string().as_str()));

    let o = c.ssh_to_job(&alice, &[&jid, "exit 7"], None);
    assert_eq!(o.status.code(), Some(7), "the remote command's exit status");
    assert_eq!(
        fs::read_dir(c.runtime_dir(&alice)).unwrap().count(),
        0,
        "key and runtime dir gone after normal exit"
    );
}

/// A session starts from the job's environment (its PATH, not sshd's
/// default), and `-A` forwards the user's agent into it.
#[test]
fn sessions_get_the_jobs_path_and_the_forwarded_agent() {
    let (c, alice, id) = running_job(&[]);
    let jid = id.to_string();
    let out = ok(c.ssh_to_job(
        &alice,
        &[
            &jid,
            "echo \"SESSION $PATH\"; tr '\\0' '\\n' < /proc/$(pgrep -x sleep)/environ | sed -n 's/^PATH=/JOB /p'",
        ],
        None,
    ));
    let path_of = |who: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(who))
            .unwrap_or_else(|| panic!("no {who} line: {out}"))
            .to_string()
    };
    assert_eq!(path_of("SESSION "), path_of("JOB "), "{out}");

    // Alice's agent, holding a key of hers, reachable only through -A.
    let dir = c.workdir(&alice);
    let sock = dir.join("agent.sock");
    let mut agent = c
        .command(None, Some(&alice), Path::new("ssh-agent"))
        .arg("-D")
        .arg("-a")
        .arg(&sock)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the agent's socket", T, || sock.exists().then_some(()));
    let key = dir.join("agent_key");
    let made = c
        .command(None, Some(&alice), Path::new("ssh-keygen"))
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "alice-agent-key",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let added = c
        .command(None, Some(&alice), Path::new("ssh-add"))
        .arg(&key)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let listed = c
        .ssh_to_job_cmd(&alice, &["-A", &jid, "ssh-add -l"], None)
        .env("SSH_AUTH_SOCK", &sock)
        .output()
        .unwrap();
    agent.kill().ok();
    agent.wait().ok();
    assert!(
        text(&listed).contains("alice-agent-key"),
        "the forwarded agent lists alice's key: {} / {}",
        text(&listed),
        String::from_utf8_lossy(&listed.stderr)
    );
}

/// `ssh-to-job -X`: a program in the job draws on the user's own X server
/// (a virtual one here), through sshd's forwarding and xauth.
#[test]
fn x11_forwarding_reaches_the_users_x_server() {
    let (c, alice, id) = running_job(&[]);
    // A display number of this test process's own.
    let display = format!(":{}", 100 + std::process::id() % 800);
    let dir = c.workdir(&alice);
    let auth = dir.join("Xauthority");
    let mut xvfb = c
        .command(None, None, Path::new("Xvfb"))
        .args([display.as_str(), "-nolisten", "tcp", "-ac"])
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(c.path().join("xvfb.log")).unwrap())
        .spawn()
        .unwrap();
    let socket = format!("/tmp/.X11-unix/X{}", &display[1..]);
    wait_until("the X server", T, || {
        Path::new(&socket).exists().then_some(())
    });
    let out = c
        .ssh_to_job_cmd(
            &alice,
            &[
                "-X",
                &id.to_string(),
                "xdpyinfo | grep -m1 'name of display'; echo \"DISPLAY=$DISPLAY\"",
            ],
            None,
        )
        .env("DISPLAY", &display)
        .env("XAUTHORITY", &auth)
        .output()
        .unwrap();
    xvfb.kill().ok();
    xvfb.wait().ok();
    let text = text(&out);
    assert!(
        text.contains("name of display:") && text.contains("DISPLAY=localhost:"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bulk_data_and_ptys() {
    let (c, alice, id) = running_job(&[]);
    let jid = id.to_string();
    let data = c.path().join("ten-mib");
    let mut f = fs::File::create(&data).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..10 {
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        f.write_all(&buf).unwrap();
    }
    drop(f);
    fs::set_permissions(&data, fs::Permissions::from_mode(0o644)).unwrap();
    let local = std::process::Command::new("sha256sum")
        .arg(&data)
        .output()
        .unwrap();
    let want = text(&local).split_whitespace().next().unwrap().to_string();
    for copy in [false, true] {
        let mut args = vec![];
        if copy {
            args.push("--copy");
        }
        args.extend([jid.as_str(), "sha256sum"]);
        let got = ok(c.ssh_to_job(&alice, &args, Some(&data)));
        assert_eq!(
            got.split_whitespace().next(),
            Some(want.as_str()),
            "copy={copy}"
        );
    }
    let tty = ok(c.ssh_to_job(&alice, &["-t", &jid, "tty"], None));
    assert!(tty.trim().starts_with("/dev/pts/"), "{tty}");
}

#[test]
fn scp_sftp_and_rsync_land_in_the_jobs_filesystem_view() {
    let (c, alice, id) = running_job(&[]);
    let jid = id.to_string();
    let wd = c.workdir(&alice);
    let src = wd.join("local.txt");
    fs::write(&src, "payload\n").unwrap();
    nix::unistd::chown(&src, Some(alice.uid.into()), Some(alice.gid.into())).unwrap();

    // The job's /tmp is private: a file scp'd there exists for the job only.
    ok(c.ssh_to_job(
        &alice,
        &[
            "--ssh",
            "scp",
            &jid,
            "--",
            src.to_str().unwrap(),
            "remote:/tmp/up.txt",
        ],
        None,
    ));
    assert!(
        !std::path::Path::new("/tmp/up.txt").exists(),
        "not on the host's /tmp"
    );
    assert_eq!(
        ok(c.ssh_to_job(&alice, &[&jid, "cat /tmp/up.txt"], None)),
        "payload\n"
    );
    let back = wd.join("back.txt");
    ok(c.ssh_to_job(
        &alice,
        &[
            "--ssh",
            "scp",
            &jid,
            "--",
            "remote:/tmp/up.txt",
            back.to_str().unwrap(),
        ],
        None,
    ));
    assert_eq!(fs::read_to_string(&back).unwrap(), "payload\n");

    let batch = wd.join("batch");
    fs::write(
        &batch,
        format!("put {} /tmp/sftp.txt\nls /tmp\n", src.display()),
    )
    .unwrap();
    let listing = ok(c.ssh_to_job(
        &alice,
        &["--ssh", "sftp", &jid, "-b", batch.to_str().unwrap()],
        None,
    ));
    assert!(listing.contains("sftp.txt"), "{listing}");
    assert_eq!(
        ok(c.ssh_to_job(&alice, &[&jid, "cat /tmp/sftp.txt"], None)),
        "payload\n"
    );

    let tree = wd.join("tree");
    fs::create_dir_all(tree.join("sub")).unwrap();
    fs::write(tree.join("sub/a"), "A").unwrap();
    fs::write(tree.join("b"), "B").unwrap();
    std::process::Command::new("chown")
        .args(["-R", &format!("{}:{}", alice.uid, alice.gid)])
        .arg(&tree)
        .status()
        .unwrap();
    let rsh = format!("{} --rsh", stj_tests::bin("ssh-to-job").display());
    let mut r = std::process::Command::new("rsync");
    r.args(["-a", "-e", &rsh, "tree/", &format!("{id}:/tmp/synced/")])
        .current_dir(&wd)
        .env("STJ_SCHEDD_SOCKET", &c.socket)
        .env("HOME", alice.home())
        .env("XDG_RUNTIME_DIR", c.runtime_dir(&alice))
        .uid(alice.uid)
        .gid(alice.gid);
    ok(r.output().unwrap());
    assert_eq!(
        ok(c.ssh_to_job(&alice, &[&jid, "cat /tmp/synced/sub/a /tmp/synced/b"], None)),
        "AB"
    );
}

#[test]
fn removing_the_job_ends_an_open_session_and_nothing_is_left_behind() {
    let (c, alice, id) = running_job(&[]);
    let jid = id.to_string();
    let rt = c.runtime_dir(&alice);
    let mut session = c
        .ssh_to_job_cmd(&alice, &[&jid, "echo started; sleep 86402"], None)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While the session is open its private dir holds the key, 0600 in 0700.
    let dir = wait_until("the runtime dir", T, || {
        fs::read_dir(&rt)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("id_ed25519").exists())
    });
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::metadata(dir.join("id_ed25519"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    wait_until("the remote command to run", T, || {
        (!stj_tests::cluster::pids_matching("sleep 86402").is_empty()).then_some(())
    });

    assert!(c
        .stj(Some(&alice), c.path(), &["rm", &jid])
        .status
        .success());
    let status = wait_until("the session to end with the job", T, || {
        session.try_wait().unwrap()
    });
    assert!(!status.success());
    // The last word is why, not only OpenSSH's "connection closed".
    assert_eq!(
        last_line(&mut session),
        format!(
            "ssh-to-job: the session ended: job {id} was removed (removed by uid {})",
            alice.uid
        )
    );
    assert_eq!(
        fs::read_dir(&rt).unwrap().count(),
        0,
        "runtime dir removed after the session"
    );
}

/// The last line an ended child wrote to its (piped) stderr.
fn last_line(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    err.lines().last().unwrap_or_default().to_string()
}

#[test]
fn a_session_whose_starter_dies_says_so_when_it_ends() {
    let (mut c, alice, id) = running_job(&[]);
    let mut session = c
        .ssh_to_job_cmd(
            &alice,
            &[&id.to_string(), "echo started; sleep 86403"],
            None,
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the remote command to run", T, || {
        (!stj_tests::cluster::pids_matching("sleep 86403").is_empty()).then_some(())
    });
    c.kill_starter("node1");
    let status = wait_until("the session to end with its node", T, || {
        session.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(255));
    assert_eq!(
        last_line(&mut session),
        format!("ssh-to-job: the session ended: node node1 that runs job {id} is no longer connected to the schedd (its starter stopped, or the network to it is cut)")
    );
}

#[test]
fn sigterm_to_the_client_removes_its_key() {
    let (c, alice, id) = running_job(&[]);
    let jid = id.to_string();
    let rt = c.runtime_dir(&alice);
    let mut session = c
        .ssh_to_job_cmd(&alice, &[&jid, "sleep 86403"], None)
        .spawn()
        .unwrap();
    wait_until("the remote command to run", T, || {
        (!stj_tests::cluster::pids_matching("sleep 86403").is_empty()).then_some(())
    });
    assert_eq!(fs::read_dir(&rt).unwrap().count(), 1);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(session.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_until("ssh-to-job to exit", T, || session.try_wait().unwrap());
    assert_eq!(status.code(), Some(128 + 15));
    assert_eq!(
        fs::read_dir(&rt).unwrap().count(),
        0,
        "key and runtime dir removed on SIGTERM"
    );
}

#[test]
fn a_users_ssh_config_cannot_break_the_session() {
    let (c, alice, id) = running_job(&[]);
    let jid = id.to_string();
    let ssh_dir = alice.home().join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    let cfg = ssh_dir.join("config");
    fs::write(&cfg, "Host *\n  IdentityFile ~/.ssh/does-not-exist\n  User nobody\n  Port 2222\n  ControlMaster auto\n  ControlPath ~/.ssh/cm-%r@%h:%p\n  ControlPersist yes\n").unwrap();
    std::process::Command::new("chown")
        .args(["-R", &format!("{}:{}", alice.uid, alice.gid)])
        .arg(&ssh_dir)
        .status()
        .unwrap();
    let guard = RemoveOnDrop(cfg);
    assert_eq!(
        ok(c.ssh_to_job(&alice, &[&jid, "id -u"], None)).trim(),
        alice.uid.to_string()
    );
    // Even when asked to read it, User and ControlMaster stay ours.
    assert_eq!(
        ok(c.ssh_to_job(&alice, &["--ssh-config", &jid, "id -u"], None)).trim(),
        alice.uid.to_string()
    );
    drop(guard);
}

struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        fs::remove_file(&self.0).ok();
    }
}

/// A job that runs its program in a container of its own (a rootless
/// `unshare`): sessions land inside that container — its processes, its
/// private mounts, its program's working directory — and `--outer` lands
/// beside it, in the job's own. The container's mount namespace is the
/// job's to shape, so a set-id program there gains nothing: the job below
/// binds a PAM config that lets anyone `su` over the node's, and the session
/// still cannot become root.
#[test]
fn sessions_land_in_the_container_the_jobs_program_runs_in() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let id = c.submit(
        &alice,
        &[
            "--",
            "env",
            "INNER_ONLY=from-the-inner-program",
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "sh",
            "-c",
            "mount -t tmpfs -o mode=0700 inner /mnt && echo from-the-inner-container > /mnt/marker \
             && mkdir /mnt/pam && cp -r /etc/pam.d/. /mnt/pam/ \
             && printf 'auth sufficient pam_permit.so\\naccount sufficient pam_permit.so\\nsession optional pam_permit.so\\n' > /mnt/pam/su \
             && mount --bind /mnt/pam /etc/pam.d && cd /mnt && exec sleep 86480",
        ],
    );
    c.wait_state(id, "running", T);
    wait_until("the inner container's program", T, || {
        (!stj_tests::cluster::pids_matching("sleep 86480").is_empty()).then_some(())
    });
    let jid = id.to_string();
    let script = "echo \"PID1=$(cat /proc/1/comm)\"; cat /mnt/marker; pwd; echo made > /mnt/by-session; grep NoNewPrivs /proc/self/status; echo SU=$(su -c 'id -u' root </dev/null 2>/dev/null); echo ENV=$INNER_ONLY; id -u";
    let out = ok(c.ssh_to_job(&alice, &[&jid, script], None));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"PID1=sleep"),
        "the inner PID namespace: {out}"
    );
    assert!(
        lines.contains(&"from-the-inner-container"),
        "its private mount: {out}"
    );
    assert!(
        lines.contains(&"/mnt"),
        "its program's working directory: {out}"
    );
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{out}");
    assert!(lines.contains(&"SU="), "su gained nothing: {out}");
    assert!(
        lines.contains(&"ENV=from-the-inner-program"),
        "the inner program's environment, not the job's: {out}"
    );
    assert_eq!(
        lines.last().copied(),
        Some(alice.uid.to_string().as_str()),
        "{out}"
    );
    // The file the session wrote is in the container's mount, seen by its program.
    let sleep = stj_tests::cluster::pids_matching("sleep 86480")[0];
    let written = std::fs::read_to_string(format!("/proc/{sleep}/root/mnt/by-session")).unwrap();
    assert_eq!(written, "made\n");

    let out = ok(c.ssh_to_job(
        &alice,
        &[
            "--outer",
            &jid,
            "echo \"PID1=$(cat /proc/1/comm)\"; ls /mnt/marker 2>&1 || true",
        ],
        None,
    ));
    assert!(
        out.contains("PID1=stj-init"),
        "--outer: the job's own container: {out}"
    );
    assert!(
        !out.contains("\n/mnt/marker\n"),
        "not the inner mount: {out}"
    );
}

/// A job that runs its program in a rootless runc container (a busybox
/// bundle: runc pivots into a root of its own, where neither the node's
/// paths nor /.stj exist): the session is inside that container — its
/// pids, its root, its environment and working directory — with sshd run
/// from the kit the container cannot see, and its files are the owner's.
#[test]
fn sessions_land_in_a_runc_container_the_job_started() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let bundle = stj_tests::rootfs::oci_bundle(
        &c.workdir(&alice).join("bundle"),
        &alice,
        &[
            "sh",
            "-c",
            "echo from-the-runc-container > /tmp/marker && exec sleep 86470",
        ],
        &["CONTAINER_VAR=set-by-runc"],
        "/tmp",
    );
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
            "stj-test-ctr",
        ],
    );
    c.wait_state(id, "running", T);
    wait_until("the runc container's program", T, || {
        (!stj_tests::cluster::pids_matching("sleep 86470").is_empty()).then_some(())
    });
    let jid = id.to_string();
    let out = ok(c.ssh_to_job(
        &alice,
        &[
            &jid,
            "echo PID1=$(cat /proc/1/comm); echo PS=$(ps -o comm | tr '\\n' ' '); cat /tmp/marker; pwd; echo ENV=$CONTAINER_VAR; echo made > /tmp/by-session; ls /.stj 2>&1 | head -1; grep NoNewPrivs /proc/self/status; id -u",
        ],
        None,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"PID1=sleep"),
        "the container's PID namespace: {out}"
    );
    // ps lists the sleep, the session's sshd, shell and ps — nothing of
    // the job outside the container (no stj-init, no runc).
    let ps = lines.iter().find(|l| l.starts_with("PS=")).unwrap();
    assert!(
        ps.contains("sleep") && !ps.contains("stj-init") && !ps.contains("runc"),
        "{out}"
    );
    assert!(
        lines.contains(&"from-the-runc-container"),
        "the container's root: {out}"
    );
    assert!(
        lines.contains(&"/tmp"),
        "its program's working directory: {out}"
    );
    assert!(
        lines.contains(&"ENV=set-by-runc"),
        "its program's environment: {out}"
    );
    assert!(
        out.contains("No such file or directory"),
        "the kit is not in the container's view: {out}"
    );
    assert!(lines.contains(&"NoNewPrivs:\t1"), "{out}");
    assert_eq!(
        lines.last().copied(),
        Some(alice.uid.to_string().as_str()),
        "{out}"
    );
    // Written inside the container's root, which is the bundle's rootfs on
    // the node: there, and the owner's.
    let written = bundle.join("rootfs/tmp/by-session");
    assert_eq!(fs::read_to_string(&written).unwrap(), "made\n");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(&written).unwrap()),
        alice.uid
    );

    let out = ok(c.ssh_to_job(
        &alice,
        &["--outer", &jid, "echo PID1=$(cat /proc/1/comm)"],
        None,
    ));
    assert!(
        out.contains("PID1=stj-init"),
        "--outer: the job's own container: {out}"
    );
}
