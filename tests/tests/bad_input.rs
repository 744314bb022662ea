//! Bad input gets a clear error, a non-zero exit, and changes nothing.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use stj_tests::{bin, Cluster, TestUser};

/// Writes a token file as an admin would: 0600.
fn write_token(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn starter_refuses_a_wrong_join_secret_and_exits() {
    let c = Cluster::new();
    let good = fs::read_to_string(&c.token_file).unwrap();
    let (head, secret) = good.trim().rsplit_once('.').unwrap();
    let flipped: String = secret
        .chars()
        .enumerate()
        .map(|(i, ch)| {
            if i == 0 {
                if ch == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                ch
            }
        })
        .collect();
    let bad = c.path().join("bad-secret");
    write_token(&bad, &format!("{head}.{flipped}\n"));
    let log = c.starter_refused("intruder", c.spawn_starter("intruder", 1, &bad, &[]));
    assert!(
        log.contains("join token is not known here") && log.contains("stj-schedd token intruder"),
        "{log}"
    );
    assert!(!log.contains(secret), "the secret never reaches a log");
}

#[test]
fn starter_refuses_a_schedd_whose_ca_does_not_match_the_pin() {
    let c = Cluster::new();
    let good = fs::read_to_string(&c.token_file).unwrap();
    let parts: Vec<&str> = good.trim().split('.').collect();
    let bad = c.path().join("bad-pin");
    write_token(
        &bad,
        &format!("{}.{}.{}\n", parts[0], "ab".repeat(32), parts[2]),
    );
    let log = c.starter_refused("misled", c.spawn_starter("misled", 1, &bad, &[]));
    assert!(
        log.contains("but this node pins") && log.contains("stj-schedd token"),
        "{log}"
    );
    assert!(
        !c.schedd_log().contains("starter registered"),
        "it never registered"
    );
}

#[test]
fn malformed_token_and_config_are_named() {
    let c = Cluster::new();
    let bad = c.path().join("garbage-token");
    write_token(&bad, "hello");
    let log = c.starter_refused("x", c.spawn_starter("x", 1, &bad, &[]));
    assert!(
        log.contains("garbage-token") && log.contains("stj2."),
        "{log}"
    );

    // A misspelled knob, a misspelled section (ignored, the schedd would
    // listen on 0.0.0.0:9618 with defaults), and a schedd knob appended
    // under [starter] (ignored, sessions would stay on): errors naming file
    // and typo.
    let cfg = c.path().join("broken.toml");
    for (text, typo) in [
        ("[schedd]\nlisen = \"0.0.0.0:1\"\n", "lisen"),
        ("[shcedd]\nlisten = \"127.0.0.1:1\"\n", "shcedd"),
        (
            "[schedd]\n[starter]\nenable_ssh_to_job = false\n",
            "enable_ssh_to_job` in [starter] (it is a [schedd] knob",
        ),
    ] {
        fs::write(&cfg, text).unwrap();
        let out = Command::new(bin("stj-schedd"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("broken.toml") && err.contains(typo), "{err}");
    }

    // A starter work dir under /tmp would be invisible inside jobs (each
    // has a private /tmp): refused at start-up, naming the knob.
    let out = Command::new(bin("stj-starter"))
        .args(["--work-dir", "/tmp/stj-node", "--token-file"])
        .arg(&c.token_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/tmp/stj-node") && err.contains("--work-dir"),
        "{err}"
    );
    assert!(
        !std::path::Path::new("/tmp/stj-node").exists(),
        "nothing made"
    );
}

#[test]
fn a_starter_that_cannot_write_its_work_dir_refuses_to_start() {
    let c = Cluster::new();
    let work = c.path().join("ro-work");
    fs::create_dir_all(&work).unwrap();
    let ro = stj_tests::read_only(&work);
    let child = c.spawn_starter_in("nodero", "nodero", &work, 1, &c.token_file, &[]);
    let log = c.starter_refused("nodero", child);
    drop(ro);
    assert!(
        log.contains(&format!("the work dir {} is not writable", work.display()))
            && log.contains("--work-dir"),
        "{log}"
    );
    assert!(
        !c.schedd_log().contains("starter registered"),
        "it never registered"
    );
}

#[test]
fn a_first_start_on_a_full_disk_names_the_file() {
    let dir = tempfile::Builder::new()
        .prefix("full-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let full = dir.path();
    stj_tests::sh(&format!(
        "mount -t tmpfs -o size=12k tmpfs {0} && dd if=/dev/zero of={0}/fill bs=1k count=9 2>/dev/null",
        full.display()
    ));
    let out = Command::new(bin("stj-schedd"))
        .arg("--state-dir")
        .arg(full.join("state"))
        .arg("--socket")
        .arg(full.join("s.sock"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    stj_tests::sh(&format!("umount {}", full.display()));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot write {}/state/", full.display()))
            && err.contains("the filesystem is full")
            && err.matches("No space left on device").count() == 1,
        "{err}"
    );
}

#[test]
fn client_errors_are_clear() {
    let c = Cluster::new();
    let alice = TestUser::alice();
    let wd = c.workdir(&alice);

    let out = c.stj(
        Some(&alice),
        &wd,
        &["submit", "--image", "/no/such/dir", "--", "true"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"));

    let out = c.stj(None, &wd, &["submit", "--", "true"]);
    assert!(!out.status.success(), "root cannot submit jobs");
    assert!(String::from_utf8_lossy(&out.stderr).contains("never run as root"));

    let out = Command::new(bin("stj"))
        .args(["q"])
        .env("STJ_SCHEDD_SOCKET", c.path().join("nothing-here.sock"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is stj-schedd running"));

    let out = c.stj(Some(&alice), &wd, &["wait", "424242", "--state", "running"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job 424242"));

    // Nothing was queued by any of it.
    let q = c.stj(None, &wd, &["q", "--json"]);
    assert_eq!(String::from_utf8_lossy(&q.stdout).trim(), "[]");
}

#[test]
fn wait_times_out_with_the_current_state_when_no_node_is_free() {
    let c = Cluster::new();
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "true"]);
    let out = c.stj(
        None,
        c.path(),
        &[
            "wait",
            &id.to_string(),
            "--state",
            "running",
            "--timeout",
            "1",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is idle, not running"));
}

/// The client's new knobs refuse what they cannot honour, by name, before
/// anything is asked of a schedd.
#[test]
fn client_knobs_out_of_range_or_malformed_are_refused_by_name() {
    let run = |args: &[&str]| {
        let out = Command::new(bin("ssh-to-job"))
            .args(args)
            .env("STJ_SCHEDD_SOCKET", "/nonexistent/schedd.sock")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Beyond an hour (it overflowed a deadline once).
    let e = run(&["--room-wait", "4000", "1", "true"]);
    assert!(e.contains("--room-wait") && e.contains("4000"), "{e}");
    let e = run(&["proxy", "--client-key", "not a key", "stj-job-1"]);
    assert!(e.contains("is not an OpenSSH public key"), "{e}");
    let e = run(&["proxy", "login1"]);
    assert!(e.contains("is not stj-job-N"), "{e}");
}
