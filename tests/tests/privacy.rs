//! What other users can read of a job, and files that must be private or
//! must not depend on a name another user could take first.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use stj_tests::{bin, ok, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

#[test]
fn other_users_see_only_what_squeue_shows() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    let id = c.submit(
        &alice,
        &[
            "--env",
            "API_TOKEN=s3cr3t-env",
            "--",
            "sh",
            "-c",
            "sleep 86411 # s3cr3t-arg",
        ],
    );
    c.wait_state(id, "running", T);
    let jid = id.to_string();
    let wd = c.workdir(&bob);
    for args in [
        vec!["q"],
        vec!["q", "--json"],
        vec!["q", "--all", "--json"],
        vec!["q", "--json", jid.as_str()],
        vec!["wait", jid.as_str(), "--state", "running", "--timeout", "5"],
    ] {
        let out = c.stj(Some(&bob), &wd, &args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains("s3cr3t"),
            "bob's `stj {args:?}` shows alice's secrets: {text}"
        );
    }
    // What bob does see: the job, its owner, state, node and program name.
    let seen: serde_json::Value =
        serde_json::from_slice(&c.stj(Some(&bob), &wd, &["q", "--json", &jid]).stdout).unwrap();
    assert_eq!(seen[0]["owner"], "stjtest-alice");
    assert_eq!(seen[0]["state"], "running");
    assert_eq!(seen[0]["node"], "node1");
    assert_eq!(seen[0]["args"], serde_json::json!(["sh"]));
    assert_eq!(seen[0]["cwd"], "");

    // The owner and root see the whole spec.
    for who in [Some(&alice), None] {
        let out = c.stj(who, &c.workdir(&alice), &["q", "--json", &jid]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v[0]["env"]["API_TOKEN"], "s3cr3t-env");
        assert!(v[0]["args"][2].as_str().unwrap().contains("s3cr3t-arg"));
    }
}

#[test]
fn job_output_is_private_and_the_job_keeps_the_submitters_umask() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let wd = c.workdir(&alice);
    // Submitted under umask 027, as a user whose files are group-readable.
    let submit = format!(
        "umask 027; exec {} submit -- sh -c 'umask; touch made-by-job; echo printed'",
        bin("stj").display()
    );
    let out = Command::new("sh")
        .args(["-c", &submit])
        .current_dir(&wd)
        .env("STJ_SCHEDD_SOCKET", &c.socket)
        .uid(alice.uid)
        .gid(alice.gid)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let id: u64 = ok(out).trim().parse().unwrap();
    c.wait_state(id, "completed", T);
    let stdout = wd.join(format!("stj-{id}.out"));
    assert_eq!(fs::read_to_string(&stdout).unwrap(), "0027\nprinted\n");
    for f in [stdout, wd.join(format!("stj-{id}.err"))] {
        let m = fs::metadata(&f).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600, "{}", f.display());
        assert_eq!(m.uid(), alice.uid);
    }
    assert_eq!(
        fs::metadata(wd.join("made-by-job")).unwrap().mode() & 0o777,
        0o640
    );
}

#[test]
fn a_squatted_tmp_name_does_not_break_the_ssh_config_block() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    let id = c.submit(&alice, &["--", "sleep", "86412"]);
    c.wait_state(id, "running", T);
    // Bob takes the names an older release used in /tmp for alice.
    for name in [format!("/tmp/stj-hostkeys-{}", alice.uid)] {
        let _ = fs::remove_dir_all(&name);
        fs::create_dir(&name).unwrap();
        fs::set_permissions(&name, fs::Permissions::from_mode(0o777)).unwrap();
        nix::unistd::chown(name.as_str(), Some(bob.uid.into()), Some(bob.gid.into())).unwrap();
    }
    let as_alice = |cmd: &mut Command| {
        cmd.current_dir(c.workdir(&alice))
            .env("STJ_SCHEDD_SOCKET", &c.socket)
            .env("STJ_DAEMON_SOCK_DIR", &c.daemon_sock)
            .env("HOME", alice.home())
            .env_remove("XDG_RUNTIME_DIR")
            .uid(alice.uid)
            .gid(alice.gid)
            .stdin(Stdio::null());
    };
    let mut gen = Command::new(bin("ssh-to-job"));
    gen.arg("ssh-config");
    as_alice(&mut gen);
    let block = ok(gen.output().unwrap());
    let config = c.path().join("alice-ssh-config");
    fs::write(&config, block).unwrap();
    let mut ssh = Command::new("ssh");
    ssh.args(["-F"])
        .arg(&config)
        .args([&format!("stj-job-{id}"), "echo through-the-block"]);
    as_alice(&mut ssh);
    assert_eq!(ok(ssh.output().unwrap()), "through-the-block\n");
    let keys = alice.home().join(".cache/stj/hostkeys");
    let m = fs::metadata(&keys).unwrap();
    assert_eq!((m.uid(), m.mode() & 0o777), (alice.uid, 0o700));
    fs::remove_dir_all(format!("/tmp/stj-hostkeys-{}", alice.uid)).ok();
}
