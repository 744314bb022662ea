//! One full audit record per session (path, start, end, bytes each way,
//! exit status), and the per-user caps on open sessions and unused
//! capabilities, attacked.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use stj_tests::{wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run was refused, and the message names the knob that refused it.
fn refused_by(out: &std::process::Output, knob: &str) {
    assert_eq!(out.status.code(), Some(255));
    assert!(stderr(out).contains(knob), "{}", stderr(out));
}

#[test]
fn every_session_leaves_one_record_with_path_times_bytes_and_exit_status() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86431"]);
    c.wait_state(job, "running", T);
    let input = c.path().join("input");
    std::fs::write(&input, vec![b'x'; 300_000]).unwrap();
    std::fs::set_permissions(&input, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();

    let id = job.to_string();
    let runs = [
        (
            "direct",
            "head -c 2000000 /dev/zero; cat >/dev/null; exit 7",
            7,
        ),
        ("reverse", "cat >/dev/null; exit 3", 3),
        ("relay", "head -c 1000000 /dev/zero; cat >/dev/null", 0),
    ];
    for (mode, cmd, code) in runs {
        let out = c.ssh_to_job(&alice, &["--mode", mode, &id, cmd], Some(&input));
        assert_eq!(out.status.code(), Some(code), "{mode}: {}", stderr(&out));
    }

    // The node reports the end, the client the exit status: both arrive
    // within moments of the session's end.
    let records = wait_until("three complete session records", T, || {
        let r = c.audit(Some(&alice), job);
        (r.len() == 3
            && r.iter()
                .all(|x| x["ended_at"].is_i64() && x["exit_status"].is_i64()))
        .then_some(r)
    });
    for ((mode, _, code), r) in runs.iter().zip(&records) {
        assert_eq!(r["outcome"], "granted", "{r}");
        assert_eq!(r["path"], *mode, "{r}");
        assert_eq!(r["node"], "node1");
        assert_eq!(r["uid"], alice.uid);
        assert_eq!(r["exit_status"], *code, "{r}");
        assert_eq!(r["end_note"], "", "{r}");
        let (issued, started, ended) = (
            r["issued_at"].as_i64().unwrap(),
            r["started_at"].as_i64().unwrap(),
            r["ended_at"].as_i64().unwrap(),
        );
        assert!(issued <= started && started <= ended, "{r}");
        // The 300 KB sent in, and what the command wrote out, plus SSH's
        // own overhead.
        let up = r["bytes_from_client"].as_u64().unwrap();
        let down = r["bytes_to_client"].as_u64().unwrap();
        assert!((300_000..400_000).contains(&up), "{mode}: up {up}");
        let want_down = match *mode {
            "direct" => 2_000_000,
            "relay" => 1_000_000,
            _ => 0,
        };
        assert!(
            down >= want_down && down < want_down + 100_000,
            "{mode}: down {down}"
        );
    }

    // The table for people has every column.
    let out = c.stj(Some(&alice), c.path(), &["audit", "--job", &id]);
    let table = String::from_utf8_lossy(&out.stdout);
    for word in [
        "PATH", "DURATION", "UP", "DOWN", "EXIT", "reverse", "1.9 MiB",
    ] {
        assert!(table.contains(word), "{word} missing:\n{table}");
    }

    // A request with a malformed key is refused, and recorded too.
    let socket = c.socket.clone();
    let refused = stj_tests::as_user(&alice, move || {
        stj_tests::rt().block_on(async {
            let mut cl = ssh_to_job::schedd_client::connect(&socket).await.unwrap();
            cl.request_session(stj_proto::user::RequestSessionRequest {
                job_id: job,
                client_pubkey: vec![7; 31],
                ..Default::default()
            })
            .await
            .unwrap_err()
        })
    });
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let records = c.audit(Some(&alice), job);
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(
        records.iter().any(|r| r["outcome"]
            .as_str()
            .unwrap()
            .contains("client_pubkey must be 32 bytes")),
        "{records:?}"
    );
}

/// `ssh-to-job J 'echo up; sleep 600'`, returned once the session answered.
pub fn open_session(c: &Cluster, user: &TestUser, job: u64) -> std::process::Child {
    let mut child = c
        .ssh_to_job_cmd(user, &[&job.to_string(), "echo up; sleep 600"], None)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    child
}

