//! Slot users: node-local uids that jobs run as instead of their owners'
//! (HTCondor's slot users), for owners who have no account on the node.
//!
//! A slot uid must never carry anything from one owner to the next. So:
//! - a uid is *leased* to one owner: all of that owner's jobs on the node
//!   share it, and no other owner's job gets it while the lease lasts;
//! - the lease ends when the owner's last job here has ended, and the uid
//!   is *swept* before anyone else gets it: every process it still has is
//!   killed (its jobs' PID namespaces took them already; this makes sure),
//!   and every file it owns in the directories its jobs could write is
//!   given to the owner, set-id bits cleared. Those are their working
//!   directories (the rest of a confined job's view is read-only,
//!   `container/view.rs`), opened once by the starter: the container makes
//!   exactly that directory writable and the sweep walks exactly it, from
//!   the same fd, whatever happened to its path meanwhile;
//! - confined jobs cannot make set-id files or gain privileges by exec at
//!   all (`container/confine.rs`), so a file moved elsewhere before the
//!   sweep runs as no one but its runner.
//! Leases are kept in `<work_dir>/slot-leases.json` (0600): after a crash
//! the sweep of every lease left there runs at start-up, before any job,
//! from the recorded paths; a directory that is no longer the one the job
//! had (device and inode differ) cannot be swept, and its uid is kept out
//! of service until the admin cleans it (`stj-starter slot-users`).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, Mode, SFlag};
use serde::{Deserialize, Serialize};
use stj_cli::private_file;

/// A directory a confined job could write: `path` as the job saw it, in
/// `root` (its image, or / for the node's filesystem), and which directory
/// that was (device and inode), to recognise it after a crash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Writable {
    pub root: PathBuf,
    pub path: String,
    pub dev: u64,
    pub ino: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    owner_uid: u32,
    owner_gid: u32,
    jobs: BTreeSet<u64>,
    dirs: BTreeSet<Writable>,
    /// The directories themselves, opened when each job started (not kept
    /// across a restart: then `dirs` is used, and checked).
    #[serde(skip)]
    fds: Vec<Arc<OwnedFd>>,
    /// The last job ended; the sweep is running and the uid is taken.
    sweeping: bool,
    /// A sweep could not be done (a directory was replaced while the
    /// starter was down): the uid stays out of service until the admin
    /// releases it.
    #[serde(default)]
    quarantined: Option<String>,
}

