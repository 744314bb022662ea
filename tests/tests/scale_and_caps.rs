//! What grows with use stays usable and bounded: replies are paged, a flood
//! of denials is summed up, history is indexed and pruned, and what a user
//! submits is capped where it would break later.

use std::time::{Duration, Instant};

use ssh_to_job::attach;
use stj_tests::{ok, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

#[test]
fn big_jobs_and_a_flood_of_denials_leave_q_and_audit_working() {
    let c = Cluster::new();
    let (alice, bob) = (TestUser::alice(), TestUser::bob());
    // 30 jobs with about 250 KiB of environment each: 7.5 MiB in all,
    // more than a reply may be.
    let big = "x".repeat(25 * 1024);
    let env: Vec<String> = (0..10).map(|i| format!("BIG{i}={big}")).collect();
    let mut args: Vec<&str> = Vec::new();
    for e in &env {
        args.extend(["--env", e.as_str()]);
    }
    args.extend(["--", "sleep", "1"]);
    let ids: Vec<u64> = (0..30).map(|_| c.submit(&alice, &args)).collect();
    for who in [Some(&alice), None] {
        let out = ok(c.stj(who, c.path(), &["q", "--json"]));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 30);
    }
    // Bob sees the 30 jobs too, without their environment.
    let out = ok(c.stj(Some(&bob), c.path(), &["q", "--json"]));
    assert!(!out.contains(&big[..100]));

    // 5,000 denied requests from bob in a few seconds, for alice's job and
    // for jobs that do not exist.
    let (socket, job) = (c.socket.clone(), ids[0]);
    stj_tests::as_user(&bob, move || {
        let rt = stj_tests::rt();
        rt.block_on(async {
            let mut cl = ssh_to_job::schedd_client::connect(&socket).await.unwrap();
            for i in 0..5000u64 {
                let target = if i % 2 == 0 { job } else { 900_000 + i };
                let r = cl
                    .request_session(stj_proto::user::RequestSessionRequest {
                        job_id: target,
                        client_pubkey: vec![7; 32],
                        ..Default::default()
                    })
                    .await;
                assert!(r.is_err());
            }
        })
    });
    // Root's audit still answers, in pages; bob's denials are there, up to
    // the rate, and summed up beyond it.
    let q = stj_schedd::queue::Queue::open(&c.state_dir.join(stj_schedd::queue::DB_FILE)).unwrap();
    let records = stj_tests::wait_until("the denials to be written", T, || {
        let r = q.sessions(0, Some(bob.uid)).unwrap();
        (r.len() >= 60).then_some(r)
    });
    assert!(
        records.len() < 70,
        "{} records for 5,000 denials",
        records.len()
    );
    assert!(
        records
            .iter()
            .any(|r| r.outcome.contains("there is no job")),
        "unknown jobs are recorded too"
    );
    let out = ok(c.stj(
        None,
        c.path(),
        &["audit", "--user", &bob.uid.to_string(), "--json"],
    ));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.as_array().unwrap().len() >= 60);
    // The summary of the rest arrives when bob's minute is over, or with
    // his next denial after it; housekeeping writes it within a minute.
    stj_tests::wait_until("the summary record", Duration::from_secs(120), || {
        q.sessions(0, Some(bob.uid))
            .unwrap()
            .iter()
            .any(|r| r.outcome.contains("more requests of this user were denied"))
            .then_some(())
    });
}

