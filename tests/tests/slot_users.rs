//! Slot uids pass from one owner's jobs to another's: the attack of a job
//! that leaves a setuid copy of a program behind for later, and what stops
//! it. Also images: mounted, never modified, and only what the owner can read.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use stj_tests::{ok, rootfs, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);
const SLOT: u32 = 64300;

/// Host pids of processes with `uid` among their ids.
fn processes_of(uid: u32) -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().into_owned();
            let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            line.split_whitespace()
                .skip(1)
                .any(|u| u == uid.to_string())
                .then_some(pid)
        })
        .collect()
}

#[test]
fn a_slot_uid_carries_nothing_from_one_owner_to_the_next() {
    let mut c = Cluster::new();
    // One slot uid: the second owner's job must get the first one's.
    c.start_slot_user_starter("node1", 2, SLOT, SLOT);
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    for u in [&alice, &bob] {
        fs::set_permissions(c.workdir(u), fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let awd = c.workdir(&alice);
    let attack = "\
        cp /bin/cat mycat; chmod u+s mycat && echo chmod:worked || echo chmod:refused; \
        install -m 4755 /bin/cat mycat2 && echo install:worked || echo install:refused; \
        python3 -c 'import os; os.open(\"mycat3\", os.O_CREAT | os.O_WRONLY, 0o4755)' 2>/dev/null && echo open:worked || echo open:refused; \
        cp /bin/cat /var/tmp/left-by-a-slot-job 2>/dev/null && echo outside:writable || echo outside:read-only; \
        setsid sleep 86420 & \
        echo done";
    let a = c.submit(&alice, &["--", "sh", "-c", attack]);
    c.wait_state(a, "completed", T);
    let printed = fs::read_to_string(awd.join(format!("stj-{a}.out"))).unwrap();
    for expect in [
        "chmod:refused",
        "install:refused",
        "open:refused",
        "outside:read-only",
        "done",
    ] {
        assert!(printed.lines().any(|l| l == expect), "{expect}: {printed}");
    }
    wait_until("the lease's sweep", T, || {
        c.starter_log("node1")
            .contains("slot user's lease ended; swept")
            .then_some(())
    });
    // Nothing of the slot uid is left: no process, and every file the job
    // made is alice's now, without a set-id bit.
    assert!(processes_of(SLOT).is_empty(), "{:?}", processes_of(SLOT));
    for e in fs::read_dir(&awd).unwrap().flatten() {
        let m = e.metadata().unwrap();
        assert_ne!(m.uid(), SLOT, "{:?}", e.path());
        assert_eq!(m.mode() & 0o6000, 0, "{:?} is set-id", e.path());
    }
    assert!(!std::path::Path::new("/var/tmp/left-by-a-slot-job").exists());

    // Bob's job now runs as the same uid, with a private file of his.
    let bwd = c.workdir(&bob);
    let b = c.submit(
        &bob,
        &[
            "--",
            "sh",
            "-c",
            "umask 077; echo bobs-secret > secret; sleep 86421",
        ],
    );
    c.wait_state(b, "running", T);
    let out = c.ssh_to_job(&bob, &[&b.to_string(), "id -u; cat secret"], None);
    // The session logs in as the slot user the node names, quietly: the
    // ssh started for the owner's name goes away without a word.
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    let id = ok(out);
    assert_eq!(id, format!("{SLOT}\nbobs-secret\n"));
    assert_eq!(fs::metadata(bwd.join("secret")).unwrap().uid(), SLOT);
    // No file anywhere in the pool grants the slot uid to whoever runs it.
    let setid = std::process::Command::new("find")
        .arg(c.path())
        .args(["-xdev", "-uid", &SLOT.to_string(), "-perm", "/6000"])
        .output()
        .unwrap();
    assert!(
        setid.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&setid.stdout)
    );
    // Inside bob's job too, no set-id program gains anything.
    let out = ok(c.ssh_to_job(
        &bob,
        &[
            &b.to_string(),
            "grep NoNewPrivs /proc/self/status; chmod u+s secret || echo refused",
        ],
        None,
    ));
    assert!(
        out.contains("NoNewPrivs:\t1") && out.contains("refused"),
        "{out}"
    );
}

#[test]
fn an_image_is_mounted_not_modified() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    // A root-owned image without proc, dev or tmp: nothing may be created
    // in it, yet the job gets all three.
    let img = rootfs::busybox(&c.path().join("root-image"));
    fs::remove_dir(img.join("tmp")).unwrap();
    let before: Vec<String> = {
        let mut v: Vec<String> = fs::read_dir(&img)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mtime = fs::metadata(&img).unwrap().mtime();
    let id = c.submit(
        &alice,
        &[
            "--image",
            img.to_str().unwrap(),
            "--cwd",
            "/work",
            "--output",
            "/work/out",
            "--",
            "sh",
            "-c",
            "ls -d /proc/1 /dev/null /tmp /.stj /etc/image-marker; touch /new-at-top 2>/dev/null || echo top:read-only",
        ],
    );
    c.wait_state(id, "completed", T);
    let out = fs::read_to_string(img.join("work/out")).unwrap();
    assert!(
        out.contains("/proc/1") && out.contains("/tmp") && out.contains("/.stj"),
        "{out}"
    );
    assert!(out.contains("top:read-only"), "{out}");
    let mut after: Vec<String> = fs::read_dir(&img)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    after.sort();
    assert_eq!(before, after, "nothing was created in the image");
    assert_eq!(fs::metadata(&img).unwrap().mtime(), mtime);

    // A directory alice cannot read is no image for her job: refused, and
    // root created nothing in it either.
    let noread = c.path().join("noread");
    fs::create_dir_all(noread.join("bin")).unwrap();
    fs::set_permissions(&noread, fs::Permissions::from_mode(0o700)).unwrap();
    let id = c.submit(
        &alice,
        &["--image", noread.to_str().unwrap(), "--", "ls", "/"],
    );
    let job = c.wait_state(id, "completed", T);
    assert!(
        job["reason"]
            .as_str()
            .unwrap()
            .contains("cannot read the image"),
        "{job}"
    );
    assert_eq!(fs::read_dir(&noread).unwrap().count(), 1, "nothing created");
}

#[test]
fn swapping_image_entries_for_symlinks_reaches_nothing_outside() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    // What alice must never see: a readable directory under one she cannot enter.
    let vault = c.path().join("vault");
    fs::create_dir_all(vault.join("open")).unwrap();
    fs::write(vault.join("open/secret"), "TOPSECRET\n").unwrap();
    fs::set_permissions(vault.join("open"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(vault.join("open/secret"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&vault, fs::Permissions::from_mode(0o700)).unwrap();
    // Her own image, with many top-level directories she keeps swapping for
    // symlinks to the vault while jobs start.
    let img = rootfs::busybox(&c.workdir(&alice).join("img"));
    std::os::unix::fs::symlink("bin", img.join("sbin")).unwrap();
    for i in 0..200 {
        fs::create_dir(img.join(format!("d{i}"))).unwrap();
    }
    let out_dir = img.join("work");
    std::process::Command::new("chown")
        .args(["-R", &format!("{}:{}", alice.uid, alice.gid)])
        .arg(&img)
        .status()
        .unwrap();
    let racer = format!(
        "import os, time\n\
         os.chdir('{}')\n\
         end = time.time() + 60\n\
         while time.time() < end and not os.path.exists('work/stop'):\n\
         \x20   for i in range(200):\n\
         \x20       d = 'd%d' % i\n\
         \x20       try:\n\
         \x20           os.rename(d, 't%d' % i); os.symlink('{}', d); os.unlink(d); os.rename('t%d' % i, d)\n\
         \x20       except OSError:\n\
         \x20           pass\n",
        img.display(),
        vault.join("open").display()
    );
    let mut race = std::process::Command::new("python3");
    race.args(["-c", &racer]);
    std::os::unix::process::CommandExt::uid(&mut race, alice.uid);
    std::os::unix::process::CommandExt::gid(&mut race, alice.gid);
    let mut race = race.spawn().unwrap();
    let ids: Vec<u64> = (0..30)
        .map(|i| {
            c.submit(
                &alice,
                &[
                    "--image",
                    img.to_str().unwrap(),
                    "--cwd",
                    "/work",
                    "--output",
                    &format!("/work/out{i}"),
                    "--",
                    "sh",
                    "-c",
                    "cat /d*/secret /t*/secret 2>/dev/null; readlink /sbin",
                ],
            )
        })
        .collect();
    for id in &ids {
        c.wait_state(*id, "completed", T);
    }
    fs::write(out_dir.join("stop"), "").unwrap();
    race.wait().unwrap();
    for i in 0..30 {
        let out = fs::read_to_string(out_dir.join(format!("out{i}"))).unwrap_or_default();
        assert!(!out.contains("TOPSECRET"), "job {i} read the vault: {out}");
        assert!(
            out.contains("bin"),
            "the image's own symlink is there: {out:?}"
        );
    }
}

#[test]
fn the_sweep_walks_the_directory_the_job_had_whatever_its_path_became() {
    let mut c = Cluster::new();
    let slot = 64310;
    c.start_slot_user_starter("node1", 2, slot, slot);
    let alice = TestUser::alice();
    let wd = c.workdir(&alice);
    for d in ["real", "decoy"] {
        fs::create_dir_all(wd.join(d)).unwrap();
        fs::set_permissions(wd.join(d), fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let lnk = wd.join("lnk");
    std::os::unix::fs::symlink(wd.join("real"), &lnk).unwrap();
    let id = c.submit(
        &alice,
        &[
            "--cwd",
            lnk.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "umask 077; echo planted > planted; sleep 86430",
        ],
    );
    c.wait_state(id, "running", T);
    wait_until("the job to write its file", T, || {
        wd.join("real/planted").exists().then_some(())
    });
    assert_eq!(fs::metadata(wd.join("real/planted")).unwrap().uid(), slot);
    // The owner points the path elsewhere before the job ends.
    fs::remove_file(&lnk).unwrap();
    std::os::unix::fs::symlink(wd.join("decoy"), &lnk).unwrap();
    ok(c.stj(Some(&alice), &wd, &["rm", &id.to_string()]));
    wait_until("the lease's sweep", T, || {
        c.starter_log("node1")
            .contains("slot user's lease ended; swept")
            .then_some(())
    });
    let m = fs::metadata(wd.join("real/planted")).unwrap();
    assert_eq!(
        (m.uid(), m.mode() & 0o777),
        (alice.uid, 0o600),
        "swept where the job really wrote"
    );

    // The node's root is no working directory for a slot-user job.
    let root_job = c.submit(&alice, &["--cwd", "/", "--", "true"]);
    let job = c.wait_state(root_job, "completed", T);
    assert!(
        job["reason"].as_str().unwrap().contains("cannot be /"),
        "{job}"
    );
}
