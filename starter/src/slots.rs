//! Slot users: node-local uids that jobs run as instead of their owners'
//! (HTCondor's slot users), for owners who have no account on the node.
//!
//! A slot uid must never carry anything from one owner to the next. So:
//! - a uid is *leased* to one owner: all of that owner's jobs on the node
//!   share it, and no other owner's job gets it while the lease lasts;
//! - the lease ends when the owner's last job here has ended, and the uid
//!   is *swept* before anyone else gets it: every process it still has is
//!   killed (its jobs' PID namespaces took them already; this makes sure),
//!   and every file it owns in the directories its jobs could write (their
//!   working directories: the rest of a confined job's view is read-only,
//!   `container/view.rs`) is given to the owner, set-id bits cleared;
//! - confined jobs cannot make set-id files or gain privileges by exec at
//!   all (`container/confine.rs`), so a file moved elsewhere before the
//!   sweep runs as no one but its runner.
//! Leases are kept in `<work_dir>/slot-leases.json` (0600): after a crash
//! the sweep of every lease left there runs at start-up, before any job.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use serde::{Deserialize, Serialize};
use stj_cli::private_file;

/// A directory a confined job could write: `path` as the job saw it, in
/// `root` (its image, or / for the node's filesystem).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Writable {
    pub root: PathBuf,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    owner_uid: u32,
    owner_gid: u32,
    jobs: BTreeSet<u64>,
    dirs: BTreeSet<Writable>,
    /// The last job ended; the sweep is running and the uid is taken.
    sweeping: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Leases {
    by_uid: BTreeMap<u32, Lease>,
}

pub struct SlotUsers {
    first: u32,
    last: u32,
    file: PathBuf,
    leases: Mutex<Leases>,
}

/// What a sweep did, for the log and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub processes: usize,
    pub files: usize,
}

impl SlotUsers {
    /// Loads the leases, sweeps those a previous run left (no job runs on
    /// a starting node) and forgets them.
    pub fn open(work_dir: &Path, first: u32, last: u32) -> Result<SlotUsers> {
        let file = work_dir.join("slot-leases.json");
        let left: Leases = match private_file::read(&file) {
            Ok(text) => serde_json::from_slice(&text).with_context(|| {
                format!(
                    "{} is damaged; its slot uids may hold files of past jobs: sweep them by hand, then remove it",
                    file.display()
                )
            })?,
            Err(e) if e.is_not_found() =>
            {
                Leases::default()
            }
            Err(e) => return Err(e.into()),
        };
        for (uid, lease) in &left.by_uid {
            let done = sweep(*uid, lease);
            tracing::info!(
                uid,
                owner = lease.owner_uid,
                processes = done.processes,
                files = done.files,
                "slot user swept at start-up (its lease outlived the last starter)"
            );
        }
        let s = SlotUsers {
            first,
            last,
            file,
            leases: Mutex::default(),
        };
        s.save(&Leases::default())?;
        Ok(s)
    }

    /// "FIRST-LAST", for messages.
    pub fn range(&self) -> String {
        format!("{}-{}", self.first, self.last)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self, l: &Leases) -> Result<()> {
        private_file::write(&self.file, &serde_json::to_vec(l)?)?;
        Ok(())
    }

    /// The uid job `job` of `owner` runs as: the owner's current lease, or
    /// a free uid leased to them now. None when every uid is leased.
    pub fn claim(
        &self,
        job: u64,
        owner_uid: u32,
        owner_gid: u32,
        dir: Writable,
    ) -> Result<Option<u32>> {
        let mut l = self.lock();
        let current = l
            .by_uid
            .iter()
            .find(|(_, x)| x.owner_uid == owner_uid && !x.sweeping)
            .map(|(u, _)| *u);
        let uid = match current {
            Some(u) => u,
            None => match (self.first..=self.last).find(|u| !l.by_uid.contains_key(u)) {
                Some(u) => {
                    l.by_uid.insert(
                        u,
                        Lease {
                            owner_uid,
                            owner_gid,
                            jobs: BTreeSet::new(),
                            dirs: BTreeSet::new(),
                            sweeping: false,
                        },
                    );
                    u
                }
                None => return Ok(None),
            },
        };
        let lease = l.by_uid.get_mut(&uid).expect("just found or made");
        lease.jobs.insert(job);
        lease.dirs.insert(dir);
        // On disk before the job runs: a crash from here on still sweeps.
        self.save(&l)?;
        Ok(Some(uid))
    }