#[test]
fn per_user_caps_on_open_sessions_and_unused_capabilities() {
    let mut c = Cluster::with_schedd_config("max_sessions_per_user = 1\nmax_pending_per_user = 1");
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86432"]);
    c.wait_state(job, "running", T);
    let id = job.to_string();

    // One open session is alice's cap: a second waits for room (up to
    // --room-wait), then is refused, and says which knob holds it.
    let mut first = open_session(&c, &alice, job);
    wait_until("the node to report the session open", T, || {
        c.audit(None, job)
            .iter()
            .any(|r| r["started_at"].is_i64())
            .then_some(())
    });
    refused_by(
        &c.ssh_to_job(&alice, &["--room-wait", "1", &id, "true"], None),
        "max_sessions_per_user",
    );
    // Root is not capped.
    let root = TestUser::get("root");
    let out = c.ssh_to_job(&root, &[&id, "echo root-in"], None);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("root-in"),
        "{}",
        stderr(&out)
    );

    // One that waits gets in when the session ends: the slot is free again.
    // (SIGTERM: ssh-to-job passes it on to ssh; a SIGKILL would leave ssh
    // running the session.)
    let waiting = c
        .ssh_to_job_cmd(&alice, &[&id, "echo waited"], None)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It was told no at least once (the run above was, too) and waits.
    wait_until("the waiting run to be refused once", T, || {
        (c.audit(Some(&alice), job)
            .iter()
            .filter(|r| {
                r["outcome"]
                    .as_str()
                    .unwrap()
                    .contains("max_sessions_per_user")
            })
            .count()
            >= 2)
            .then_some(())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    first.wait().unwrap();
    let waited = waiting.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&waited.stdout),
        "waited\n",
        "{}",
        stderr(&waited)
    );
    let out = wait_until("alice to get a session again", T, || {
        let out = c.ssh_to_job(&alice, &[&id, "echo again"], None);
        out.status.success().then_some(out)
    });
    assert_eq!(String::from_utf8_lossy(&out.stdout), "again\n");

    // A capability that was granted and never used counts until it
    // expires: a run that fails after the grant (its reverse socket cannot
    // be made) holds alice's one unused capability.
    let out = c.ssh_to_job(
        &alice,
        &[
            "--mode",
            "reverse",
            "--daemon-sock-dir",
            "/nonexistent/stj",
            &id,
            "true",
        ],
        None,
    );
    assert_ne!(out.status.code(), Some(0));
    refused_by(
        &c.ssh_to_job(&alice, &["--room-wait", "0", &id, "true"], None),
        "max_pending_per_user",
    );

    // Both refusals are in the audit records, with their reasons.
    let records = wait_until("the refusals in the audit records", T, || {
        let r = c.audit(Some(&alice), job);
        let has = |knob: &str| {
            r.iter()
                .any(|x| x["outcome"].as_str().unwrap().contains(knob))
        };
        (has("max_sessions_per_user") && has("max_pending_per_user")).then_some(r)
    });
    assert!(records
        .iter()
        .filter(|r| r["outcome"] != "granted")
        .all(|r| r["path"].is_null() && r["started_at"].is_null()));
}

