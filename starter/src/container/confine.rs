//! What a confined job (one running as a slot user) and its sessions may
//! not do beyond what their uid forbids. A slot uid passes from one owner's
//! jobs to another's, so nothing a job does may carry that uid's identity
//! past the job:
//! - no set-user-id or set-group-id file can be made (chmod, open/creat
//!   with such a mode, mknod): a copy of a program made setuid to the slot
//!   uid and run later, outside any job, would act as the next owner's job;
//! - no_new_privs: set-id bits and file capabilities are ignored on exec
//!   (the view is nosuid too, `view.rs`);
//! - io_uring is unavailable (it makes system calls no filter sees), and
//!   openat2 says ENOSYS (its mode sits behind a pointer a filter cannot
//!   read), so callers fall back to openat.
//! Processes of another architecture (32-bit system calls) are killed by
//! the filter's architecture check.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

const SET_ID: [u64; 2] = [libc::S_ISUID as u64, libc::S_ISGID as u64];

/// Rules matching a mode argument (at `arg`) with a set-id bit.
fn set_id_mode(arg: u8) -> Result<Vec<SeccompRule>> {
    SET_ID
        .iter()
        .map(|&bit| {
            Ok(SeccompRule::new(vec![SeccompCondition::new(
                arg,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::MaskedEq(bit),
                bit,
            )?])?)
        })
        .collect()
}

fn target() -> Result<seccompiler::TargetArch> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|e| anyhow::anyhow!("no seccomp support for this architecture: {e:?}"))
}

/// A filter that fails the matching system calls with `errno` and lets
/// every other one through.
fn failing(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: i32) -> Result<BpfProgram> {
    Ok(SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        target()?,
    )?
    .try_into()?)
}

fn programs() -> Result<[BpfProgram; 2]> {
    let mut no_set_id: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    #[cfg(target_arch = "x86_64")]
    {
        no_set_id.insert(libc::SYS_chmod, set_id_mode(1)?);
        no_set_id.insert(libc::SYS_creat, set_id_mode(1)?);
        no_set_id.insert(libc::SYS_open, set_id_mode(2)?);
        no_set_id.insert(libc::SYS_mknod, set_id_mode(1)?);
    }
    no_set_id.insert(libc::SYS_fchmod, set_id_mode(1)?);
    no_set_id.insert(libc::SYS_fchmodat, set_id_mode(2)?);
    no_set_id.insert(libc::SYS_fchmodat2, set_id_mode(2)?);
    no_set_id.insert(libc::SYS_openat, set_id_mode(3)?);
    no_set_id.insert(libc::SYS_mknodat, set_id_mode(2)?);

    let unseen: BTreeMap<i64, Vec<SeccompRule>> = [
        libc::SYS_openat2,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ]
    .into_iter()
    .map(|n| (n, vec![]))
    .collect();
    Ok([
        failing(no_set_id, libc::EPERM)?,
        failing(unseen, libc::ENOSYS)?,
    ])
}

/// Confines the calling process and everything it will start, for good
/// (filters cannot be removed). Called once root is dropped, just before
/// the job or sshd is exec'd, and in the job's init. What the filters
/// refuse is tested end to end (`tests/tests/slot_users.rs`).
pub fn apply() -> Result<()> {
    nix::sys::prctl::set_no_new_privs().context("cannot set no_new_privs")?;
    for p in programs()? {
        seccompiler::apply_filter(&p).context("cannot install the seccomp filter")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_machine() {
        let [a, b] = programs().unwrap();
        assert!(!a.is_empty() && !b.is_empty());
    }
}
