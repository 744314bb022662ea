//! A session runs shell and ssh start-up files as the job's owner: none of
//! them may come from a place someone else controls.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use stj_tests::{ok, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

/// Writes `text` to `path` as `user`'s file.
fn plant(path: &Path, text: &str, user: &TestUser, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    nix::unistd::chown(path, Some(user.uid.into()), Some(user.gid.into())).unwrap();
}

#[test]
fn files_others_control_never_run_in_a_session() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    // A project directory anyone may write: the job runs there.
    let shared = c.path().join("shared-project");
    fs::create_dir_all(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let markers = c.path().join("markers");
    fs::create_dir_all(&markers).unwrap();
    fs::set_permissions(&markers, fs::Permissions::from_mode(0o1777)).unwrap();
    // Bob plants start-up files where the session starts.
    for f in [
        ".ssh/rc",
        ".ssh/environment",
        ".profile",
        ".bashrc",
        ".bash_profile",
        ".bash_login",
    ] {
        let cmd = format!("touch {}/bob{}\n", markers.display(), f.replace('/', "-"));
        plant(&shared.join(f), &cmd, &bob, 0o755);
    }
    // Alice's own .profile in her own home: that one runs.
    let home = alice.home();
    let own = home.join(".profile");
    let had = fs::read(&own).ok();
    plant(
        &own,
        &format!("touch {}/alice-own-profile\n", markers.display()),
        &alice,
        0o644,
    );

    let id = c.submit(
        &alice,
        &["--cwd", shared.to_str().unwrap(), "--", "sleep", "86413"],
    );
    c.wait_state(id, "running", T);
    let out = ok(c.ssh_to_job(
        &alice,
        &[
            &id.to_string(),
            "pwd; echo $HOME; bash -l -c true; bash -i -c true 2>/dev/null; sh -l -c true",
        ],
        None,
    ));
    assert_eq!(out, format!("{}\n{}\n", shared.display(), home.display()));
    let ran: Vec<String> = fs::read_dir(&markers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        ran.iter().all(|m| !m.starts_with("bob")),
        "bob's files ran as alice: {ran:?}"
    );
    assert!(ran.contains(&"alice-own-profile".to_string()), "{ran:?}");
    match had {
        Some(t) => fs::write(&own, t).unwrap(),
        None => fs::remove_file(&own).unwrap(),
    }
}

#[test]
fn a_home_others_can_write_is_refused_with_the_fix() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let dave = TestUser::get("stjtest-dave");
    let home = dave.home();
    let id = c.submit(&dave, &["--", "sleep", "86414"]);
    c.wait_state(id, "running", T);
    fs::set_permissions(&home, fs::Permissions::from_mode(0o777)).unwrap();
    let out = c.ssh_to_job(&dave, &[&id.to_string(), "echo got-in"], None);
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("chmod go-w {}", home.display())) && err.contains("not safe"),
        "{err}"
    );
    assert!(out.stdout.is_empty());
    // Fixed, the session works.
    let out = ok(c.ssh_to_job(&dave, &[&id.to_string(), "echo got-in"], None));
    assert_eq!(out, "got-in\n");
}

#[test]
fn a_slot_user_session_gets_a_private_home_of_its_own() {
    let mut c = Cluster::new();
    c.start_slot_user_starter("node1", 1, 5100, 5101);
    let alice = TestUser::alice();
    let wd = c.workdir(&alice);
    fs::set_permissions(&wd, fs::Permissions::from_mode(0o777)).unwrap();
    let id = c.submit(&alice, &["--", "sleep", "86415"]);
    c.wait_state(id, "running", T);
    let out = ok(c.ssh_to_job(
        &alice,
        &[
            &id.to_string(),
            "cd; pwd; stat -c '%u %a' .; touch .bash_history && echo writable",
        ],
        None,
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].ends_with("/home") && lines[0].contains("/sessions/"),
        "{out}"
    );
    assert_eq!(lines[1], "5100 700");
    assert_eq!(lines[2], "writable");
}