#[test]
fn a_grant_that_cannot_be_audited_is_not_given() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86433"]);
    c.wait_state(job, "running", T);
    // The schedd's state moves to a small filesystem of its own.
    c.kill_schedd();
    let backup = c.path().join("state-backup");
    let sh = |cmd: String| stj_tests::sh(&cmd);
    let state = c.state_dir.display().to_string();
    sh(format!(
        "cp -a {state} {b} && mount -t tmpfs -o size=4m tmpfs {state} && cp -a {b}/. {state}/ && chmod 700 {state}",
        b = backup.display()
    ));
    c.start_schedd();
    c.wait_registrations("node1", 2, T);
    // Full: nothing more can be written there.
    let _ = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("dd if=/dev/zero of={state}/fill bs=64k 2>/dev/null"),
        ])
        .status();
    let out = c.ssh_to_job(&alice, &[&job.to_string(), "echo should-not-run"], None);
    let err = stderr(&out);
    let granted_anyway = out.status.success();
    sh(format!("rm -f {state}/fill"));
    assert!(
        !granted_anyway,
        "a session ran without an audit record: {err}"
    );
    assert!(out.stdout.is_empty());
    assert!(
        err.contains("could not record it") && err.contains("queue.sqlite") && err.contains("full"),
        "{err}"
    );
    assert!(c
        .schedd_log()
        .contains("grants are refused until they can be recorded"));
    // With room again, sessions are granted, and recorded.
    let out = c.ssh_to_job(&alice, &[&job.to_string(), "echo recorded"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    let records = c.audit(None, job);
    assert!(
        records.iter().any(|r| r["outcome"] == "granted"),
        "{records:?}"
    );
    c.kill_schedd();
    sh(format!("umount {state}"));
}

/// SIGTERM drains the schedd: every record it accepted is committed before
/// it exits, down to the summary of a denial flood whose minute is not
/// over yet (nothing else would ever write that one).
#[test]
fn sigterm_loses_no_audit_record() {
    let mut c = Cluster::new();
    let bob = TestUser::bob();
    let socket = c.socket.clone();
    stj_tests::as_user(&bob, move || {
        stj_tests::rt().block_on(async {
            let mut cl = ssh_to_job::schedd_client::connect(&socket).await.unwrap();
            for i in 0..100 {
                let r = cl
                    .request_session(stj_proto::user::RequestSessionRequest {
                        job_id: 900_000 + i,
                        client_pubkey: vec![7; 32],
                        ..Default::default()
                    })
                    .await;
                assert!(r.is_err());
            }
        })
    });
    // Right after the last reply, not a moment later.
    let status = c.stop_schedd();
    assert!(status.success(), "the schedd exits 0 on SIGTERM: {status}");
    let q = stj_schedd::queue::Queue::open(&c.state_dir.join(stj_schedd::queue::DB_FILE)).unwrap();
    let records = q.sessions(0, Some(bob.uid)).unwrap();
    let one_by_one = records
        .iter()
        .filter(|r| r.outcome.contains("there is no job"))
        .count();
    let summaries: Vec<_> = records
        .iter()
        .filter(|r| r.outcome.contains("more requests of this user were denied"))
        .collect();
    assert_eq!(
        one_by_one,
        stj_schedd::DENIALS_PER_MINUTE as usize,
        "every denial up to the rate is recorded"
    );
    assert_eq!(
        summaries.len(),
        1,
        "and the rest summed up ({} records in all)",
        records.len()
    );
    let rest = 100 - one_by_one;
    assert!(
        summaries[0]
            .outcome
            .starts_with(&format!("{rest} more requests")),
        "{}",
        summaries[0].outcome
    );
    assert!(
        c.schedd_log().contains("schedd drained"),
        "{}",
        c.schedd_log()
    );
}

/// The schedd as a library: `run` on listeners bound first, stopped by its
/// shutdown future (no signal, no process): it returns Ok, removes its
/// socket, and what it recorded is committed by then.
#[test]
fn the_schedd_runs_in_process_and_drains_on_its_shutdown_future() {
    let dir = tempfile::Builder::new()
        .prefix("stj-inproc-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut config = stj_schedd::ScheddConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.socket = dir.path().join("schedd.sock");
    config.state_dir = dir.path().join("state");
    config.daemon_sock_dir = dir.path().join("daemon_sock");
    std::fs::create_dir_all(&config.state_dir).unwrap();
    let socket = config.socket.clone();
    stj_tests::rt().block_on(async {
        let listeners = stj_schedd::Listeners::bind(&config).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let client = async {
            let mut cl = ssh_to_job::schedd_client::connect(&socket).await.unwrap();
            let refused = cl
                .request_session(stj_proto::user::RequestSessionRequest {
                    job_id: 77,
                    client_pubkey: vec![7; 32],
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert_eq!(
                stj_proto::refusal::of(&refused),
                stj_proto::user::Refusal::NoSuchJob
            );
            stop.send(()).unwrap();
        };
        let (ran, ()) = tokio::join!(
            stj_schedd::run(config, listeners, async {
                stopped.await.ok();
            }),
            client
        );
        ran.unwrap();
    });
    assert!(
        !socket.exists(),
        "the user socket is removed on the way out"
    );
    let q =
        stj_schedd::queue::Queue::open(&dir.path().join("state").join(stj_schedd::queue::DB_FILE))
            .unwrap();
    let records = q.sessions(77, None).unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert!(records[0].outcome.contains("there is no job 77"));
}