    /// Job `job` ended. When it was its lease's last, sweeps the uid (in
    /// this thread: call from a blocking context) and frees it.
    pub fn release(&self, job: u64) -> Option<(u32, Swept)> {
        let (uid, lease) = {
            let mut l = self.lock();
            let (uid, lease) = l.by_uid.iter_mut().find(|(_, x)| x.jobs.contains(&job))?;
            lease.jobs.remove(&job);
            if !lease.jobs.is_empty() {
                return None;
            }
            lease.sweeping = true;
            (*uid, lease.clone())
        };
        let done = sweep(uid, &lease);
        let mut l = self.lock();
        l.by_uid.remove(&uid);
        if let Err(e) = self.save(&l) {
            tracing::error!(error = %format!("{e:#}"), "cannot record the end of a slot-user lease");
        }
        Some((uid, done))
    }
}

/// Kills what runs as `uid` and gives what it owns in the lease's
/// directories to the owner, set-id bits cleared.
fn sweep(uid: u32, lease: &Lease) -> Swept {
    let mut done = Swept {
        processes: kill_all(uid),
        files: 0,
    };
    for dir in &lease.dirs {
        match give_back(uid, lease.owner_uid, lease.owner_gid, dir) {
            Ok(n) => done.files += n,
            Err(e) => {
                tracing::warn!(uid, root = %dir.root.display(), dir = %dir.path, error = %format!("{e:#}"), "cannot sweep a slot user's directory")
            }
        }
    }
    done
}

/// SIGKILLs every process with `uid` among its ids, until none is left.
fn kill_all(uid: u32) -> usize {
    let mut killed = 0;
    for _ in 0..20 {
        let pids: Vec<i32> = std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("Uid:"))
                            .map(|l| l.split_whitespace().skip(1).any(|u| u == uid.to_string()))
                    })
                    .unwrap_or(false)
            })
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            if nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
            {
                killed += 1;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    killed
}

