//! Jobs in images without sshd or a passwd entry, slot users, nologin shells:
//! sessions work through the sshd kit and the getpw* shim.

use std::fs;
use std::time::Duration;

use stj_tests::{ok, rootfs, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

/// Sessions into a busybox image job: shell, status, pty, env, cwd, ps, and
/// file transfer into the image's filesystem.
fn exercise_image_job(
    c: &Cluster,
    user: &TestUser,
    root: &std::path::Path,
    id: u64,
    expect_uid: u32,
) {
    let jid = id.to_string();
    let out = ok(c.ssh_to_job(
        user,
        &[
            &jid,
            "cat /etc/image-marker; pwd; id -u; echo V=$IMG_VAR; ps -o comm",
        ],
        None,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0], "busybox image",
        "the session sees the image as /: {out}"
    );
    assert_eq!(lines[1], "/work", "{out}");
    assert_eq!(lines[2], expect_uid.to_string(), "{out}");
    assert_eq!(lines[3], "V=in image", "{out}");
    assert!(
        lines.contains(&"stj-init") && lines.contains(&"sleep"),
        "the job's processes: {out}"
    );
    assert!(
        !root.join("usr/sbin/sshd").exists(),
        "the image never got an sshd"
    );

    assert_eq!(
        c.ssh_to_job(user, &[&jid, "exit 5"], None).status.code(),
        Some(5)
    );
    let tty = ok(c.ssh_to_job(user, &["-t", &jid, "tty"], None));
    assert!(tty.trim().starts_with("/dev/pts/"), "{tty}");

    let wd = c.workdir(user);
    let src = wd.join("up.txt");
    fs::write(&src, "into the image\n").unwrap();
    nix::unistd::chown(&src, Some(user.uid.into()), Some(user.gid.into())).unwrap();
    let batch = wd.join("batch");
    fs::write(
        &batch,
        format!(
            "put {} /work/sftp.txt\nget /etc/image-marker {}\n",
            src.display(),
            wd.join("got.txt").display()
        ),
    )
    .unwrap();
    ok(c.ssh_to_job(
        user,
        &["--ssh", "sftp", &jid, "-b", batch.to_str().unwrap()],
        None,
    ));
    assert_eq!(
        fs::read_to_string(root.join("work/sftp.txt")).unwrap(),
        "into the image\n"
    );
    assert_eq!(
        fs::read_to_string(wd.join("got.txt")).unwrap(),
        "busybox image\n"
    );
    ok(c.ssh_to_job(
        user,
        &[
            "--ssh",
            "scp",
            &jid,
            "--",
            src.to_str().unwrap(),
            "remote:/work/scp.txt",
        ],
        None,
    ));
    assert_eq!(
        fs::read_to_string(root.join("work/scp.txt")).unwrap(),
        "into the image\n"
    );
}

fn submit_image_job(c: &Cluster, user: &TestUser, root: &std::path::Path) -> u64 {
    let id = c.submit(
        user,
        &[
            "--image",
            root.to_str().unwrap(),
            "--cwd",
            "/work",
            "--env",
            "IMG_VAR=in image",
            "--",
            "sleep",
            "86406",
        ],
    );
    c.wait_state(id, "running", T);
    id
}

#[test]
fn sessions_into_a_busybox_image_with_no_sshd_and_no_passwd() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let root = rootfs::busybox(&c.path().join("busybox"));
    let id = submit_image_job(&c, &alice, &root);
    exercise_image_job(&c, &alice, &root, id, alice.uid);
}

#[test]
fn slot_users_without_any_passwd_entry() {
    let (first, last) = (64100u32, 64109u32);
    for uid in first..=last {
        assert!(
            nix::unistd::User::from_uid(uid.into()).unwrap().is_none(),
            "uid {uid} must have no passwd entry"
        );
    }
    let mut c = Cluster::new();
    c.start_slot_user_starter("node1", 3, first, last);
    let alice = TestUser::alice();
    let root = rootfs::busybox(&c.path().join("busybox"));
    let id = submit_image_job(&c, &alice, &root);
    exercise_image_job(&c, &alice, &root, id, first);
    // The job's files belong to the slot uid, not to alice.
    let meta =
        std::os::unix::fs::MetadataExt::uid(&fs::metadata(root.join("work/scp.txt")).unwrap());
    assert_eq!(meta, first);

    // A slot-user job on the node's filesystem works as well; the same
    // owner's jobs share one slot uid (a lease), another owner gets another.
    for (user, uid, sleep) in [
        (&alice, first, "86407"),
        (&TestUser::bob(), first + 1, "86408"),
    ] {
        let wd = c.workdir(user);
        std::process::Command::new("chmod")
            .arg("1777")
            .arg(&wd)
            .status()
            .unwrap();
        let host_job = c.submit(user, &["--", "sleep", sleep]);
        c.wait_state(host_job, "running", T);
        let out = ok(c.ssh_to_job(user, &[&host_job.to_string(), "id -u; pwd"], None));
        assert_eq!(out, format!("{uid}\n{}\n", wd.display()));
    }
}

#[test]
fn a_user_whose_shell_is_nologin_still_gets_a_session() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let nolog = TestUser::get("stjtest-nolog");
    std::process::Command::new("usermod")
        .args(["-s", "/usr/sbin/nologin", &nolog.name])
        .status()
        .unwrap();
    assert!(nix::unistd::User::from_name(&nolog.name)
        .unwrap()
        .unwrap()
        .shell
        .ends_with("nologin"));
    let id = c.submit(&nolog, &["--", "sleep", "86408"]);
    c.wait_state(id, "running", T);
    let out = ok(c.ssh_to_job(&nolog, &[&id.to_string(), "echo works; id -un"], None));
    assert_eq!(out, format!("works\n{}\n", nolog.name));

    let root = rootfs::busybox(&c.path().join("busybox"));
    let id = submit_image_job(&c, &nolog, &root);
    exercise_image_job(&c, &nolog, &root, id, nolog.uid);
}

#[test]
fn a_node_without_sshd_says_so() {
    let mut c = Cluster::new();
    c.start_starter_with(
        "node1",
        1,
        &[
            "--session-listen",
            "127.0.0.1:0",
            "--sshd-path",
            "/nonexistent/sshd",
        ],
    );
    assert!(c
        .starter_log("node1")
        .contains("sshd not found at /nonexistent/sshd (install openssh-server or set sshd_path)"));
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "sleep", "86409"]);
    c.wait_state(id, "running", T);
    // Whatever path the connection takes, the node's own reason arrives
    // (through a reverse connection it used to be "did not call back").
    for mode in ["direct", "reverse", "relay"] {
        let out = c.ssh_to_job(&alice, &["--mode", mode, &id.to_string(), "true"], None);
        assert_eq!(out.status.code(), Some(255), "{mode}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("ssh-to-job is unavailable on node node1: sshd not found at /nonexistent/sshd (install openssh-server or set sshd_path)"),
            "{mode}: {err}"
        );
    }
}