#[test]
fn a_hundred_thousand_jobs_of_history_cost_q_and_submit_little() {
    let mut c = Cluster::new();
    c.start_starter("node1", 2);
    let alice = TestUser::alice();
    let live = c.submit(&alice, &["--", "sleep", "86440"]);
    c.wait_state(live, "running", T);
    // 100,000 ended jobs, written straight into the queue in one go.
    {
        let mut db =
            rusqlite::Connection::open(c.state_dir.join(stj_schedd::queue::DB_FILE)).unwrap();
        db.busy_timeout(Duration::from_secs(10)).unwrap();
        let tx = db.transaction().unwrap();
        {
            let mut ins = tx
                .prepare(
                    "INSERT INTO jobs (owner_uid, owner_gid, owner_name, state, submit_time, end_time, spec) VALUES (?1, ?1, 'stjtest-alice', 3, 1, strftime('%s','now'), x'')",
                )
                .unwrap();
            for _ in 0..100_000 {
                ins.execute([alice.uid]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let time = |args: &[&str]| {
        let t = Instant::now();
        let out = ok(c.stj(Some(&alice), &c.workdir(&alice), args));
        (t.elapsed(), out)
    };
    let (q_live, out) = time(&["q", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "stj q lists live jobs only");
    let (q_all, out) = time(&["q", "--all", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v.as_array().unwrap().len(),
        100_001,
        "--all pages through history"
    );
    let (submit, out) = time(&["submit", "--", "sleep", "86441"]);
    let id: u64 = out.trim().parse().unwrap();
    c.wait_state(id, "running", T);
    // A session still works (the grant's job lookup is by key).
    let out = ok(c.ssh_to_job(&alice, &[&id.to_string(), "echo ok"], None));
    assert_eq!(out, "ok\n");
    eprintln!(
        "with 100,000 jobs of history: stj q {q_live:?}, stj q --all {q_all:?}, stj submit {submit:?}"
    );
    let _ = attach::Mode::Auto;
}

#[test]
fn submits_are_capped_where_they_would_break_later_and_rm_takes_many() {
    let c = Cluster::with_schedd_config("max_jobs_per_user = 5");
    let alice = TestUser::alice();
    let wd = c.workdir(&alice);
    // More variables than a session's sshd would take.
    let mut args = vec!["submit".to_string()];
    for i in 0..901 {
        args.extend(["--env".into(), format!("V{i}=1")]);
    }
    args.extend(["--".into(), "true".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = c.stj(Some(&alice), &wd, &argv);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at most 900 --env"));
    // Five live jobs, then the cap, naming the knob.
    let ids: Vec<String> = (0..5)
        .map(|_| c.submit(&alice, &["--", "true"]).to_string())
        .collect();
    let out = c.stj(Some(&alice), &wd, &["submit", "--", "true"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_jobs_per_user") && err.contains("you have 5 jobs"),
        "{err}"
    );
    // One stj rm for all of them (and one that does not exist): the five go,
    // the unknown one is named, the exit status says so.
    let mut rm = vec!["rm"];
    rm.extend(ids.iter().map(String::as_str));
    rm.push("999999");
    let out = c.stj(Some(&alice), &wd, &rm);
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        said.lines().filter(|l| l.ends_with("removed")).count(),
        5,
        "{said}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job 999999"));
    // Room again.
    c.submit(&alice, &["--", "true"]);
}

/// A burst of attaches by one user (Ansible's forks, pdsh-style fan-out, an
/// editor's connections): 100 at once, more than max_pending_per_user, all
/// get in — the cap makes them queue, not fail.
#[test]
fn a_hundred_parallel_attaches_by_one_user_all_succeed() {
    let mut c = Cluster::new();
    c.start_starter("node1", 1);
    let alice = TestUser::alice();
    let id = c.submit(&alice, &["--", "sleep", "86451"]);
    c.wait_state(id, "running", T);
    let jid = id.to_string();
    let runs: Vec<_> = (0..100)
        .map(|_| {
            let child = c
                .ssh_to_job_cmd(&alice, &[&jid, "echo ok"], None)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let started = Instant::now();
            std::thread::spawn(move || (child.wait_with_output().unwrap(), started.elapsed()))
        })
        .collect();
    let mut times = Vec::new();
    let mut failed = Vec::new();
    for r in runs {
        let (out, took) = r.join().unwrap();
        times.push(took);
        if !(out.status.success() && out.stdout == b"ok\n") {
            failed.push(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
    times.sort();
    eprintln!(
        "100 parallel attaches: p50 {:?}, p99 {:?}, max {:?}",
        times[49], times[98], times[99]
    );
    assert!(
        failed.is_empty(),
        "{} of 100 failed; the first said: {}",
        failed.len(),
        failed[0]
    );
    let granted = c
        .audit(Some(&alice), id)
        .iter()
        .filter(|r| r["outcome"] == "granted")
        .count();
    assert!(granted >= 100, "{granted} grants for 100 sessions");
}
