//! Where an installed pool keeps things, defined once for every program
//! (doc comments and `--help` texts quote the same values).

/// The config file; one `[section]` per daemon.
pub const CONFIG: &str = "/etc/stj/stj.toml";
/// The schedd's UNIX socket for users (`stj`, `ssh-to-job`).
pub const SCHEDD_SOCKET: &str = "/run/stj/schedd.sock";
/// The schedd's queue, CA, keys and audit log.
pub const SCHEDD_STATE_DIR: &str = "/var/lib/stj/schedd";
/// Where clients make the sockets reverse connections are handed to.
pub const DAEMON_SOCK_DIR: &str = "/var/lock/stj/daemon_sock";
/// The daemon_sock directory's mode: anyone may add a socket, nobody may
/// list or remove another's.
pub const DAEMON_SOCK_MODE: u32 = 0o1733;

/// Whether `dir` is a daemon_sock directory as `stj-schedd init-daemon-sock`
/// makes it: root's, mode 1733, not a symlink, in a directory root's alone.
/// Anything else (a directory a user made first in /run/lock after a
/// reboot, or a link of theirs to some root directory they can re-point)
/// lets them delete or rename the sockets in it, so neither clients nor
/// the schedd use it.
pub fn is_daemon_sock_dir(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(link) = std::fs::symlink_metadata(dir) else {
        return false;
    };
    let parent = std::fs::canonicalize(dir)
        .ok()
        .and_then(|d| d.parent().map(std::path::Path::to_path_buf))
        .and_then(|p| std::fs::metadata(p).ok());
    link.is_dir()
        && link.uid() == 0
        && link.mode() & 0o7777 == DAEMON_SOCK_MODE
        && parent.is_some_and(|p| p.uid() == 0 && p.mode() & 0o022 == 0)
}
/// The starter's scratch directory (kit, job dirs, node key).
pub const STARTER_WORK_DIR: &str = "/var/lib/stj/starter";

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_daemon_sock_dir_is_roots_1733_real_and_in_a_directory_of_roots() {
        // The tests run as root (scripts/test.sh): what they make is root's.
        // SAFETY: geteuid cannot fail.
        assert_eq!(unsafe { libc::geteuid() }, 0, "run as root");
        let t = tempfile::tempdir().unwrap();
        let mode = |p: &std::path::Path, m: u32| {
            fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap()
        };
        mode(t.path(), 0o755);
        let good = t.path().join("daemon_sock");
        fs::create_dir(&good).unwrap();
        mode(&good, DAEMON_SOCK_MODE);
        assert!(is_daemon_sock_dir(&good));

        // A link to it, which its maker could re-point.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(!is_daemon_sock_dir(&link));
        // Another mode; another owner.
        mode(&good, 0o1777);
        assert!(!is_daemon_sock_dir(&good));
        mode(&good, DAEMON_SOCK_MODE);
        std::os::unix::fs::chown(&good, Some(12345), None).unwrap();
        assert!(!is_daemon_sock_dir(&good));
        std::os::unix::fs::chown(&good, Some(0), None).unwrap();
        // In a directory others may write to, even sticky (/run/lock).
        mode(t.path(), 0o1777);
        assert!(!is_daemon_sock_dir(&good));
        mode(t.path(), 0o755);
        assert!(is_daemon_sock_dir(&good));
    }
}