/// Opens `path` inside `root` (RESOLVE_IN_ROOT): the directory a confined
/// job gets as its writable working directory. The root itself is refused
/// on the node's filesystem (it would make the whole filesystem writable to
/// a uid others will get); in an image it means no writable directory (the
/// job's / is read-only anyway).
pub fn open_workdir(root: &Path, path: &str, image: bool) -> Result<Option<(OwnedFd, Writable)>> {
    let r = crate::in_root::open_dir(root)?;
    let dir = crate::in_root::open(&r, path, libc::O_PATH | libc::O_DIRECTORY)
        .with_context(|| format!("the working directory {path} is not a directory on this node"))?;
    let (top, st) = (fstat(r.as_raw_fd())?, fstat(dir.as_raw_fd())?);
    if (top.st_dev, top.st_ino) == (st.st_dev, st.st_ino) {
        if image {
            return Ok(None);
        }
        anyhow::bail!(
            "a slot-user job's working directory cannot be / (its files would be all over the node, and its uid passes to other owners): submit from, or give --cwd, a directory of the job's own"
        );
    }
    Ok(Some((
        dir,
        Writable {
            root: root.to_path_buf(),
            path: path.to_string(),
            dev: st.st_dev,
            ino: st.st_ino,
        },
    )))
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Leases {
    by_uid: BTreeMap<u32, Lease>,
}

fn leases_file(work_dir: &Path) -> PathBuf {
    work_dir.join("slot-leases.json")
}

/// The leases as recorded; none when there is no file yet.
fn read_leases(file: &Path) -> Result<Leases> {
    match private_file::read(file) {
        Ok(text) => serde_json::from_slice(&text).with_context(|| {
            format!(
                "{} is damaged; its slot uids may hold files of past jobs: sweep them by hand, then remove it",
                file.display()
            )
        }),
        Err(e) if e.is_not_found() => Ok(Leases::default()),
        Err(e) => Err(e.into()),
    }
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
        let file = leases_file(work_dir);
        let left = read_leases(&file)?;
        let mut kept = Leases::default();
        for (uid, lease) in left.by_uid {
            if lease.quarantined.is_some() {
                tracing::error!(uid, owner = lease.owner_uid, reason = lease.quarantined.as_deref().unwrap_or(""), "slot user still out of service: clean up its files, then `stj-starter slot-users --release UID`");
                kept.by_uid.insert(uid, lease);
                continue;
            }
            match sweep(uid, &lease) {
                Ok(done) => tracing::info!(
                    uid,
                    owner = lease.owner_uid,
                    processes = done.processes,
                    files = done.files,
                    "slot user swept at start-up (its lease outlived the last starter)"
                ),
                Err(why) => {
                    tracing::error!(uid, owner = lease.owner_uid, reason = %why, "slot user cannot be swept; out of service until the admin cleans up its files and runs `stj-starter slot-users --release UID`");
                    kept.by_uid.insert(
                        uid,
                        Lease {
                            jobs: BTreeSet::new(),
                            sweeping: false,
                            quarantined: Some(why),
                            ..lease
                        },
                    );
                }
            }
        }
        let s = SlotUsers {
            first,
            last,
            file,
            leases: Mutex::new(Leases::default()),
        };
        s.save(&kept)?;
        *s.lock() = kept;
        Ok(s)
    }

    /// The admin's view of the leases: (uid, owner, jobs, why quarantined).
    pub fn list(work_dir: &Path) -> Result<Vec<(u32, u32, usize, Option<String>)>> {
        let l = read_leases(&leases_file(work_dir))?;
        Ok(l.by_uid
            .iter()
            .map(|(u, x)| (*u, x.owner_uid, x.jobs.len(), x.quarantined.clone()))
            .collect())
    }

    /// The admin says a quarantined uid's files are dealt with: it may be
    /// leased again. Only with the starter stopped (it rewrites the file).
    pub fn release_quarantined(work_dir: &Path, uid: u32) -> Result<()> {
        let file = leases_file(work_dir);
        let mut l = read_leases(&file)?;
        match l.by_uid.get(&uid) {
            Some(x) if x.quarantined.is_some() => {
                l.by_uid.remove(&uid);
            }
            Some(_) => anyhow::bail!("slot uid {uid} is leased to running jobs, not quarantined"),
            None => anyhow::bail!("slot uid {uid} has no lease"),
        }
        private_file::write(&file, &serde_json::to_vec(&l)?)?;
        Ok(())
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
        dir: Option<(Writable, Arc<OwnedFd>)>,
    ) -> Result<Option<u32>> {
        let mut l = self.lock();
        let current = l
            .by_uid
            .iter()
            .find(|(_, x)| x.owner_uid == owner_uid && !x.sweeping && x.quarantined.is_none())
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
                            fds: Vec::new(),
                            sweeping: false,
                            quarantined: None,
                        },
                    );
                    u
                }
                None => return Ok(None),
            },
        };
        let lease = l.by_uid.get_mut(&uid).expect("just found or made");
        lease.jobs.insert(job);
        if let Some((dir, fd)) = dir {
            lease.dirs.insert(dir);
            lease.fds.push(fd);
        }
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
        let outcome = sweep(uid, &lease);
        let mut l = self.lock();
        let done = match outcome {
            Ok(done) => {
                l.by_uid.remove(&uid);
                done
            }
            Err(why) => {
                tracing::error!(uid, reason = %why, "slot user cannot be swept; out of service until the admin cleans up its files and runs `stj-starter slot-users --release UID`");
                if let Some(x) = l.by_uid.get_mut(&uid) {
                    x.quarantined = Some(why);
                    x.sweeping = false;
                }
                Swept::default()
            }
        };
        if let Err(e) = self.save(&l) {
            tracing::error!(error = %format!("{e:#}"), "cannot record the end of a slot-user lease");
        }
        Some((uid, done))
    }
}

