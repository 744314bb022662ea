//! The shim loaded for real (LD_PRELOAD) into a small program that looks
//! accounts up the way sshd does.

use std::path::PathBuf;
use std::process::Command;

fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

fn lookup(passwd: Option<&str>, args: &[&str]) -> String {
    let dir = target_dir();
    let so = dir.join("libstj_preload.so");
    assert!(
        so.exists(),
        "{} missing: run `cargo build --workspace` first (scripts/test.sh does)",
        so.display()
    );
    let mut cmd = Command::new(dir.join("examples/pwlookup"));
    cmd.args(args).env("LD_PRELOAD", &so);
    match passwd {
        Some(p) => cmd.env("STJ_PASSWD", p),
        None => cmd.env_remove("STJ_PASSWD"),
    };
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const GHOST: &str = "ghost:x:64123:64123:stj job 1:/work:/bin/sh";

#[test]
fn an_account_missing_from_passwd_is_found_by_name_and_uid() {
    assert_eq!(
        lookup(None, &["name", "ghost"]),
        "notfound",
        "without the shim's entry, no such user"
    );
    assert_eq!(
        lookup(Some(GHOST), &["name", "ghost"]),
        "found ghost 64123 64123 /work /bin/sh"
    );
    assert_eq!(
        lookup(Some(GHOST), &["uid", "64123"]),
        "found ghost 64123 64123 /work /bin/sh"
    );
    assert_eq!(
        lookup(Some(GHOST), &["plain", "ghost"]),
        "found ghost 64123 64123 /work /bin/sh"
    );
}

#[test]
fn everyone_else_passes_through_unchanged() {
    assert_eq!(
        lookup(Some(GHOST), &["name", "root"]),
        lookup(None, &["name", "root"])
    );
    assert!(lookup(Some(GHOST), &["uid", "0"]).starts_with("found root 0 0 /root"));
    assert_eq!(
        lookup(Some(GHOST), &["name", "no-such-user-xyz"]),
        "notfound"
    );
}

#[test]
fn nologin_false_and_missing_shells_are_replaced() {
    let usable = if std::path::Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    for shell in ["/usr/sbin/nologin", "/bin/false", "/no/such/shell"] {
        let p = format!("ghost:x:64123:64123::/work:{shell}");
        assert_eq!(
            lookup(Some(&p), &["name", "ghost"]),
            format!("found ghost 64123 64123 /work {usable}"),
            "{shell}"
        );
    }
}

#[test]
fn a_tiny_buffer_gets_erange_so_callers_retry() {
    assert_eq!(lookup(Some(GHOST), &["name", "ghost", "8"]), "erange");
    assert_eq!(lookup(Some(GHOST), &["uid", "64123", "8"]), "erange");
    // "ghost\0x\0stj job 1\0/work\0/bin/sh\0" is exactly 32 bytes.
    assert_eq!(
        lookup(Some(GHOST), &["name", "ghost", "32"]),
        "found ghost 64123 64123 /work /bin/sh"
    );
    assert_eq!(lookup(Some(GHOST), &["name", "ghost", "31"]), "erange");
}

/// A session's sshd keeps fd 3 (its session directory) through the
/// closefrom at its start-up, close-on-exec so nothing it runs inherits
/// it; every other fd goes, and other programs lose fd 3 as usual.
#[test]
fn closefrom_spares_the_session_fd_in_sessions_only() {
    use std::os::unix::process::CommandExt;
    let run = |how: &str, passwd: Option<&str>| {
        let so = target_dir().join("libstj_preload.so");
        let mut cmd = Command::new(target_dir().join("examples/pwlookup"));
        cmd.arg(how).env("LD_PRELOAD", &so);
        match passwd {
            Some(p) => cmd.env("STJ_PASSWD", p),
            None => cmd.env_remove("STJ_PASSWD"),
        };
        // SAFETY: only dup2 between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let null = libc::open(c"/".as_ptr(), libc::O_PATH);
                libc::dup2(null, 3);
                libc::dup2(null, 4);
                Ok(())
            });
        }
        String::from_utf8_lossy(&cmd.output().unwrap().stdout)
            .trim()
            .to_string()
    };
    // sshd brings its own closefrom, which calls close_range.
    for how in ["closefrom", "close_range"] {
        assert_eq!(
            run(how, Some(GHOST)),
            "fd3 open cloexec 1 fd4 closed",
            "{how}"
        );
        assert_eq!(run(how, None), "fd3 closed cloexec 0 fd4 closed", "{how}");
    }
}
