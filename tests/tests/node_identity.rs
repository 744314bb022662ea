//! A node's identity, attacked: the join token only enrols, each node has
//! a key of its own pinned to its name, and neither a stolen token nor a
//! compromised node takes over another node's name or jobs.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stj_tests::{bin, ok, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

#[test]
fn tokens_are_written_private_and_readable_ones_are_refused() {
    let c = Cluster::new();
    let out_file = c.path().join("token-out");
    c.mint_token(&["node7"], &out_file, &[]);
    assert_eq!(fs::metadata(&out_file).unwrap().mode() & 0o777, 0o600);

    // `stj-schedd token NODE > FILE` under the usual umask: the shell
    // creates FILE 0644; the token is written only once it is 0600.
    let redirected = c.path().join("token-redirected");
    let sh = format!(
        "umask 022; {} token node7 --state-dir {} > {}",
        bin("stj-schedd").display(),
        c.state_dir.display(),
        redirected.display()
    );
    ok(Command::new("sh").args(["-c", &sh]).output().unwrap());
    assert_eq!(fs::metadata(&redirected).unwrap().mode() & 0o777, 0o600);
    assert!(fs::read_to_string(&redirected)
        .unwrap()
        .starts_with("stj2."));

    // A token others could read is refused before it is used.
    fs::set_permissions(&out_file, fs::Permissions::from_mode(0o644)).unwrap();
    let log = c.starter_refused("node7", c.spawn_starter("node7", 1, &out_file, &[]));
    assert!(
        log.contains("can be read by others")
            && log.contains("chmod 600")
            && log.contains("token-out"),
        "{log}"
    );
    assert!(
        !c.schedd_log().contains("node7"),
        "it never reached the schedd"
    );
}

#[test]
fn an_impostor_cannot_take_over_an_enrolled_node_or_its_job() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "sleep", "86409"]);
    c.wait_state(id, "running", T);

    // Another machine with the same token (it enrols any name) claims node1.
    let elsewhere = c.path().join("impostor-work");
    let imp = c.spawn_starter_in("node1", "node1-impostor", &elsewhere, 1, &c.token_file, &[]);
    let log = c.starter_refused("node1-impostor", imp);
    assert!(
        log.contains("enrolled with another key") && log.contains("stj-schedd forget-node node1"),
        "{log}"
    );
    // node1 kept its registration and its job: nothing was lost or requeued.
    assert_eq!(c.schedd_log().matches("starter registered").count(), 1);
    let job = c.job(id);
    assert_eq!(
        (job["state"].as_str(), job["node"].as_str()),
        (Some("running"), Some("node1"))
    );
    let out = c.ssh_to_job(&alice, &[&id.to_string(), "echo still-mine"], None);
    assert_eq!(ok(out), "still-mine\n");
}

#[test]
fn a_token_enrols_only_its_names_and_each_once() {
    let mut c = Cluster::new();
    let token = c.path().join("token-node2");
    c.mint_token(&["node2"], &token, &[]);

    let log = c.starter_refused("node3", c.spawn_starter("node3", 1, &token, &[]));
    assert!(
        log.contains("does not enrol node name node3") && log.contains("stj-schedd token node3"),
        "{log}"
    );
    c.start_starter_with_token("node2", 1, &token, &[]);
    assert!(c.schedd_log().contains("node enrolled"));

    // The same token again, from another machine: node2 is taken.
    let other = c.path().join("second-node2");
    let log = c.starter_refused(
        "node2-again",
        c.spawn_starter_in("node2", "node2-again", &other, 1, &token, &[]),
    );
    assert!(log.contains("enrolled with another key"), "{log}");
}

#[test]
fn an_expired_token_enrols_nothing() {
    let c = Cluster::new();
    let token = c.path().join("token-short");
    c.mint_token(&["node4"], &token, &["--ttl", "1s"]);
    let minted = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    wait_until("the token to expire", T, || {
        (SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            > minted + 1)
            .then_some(())
    });
    let log = c.starter_refused("node4", c.spawn_starter("node4", 1, &token, &[]));
    assert!(log.contains("join token expired"), "{log}");
}

#[test]
fn an_enrolled_node_needs_no_token_and_a_forgotten_one_enrols_again() {
    let mut c = Cluster::new();
    let token = c.path().join("token-node5");
    c.mint_token(&["node5"], &token, &[]);
    c.start_starter_with_token("node5", 1, &token, &[]);
    c.kill_starter("node5");

    // Restarted with its token gone: its own key is its identity now.
    fs::remove_file(&token).unwrap();
    c.start_starter_with_token("node5", 1, &token, &[]);
    c.wait_registrations("node5", 2, T);
    c.kill_starter("node5");

    // Reinstalled (a fresh key): refused until the admin forgets the old one.
    c.mint_token(&["node5"], &token, &[]);
    let fresh = c.path().join("node5-reinstalled");
    let log = c.starter_refused(
        "node5-new",
        c.spawn_starter_in("node5", "node5-new", &fresh, 1, &token, &[]),
    );
    assert!(log.contains("stj-schedd forget-node node5"), "{log}");
    ok(Command::new(bin("stj-schedd"))
        .args(["forget-node", "node5", "--state-dir"])
        .arg(&c.state_dir)
        .output()
        .unwrap());
    let mut child = c.spawn_starter_in("node5", "node5-new", &fresh, 1, &token, &[]);
    wait_until("the reinstalled node to register", T, || {
        c.starter_log("node5-new")
            .contains("registered with the schedd")
            .then_some(())
    });
    child.kill().ok();
    child.wait().ok();
    let listed = ok(Command::new(bin("stj-schedd"))
        .args(["enrolled", "--state-dir"])
        .arg(&c.state_dir)
        .output()
        .unwrap());
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("node5 ")).count(),
        1,
        "{listed}"
    );
}

#[test]
fn a_local_user_with_a_user_namespace_cannot_register_a_fake_node() {
    let mut c = Cluster::new();
    let token = c.path().join("token-node6");
    c.mint_token(&["node6"], &token, &[]);
    c.start_starter_with_token("node6", 1, &token, &[]);
    let bob = TestUser::bob();
    let bob_dir = c.path().join("bob-node");
    fs::create_dir_all(&bob_dir).unwrap();
    nix::unistd::chown(&bob_dir, Some(bob.uid.into()), Some(bob.gid.into())).unwrap();
    let fake = |token: &std::path::Path, name: &str, work: &str| {
        // "root" inside an unprivileged user namespace.
        Command::new("unshare")
            .args(["--user", "--map-root-user", "--"])
            .arg(bin("stj-starter"))
            .args(["--schedd", c.addr.as_deref().unwrap(), "--name", name])
            .arg("--token-file")
            .arg(token)
            .arg("--work-dir")
            .arg(bob_dir.join(work))
            .uid(bob.uid)
            .gid(bob.gid)
            .output()
            .unwrap()
    };
    // The token file is root's, 0600: bob cannot read it.
    let out = fake(&token, "fake", "a");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token-node6") && err.contains("Permission denied"),
        "{err}"
    );

    // Even a copy of it (leaked earlier) enrols nothing: its one name is taken.
    let copy = bob_dir.join("stolen-token");
    fs::copy(&token, &copy).unwrap();
    nix::unistd::chown(&copy, Some(bob.uid.into()), Some(bob.gid.into())).unwrap();
    for (name, why) in [
        ("node6", "enrolled with another key"),
        ("fake", "does not enrol node name fake"),
    ] {
        let out = fake(&copy, name, name);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{name}: {err}");
    }
    assert_eq!(c.schedd_log().matches("starter registered").count(), 1);
}
