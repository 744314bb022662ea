//! `stj-schedd init-daemon-sock`: the directory clients make their
//! reverse-connection sockets in. Root-owned, mode 1733: anyone may create
//! a socket, nobody may list or remove another user's.
//!
//! It is made as root, often under a world-writable sticky directory
//! (`/var/lock` is `/run/lock`, mode 1777), by the package's postinst and
//! at every start of the unit. A local user can get there first: make
//! `/run/lock/stj` their own and then swap `daemon_sock` for a symlink to,
//! say, `/etc/shadow` between our check and our chmod. So every directory
//! above it must be root's and writable by nobody else (or sticky, where
//! others cannot rename root's entries), checked before anything is made;
//! what is missing is made by us, 0755 whatever the umask (a systemd
//! unit's `UMask=0077` would otherwise leave users unable to reach the
//! directory); and the final chown/chmod go through a descriptor opened
//! without following symlinks.

use std::fs;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use stj_cli::paths::DAEMON_SOCK_MODE as MODE;

/// Makes `dir` (and what is missing above it), root-owned, mode 1733.
/// Idempotent.
pub fn init(dir: &Path) -> Result<()> {
    ensure!(
        dir.is_absolute(),
        "daemon_sock_dir {} must be an absolute path",
        dir.display()
    );
    // What is missing, deepest first, and the deepest part that exists.
    let mut missing: Vec<PathBuf> = vec![];
    let mut existing = dir.to_path_buf();
    loop {
        match fs::symlink_metadata(&existing) {
            Ok(_) => break,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                missing.push(existing.clone());
                existing = existing
                    .parent()
                    .with_context(|| format!("cannot create {}", dir.display()))?
                    .to_path_buf();
            }
            Err(e) => return Err(e).with_context(|| format!("cannot stat {}", existing.display())),
        }
    }
    // Everything above `dir` that exists must be the system's; the
    // directory right above it root's alone (not even sticky: in a sticky
    // directory the owner of an entry may rename it, so a user could swap
    // a directory of theirs in between our checks and our chmod).
    let parent = dir.parent().context("daemon_sock_dir cannot be /")?;
    if missing.is_empty() || missing == [dir.to_path_buf()] {
        trusted(parent, true)?;
    } else {
        trusted(&existing, false)?;
    }
    if missing.is_empty() {
        // An existing directory is only checked, never opened up: a typo
        // (`daemon_sock_dir = "/var/lib/stj/schedd"`, or `/run/sshd`) must
        // not make some other directory world-writable.
        let m = fs::symlink_metadata(dir)?;
        ensure!(
            !m.file_type().is_symlink() && m.is_dir(),
            "{} exists and is a symlink or not a directory; remove it first",
            dir.display()
        );
        ensure!(
            m.uid() == 0,
            "{} belongs to uid {}, not root: remove it and run `stj-schedd init-daemon-sock` again",
            dir.display(),
            m.uid()
        );
        ensure!(
            m.mode() & 0o7777 == MODE,
            "{} exists with mode {:o}, not 1733: daemon_sock_dir must name a directory of its own; remove it or set daemon_sock_dir to a new path, then run `stj-schedd init-daemon-sock`",
            dir.display(),
            m.mode() & 0o7777
        );
    }
    for d in missing.iter().rev() {
        let last = d == dir;
        fs::DirBuilder::new()
            .mode(if last { 0o700 } else { 0o755 })
            .create(d)
            .with_context(|| {
                format!(
                    "cannot create {} (made by someone else meanwhile?)",
                    d.display()
                )
            })?;
        if !last {
            fs::set_permissions(d, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot chmod {}", d.display()))?;
        }
    }
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .with_context(|| {
            format!(
                "{} exists and is a symlink or not a directory; remove it first",
                dir.display()
            )
        })?;
    nix::unistd::fchown(f.as_raw_fd(), Some(0.into()), Some(0.into()))
        .with_context(|| format!("cannot chown {} to root (run as root)", dir.display()))?;
    f.set_permissions(fs::Permissions::from_mode(MODE))
        .with_context(|| format!("cannot chmod {}", dir.display()))?;
    let m = f.metadata()?;
    ensure!(
        m.uid() == 0 && m.mode() & 0o7777 == MODE,
        "{} did not take mode 1733",
        dir.display()
    );
    Ok(())
}