/// Kills what runs as `uid` and gives what it owns in the lease's
/// directories to the owner, set-id bits cleared. Err when a directory
/// cannot be found as the job had it.
fn sweep(uid: u32, lease: &Lease) -> Result<Swept, String> {
    let mut done = Swept {
        processes: kill_all(uid),
        files: 0,
    };
    for dir in &lease.dirs {
        let top = match directory_of(dir, &lease.fds) {
            Ok(fd) => fd,
            Err(e) => return Err(format!("{} in {}: {e:#}", dir.path, dir.root.display())),
        };
        match give_back(uid, lease.owner_uid, lease.owner_gid, top) {
            Ok(n) => done.files += n,
            Err(e) => return Err(format!("{} in {}: {e:#}", dir.path, dir.root.display())),
        }
    }
    Ok(done)
}

/// The directory a job had, readable: from the fd opened when it started,
/// else (after a restart) by its path, only if it is still that directory.
fn directory_of(dir: &Writable, fds: &[Arc<OwnedFd>]) -> Result<OwnedFd> {
    let reopen = |fd: &OwnedFd| -> Result<OwnedFd> {
        let r = nix::fcntl::open(
            format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // SAFETY: a fresh fd from open().
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    };
    for fd in fds {
        let st = fstat(fd.as_raw_fd())?;
        if (st.st_dev, st.st_ino) == (dir.dev, dir.ino) {
            return reopen(fd);
        }
    }
    let root = crate::in_root::open_dir(&dir.root)?;
    let found = crate::in_root::open(&root, &dir.path, libc::O_PATH | libc::O_DIRECTORY)
        .context("the directory is gone")?;
    let st = fstat(found.as_raw_fd())?;
    if (st.st_dev, st.st_ino) != (dir.dev, dir.ino) {
        anyhow::bail!(
            "the path now names another directory than the job's (it was moved or replaced)"
        );
    }
    reopen(&found)
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

/// Walks `top` (never following a symlink while walking, never leaving its
/// filesystem: only the working directory's own mount was writable) and
/// hands every entry owned by `uid` (or its group) to the owner. Returns how
/// many it changed.
fn give_back(uid: u32, owner: u32, owner_gid: u32, top: OwnedFd) -> Result<usize> {
    let dev = fstat(top.as_raw_fd())?.st_dev;
    let gid = uid; // slot users' gid is their uid
    let mut changed = 0;
    // The owner's ids where the slot user's were; None leaves an id as is.
    let handed_back = |st: &libc::stat| {
        (
            (st.st_uid == uid).then_some(owner.into()),
            (st.st_gid == gid).then_some(owner_gid.into()),
        )
    };
    let fix = |fd: &OwnedFd| -> nix::Result<bool> {
        let st = fstat(fd.as_raw_fd())?;
        if st.st_uid != uid && st.st_gid != gid {
            return Ok(false);
        }
        let (new_uid, new_gid) = handed_back(&st);
        nix::unistd::fchown(fd.as_raw_fd(), new_uid, new_gid)?;
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
                    let (new_uid, new_gid) = handed_back(&st);
                    if nix::unistd::fchownat(
                        Some(d.as_raw_fd()),
                        name.as_os_str(),
                        new_uid,
                        new_gid,
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

    fn workdir(p: &Path) -> Option<(Writable, Arc<OwnedFd>)> {
        let (fd, w) = open_workdir(Path::new("/"), p.to_str().unwrap(), false)
            .unwrap()
            .unwrap();
        Some((w, Arc::new(fd)))
    }

    #[test]
    fn a_lease_is_per_owner_and_a_uid_passes_on_only_after_its_sweep() {
        let work = tempfile::tempdir().unwrap();
        let cwd = work.path().join("cwd");
        std::fs::create_dir_all(cwd.join("sub")).unwrap();
        let s = SlotUsers::open(work.path(), 64200, 64201).unwrap();
        let claim = |job, owner| s.claim(job, owner, owner, workdir(&cwd)).unwrap();
        let (a1, a2, b) = (claim(1, 1000), claim(2, 1000), claim(3, 1001));
        assert_eq!(
            (a1, a2, b),
            (Some(64200), Some(64200), Some(64201)),
            "one uid per owner"
        );
        assert_eq!(claim(4, 1002), None, "all leased");

        // Files the slot uid left, one setuid, one in a subdirectory.
        let f = cwd.join("sub/copy");
        std::fs::write(&f, "x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o4755)).unwrap();
        nix::unistd::chown(&f, Some(64200.into()), Some(64200.into())).unwrap();
        nix::unistd::chown(&cwd.join("sub"), Some(64200.into()), Some(64200.into())).unwrap();
        // The path is swapped for another directory meanwhile: the sweep
        // still walks the one the job had.
        std::fs::rename(&cwd, work.path().join("moved")).unwrap();
        std::fs::create_dir(&cwd).unwrap();
        let f = work.path().join("moved/sub/copy");

        assert!(s.release(1).is_none(), "alice still has job 2");
        let (uid, swept) = s.release(2).unwrap();
        assert_eq!((uid, swept.files), (64200, 2));
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1000, 0o755));
        // Now the uid may go to someone else.
        assert_eq!(claim(4, 1002), Some(64200));
    }

    #[test]
    fn the_filesystem_root_is_no_working_directory_for_a_slot_user() {
        let e = format!(
            "{:#}",
            open_workdir(Path::new("/"), "/", false).err().unwrap()
        );
        assert!(e.contains("cannot be /"), "{e}");
        // In an image, / is read-only for the job anyway: no writable dir.
        assert!(open_workdir(Path::new("/"), "/", true).unwrap().is_none());
    }

    #[test]
    fn leases_left_by_a_crash_are_swept_at_start_up_or_quarantined() {
        let work = tempfile::tempdir().unwrap();
        let (kept, moved) = (work.path().join("kept"), work.path().join("moved"));
        std::fs::create_dir_all(&kept).unwrap();
        std::fs::create_dir_all(&moved).unwrap();
        let s = SlotUsers::open(work.path(), 64210, 64211).unwrap();
        for (job, owner, dir) in [(1, 1000, &kept), (2, 1001, &moved)] {
            s.claim(job, owner, owner, workdir(dir)).unwrap().unwrap();
        }
        let f = kept.join("left");
        std::fs::write(&f, "x").unwrap();
        nix::unistd::chown(&f, Some(64210.into()), Some(64210.into())).unwrap();
        drop(s); // the starter died; then one directory is replaced
        std::fs::rename(&moved, work.path().join("elsewhere")).unwrap();
        std::fs::create_dir(&moved).unwrap();
        let s = SlotUsers::open(work.path(), 64210, 64211).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), 1000, "swept");
        let listed = SlotUsers::list(work.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, 64211);
        assert!(listed[0]
            .3
            .as_deref()
            .unwrap()
            .contains("another directory"));
        // 64211 stays out of service; 64210 is free again.
        assert_eq!(s.claim(3, 1002, 1002, workdir(&kept)).unwrap(), Some(64210));
        assert_eq!(s.claim(4, 1003, 1003, workdir(&kept)).unwrap(), None);
        drop(s);
        SlotUsers::release_quarantined(work.path(), 64211).unwrap();
        assert!(SlotUsers::list(work.path())
            .unwrap()
            .iter()
            .all(|l| l.0 != 64211));
    }
}