fn open_at(dir: &OwnedFd, name: &std::ffi::OsStr, flags: OFlag) -> nix::Result<OwnedFd> {
    let fd = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name,
        flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    // SAFETY: a fresh fd from openat().
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Walks `dir` (resolved inside its root, never following a symlink while
/// walking, never leaving its filesystem) and hands every entry owned by
/// `uid` (or its group) to the owner. Returns how many it changed.
fn give_back(uid: u32, owner: u32, owner_gid: u32, dir: &Writable) -> Result<usize> {
    let root = nix::fcntl::open(
        &dir.root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: a fresh fd from open().
    let root = unsafe { OwnedFd::from_raw_fd(root) };
    let top = match crate::in_root::open(&root, &dir.path, libc::O_RDONLY | libc::O_DIRECTORY) {
        Ok(fd) => fd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).context("cannot open the directory"),
    };
    let dev = fstat(top.as_raw_fd())?.st_dev;
    let gid = uid; // slot users' gid is their uid
    let mut changed = 0;
    let fix = |fd: &OwnedFd| -> nix::Result<bool> {
        let st = fstat(fd.as_raw_fd())?;
        if st.st_uid != uid && st.st_gid != gid {
            return Ok(false);
        }
        let new_uid = (st.st_uid == uid).then_some(owner);
        let new_gid = (st.st_gid == gid).then_some(owner_gid);
        nix::unistd::fchown(
            fd.as_raw_fd(),
            new_uid.map(Into::into),
            new_gid.map(Into::into),
        )?;
        let mode = st.st_mode & 0o7777;
        if mode & 0o6000 != 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG {
            nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::from_bits_truncate(mode & !0o6000))?;
        }
        Ok(true)
    };
    if fix(&top)? {
        changed += 1;
    }
    let mut stack = vec![top];
    while let Some(d) = stack.pop() {
        let names: Vec<std::ffi::OsString> =
            match std::fs::read_dir(format!("/proc/self/fd/{}", d.as_raw_fd())) {
                Ok(it) => it.flatten().map(|e| e.file_name()).collect(),
                Err(_) => continue,
            };
        for name in names {
            let Ok(st) = fstatat(
                Some(d.as_raw_fd()),
                name.as_os_str(),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) else {
                continue;
            };
            match SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) {
                SFlag::S_IFDIR if st.st_dev == dev => {
                    if let Ok(sub) = open_at(&d, &name, OFlag::O_RDONLY | OFlag::O_DIRECTORY) {
                        if fix(&sub).unwrap_or(false) {
                            changed += 1;
                        }
                        stack.push(sub);
                    }
                }
                SFlag::S_IFREG if st.st_uid == uid || st.st_gid == gid => {
                    if let Ok(f) = open_at(&d, &name, OFlag::O_RDONLY | OFlag::O_NONBLOCK) {
                        if fix(&f).unwrap_or(false) {
                            changed += 1;
                        }
                    }
                }
                _ if st.st_uid == uid || st.st_gid == gid => {
                    // Symlinks, fifos, sockets: changed without opening.
                    let new_uid = (st.st_uid == uid).then_some(owner);
                    let new_gid = (st.st_gid == gid).then_some(owner_gid);
                    if nix::unistd::fchownat(
                        Some(d.as_raw_fd()),
                        name.as_os_str(),
                        new_uid.map(Into::into),
                        new_gid.map(Into::into),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .is_ok()
                    {
                        changed += 1;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn a_lease_is_per_owner_and_a_uid_passes_on_only_after_its_sweep() {
        let work = tempfile::tempdir().unwrap();
        let cwd = work.path().join("cwd");
        std::fs::create_dir_all(cwd.join("sub")).unwrap();
        let s = SlotUsers::open(work.path(), 64200, 64201).unwrap();
        let here = Writable {
            root: "/".into(),
            path: cwd.to_string_lossy().into_owned(),
        };
        let a1 = s.claim(1, 1000, 1000, here.clone()).unwrap().unwrap();
        let a2 = s.claim(2, 1000, 1000, here.clone()).unwrap().unwrap();
        let b = s.claim(3, 1001, 1001, here.clone()).unwrap().unwrap();
        assert_eq!((a1, a2, b), (64200, 64200, 64201), "one uid per owner");
        assert_eq!(
            s.claim(4, 1002, 1002, here.clone()).unwrap(),
            None,
            "all leased"
        );

        // Files the slot uid left, one setuid, one in a subdirectory.
        let f = cwd.join("sub/copy");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        nix::unistd::chown(&f, Some(64200.into()), Some(64200.into())).unwrap();
        nix::unistd::chown(&cwd.join("sub"), Some(64200.into()), Some(64200.into())).unwrap();

        assert!(s.release(1).is_none(), "alice still has job 2");
        let (uid, swept) = s.release(2).unwrap();
        assert_eq!((uid, swept.files), (64200, 2));
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o755));
        // Now the uid may go to someone else.
        assert_eq!(s.claim(4, 1002, 1002, here).unwrap(), Some(64200));
    }

    #[test]
    fn leases_left_by_a_crash_are_swept_at_start_up() {
        let work = tempfile::tempdir().unwrap();
        let cwd = work.path().join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        let s = SlotUsers::open(work.path(), 64210, 64210).unwrap();
        let uid = s
            .claim(
                1,
                1000,
                1000,
                Writable {
                    root: "/".into(),
                    path: cwd.to_string_lossy().into_owned(),
                },
            )
            .unwrap()
            .unwrap();
        let f = cwd.join("left");
        std::fs::write(&f, "x").unwrap();
        nix::unistd::chown(&f, Some(uid.into()), Some(uid.into())).unwrap();
        drop(s); // the starter died
        let s = SlotUsers::open(work.path(), 64210, 64210).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), 1000);
        assert!(s
            .claim(
                2,
                1001,
                1001,
                Writable {
                    root: "/".into(),
                    path: "/nonexistent".into()
                }
            )
            .unwrap()
            .is_some());
    }
}