/// `dir` and every directory above it, as written and as resolved, are
/// root's and writable by nobody else unless sticky; `dir` itself not even
/// sticky when `strict`.
fn trusted(dir: &Path, strict: bool) -> Result<()> {
    let resolved =
        fs::canonicalize(dir).with_context(|| format!("cannot resolve {}", dir.display()))?;
    for path in [dir, resolved.as_path()] {
        for (depth, a) in path.ancestors().enumerate() {
            let sticky_ok = !(strict && depth == 0);
            let link =
                fs::symlink_metadata(a).with_context(|| format!("cannot stat {}", a.display()))?;
            let m = fs::metadata(a).with_context(|| format!("cannot stat {}", a.display()))?;
            for (what, uid) in [("", link.uid()), (" (where it leads)", m.uid())] {
                if uid != 0 {
                    bail!(
                        "{}{what} belongs to uid {uid}, not root: another user may have made it to take over the reverse-connection sockets below it; remove it and run `stj-schedd init-daemon-sock` again (or set daemon_sock_dir to a root-owned place)",
                        a.display()
                    );
                }
            }
            ensure!(
                !m.is_dir() || m.mode() & 0o022 == 0 || (sticky_ok && m.mode() & 0o1000 != 0),
                "{} is writable by others{}, so another user could replace what is below it; chmod go-w {} (or set daemon_sock_dir to a directory in a root-owned one, like the default /var/lock/stj/daemon_sock)",
                a.display(),
                if sticky_ok { " and not sticky" } else { " (the directory right above daemon_sock_dir must be root's alone)" },
                a.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root-owned scratch directory (the tests run as root, like the
    /// daemon).
    fn scratch() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
        t
    }

    /// The checks are about root's view (chown, other users' files): the
    /// tests run as root, like scripts/test.sh.
    fn as_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "run as root (scripts/test.sh)"
        );
    }

    /// (Modes are set explicitly, whatever the umask; tests/packages.rs
    /// runs it from its unit under systemd. The umask is process-wide, so
    /// it is not changed here among other tests' threads.)
    #[test]
    fn makes_what_is_missing_root_owned_and_reachable() {
        as_root();
        let t = scratch();
        let dir = t.path().join("lock/stj/daemon_sock");
        init(&dir).unwrap();
        for d in [t.path().join("lock"), t.path().join("lock/stj")] {
            assert_eq!(
                fs::metadata(&d).unwrap().mode() & 0o7777,
                0o755,
                "{}",
                d.display()
            );
        }
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, MODE);
        // Again: nothing changes, no error.
        init(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, MODE);
    }

    #[test]
    fn refuses_a_parent_another_user_made_and_touches_nothing_below() {
        as_root();
        let t = scratch();
        // Under a sticky world-writable directory, like /run/lock.
        let lock = t.path().join("lock");
        fs::create_dir(&lock).unwrap();
        fs::set_permissions(&lock, fs::Permissions::from_mode(0o1777)).unwrap();
        // The attacker's directory, with a symlink where the socket dir goes.
        let evil = lock.join("stj");
        fs::create_dir(&evil).unwrap();
        nix::unistd::chown(&evil, Some(12345.into()), Some(12345.into())).unwrap();
        let victim = t.path().join("victim");
        fs::write(&victim, "secret").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&victim, evil.join("daemon_sock")).unwrap();
        let e = init(&evil.join("daemon_sock")).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 12345, not root"), "{e}");
        assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o600);

        // Not yet made below the attacker's directory either.
        let e = init(&evil.join("x/daemon_sock")).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 12345"), "{e}");
        assert!(!evil.join("x").exists());
    }

    #[test]
    fn refuses_a_symlink_or_a_world_writable_parent() {
        as_root();
        let t = scratch();
        let victim = t.path().join("victim");
        fs::create_dir(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("daemon_sock")).unwrap();
        let e = format!("{:#}", init(&t.path().join("daemon_sock")).unwrap_err());
        assert!(e.contains("symlink"), "{e}");
        assert_eq!(fs::metadata(&victim).unwrap().mode() & 0o7777, 0o755);

        let open = t.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        let e = init(&open.join("daemon_sock")).unwrap_err().to_string();
        assert!(e.contains("open is writable by others"), "{e}");

        // Right under a sticky world-writable directory: a user could
        // rename their own directory in at the last moment.
        let sticky = t.path().join("sticky");
        fs::create_dir(&sticky).unwrap();
        fs::set_permissions(&sticky, fs::Permissions::from_mode(0o1777)).unwrap();
        let e = init(&sticky.join("daemon_sock")).unwrap_err().to_string();
        assert!(
            e.contains("right above daemon_sock_dir must be root's alone"),
            "{e}"
        );
        assert!(!sticky.join("daemon_sock").exists());
    }

    #[test]
    fn refuses_to_open_up_a_directory_that_is_not_its_own() {
        as_root();
        let t = scratch();
        // `daemon_sock_dir = "/var/lib/stj/schedd"`, a typo for another knob.
        let state = t.path().join("schedd");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(state.join("ca.key.der"), "key").unwrap();
        let e = init(&state).unwrap_err().to_string();
        assert!(e.contains("not 1733"), "{e}");
        assert_eq!(fs::metadata(&state).unwrap().mode() & 0o7777, 0o700);
        // Or an empty one of the system's (`/run/sshd`, which sshd wants
        // root's and not writable by others).
        let empty = t.path().join("sshd");
        fs::create_dir(&empty).unwrap();
        fs::set_permissions(&empty, fs::Permissions::from_mode(0o755)).unwrap();
        let e = init(&empty).unwrap_err().to_string();
        assert!(e.contains("not 1733"), "{e}");
        assert_eq!(fs::metadata(&empty).unwrap().mode() & 0o7777, 0o755);

        // Another user's directory at the path.
        let theirs = t.path().join("theirs");
        fs::create_dir(&theirs).unwrap();
        nix::unistd::chown(&theirs, Some(12345.into()), None).unwrap();
        let e = init(&theirs).unwrap_err().to_string();
        assert!(e.contains("belongs to uid 12345"), "{e}");
        assert_eq!(fs::metadata(&theirs).unwrap().uid(), 12345);
    }
}
