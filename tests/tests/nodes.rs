//! `stj nodes`: every starter the schedd knows, as `sinfo` shows nodes —
//! connected, silent after its network is cut, gone after kill -9.

use std::process::Stdio;
use std::time::Duration;

use stj_tests::{ok, wait_until, Cluster, TestUser};

const T: Duration = Duration::from_secs(60);

fn nodes(c: &Cluster, user: &TestUser) -> serde_json::Value {
    let out = ok(c.stj(Some(user), &c.workdir(user), &["nodes", "--json"]));
    serde_json::from_str(&out).unwrap()
}

fn state_of(c: &Cluster, user: &TestUser, name: &str) -> Option<String> {
    nodes(c, user)
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
        .and_then(|n| n["state"].as_str().map(str::to_string))
}

#[test]
fn a_starter_shows_connected_then_silent_when_cut_off_then_gone_after_kill_9() {
    let mut c = Cluster::with_net();
    // Short heartbeats so a cut is noticed in seconds.
    c.kill_schedd();
    std::fs::write(c.path().join("stj.toml"), "[schedd]\nheartbeat_secs = 1\n").unwrap();
    c.start_schedd();
    c.start_starter_with("node1", 2, &[]);
    let alice = TestUser::alice();
    let job = c.submit(&alice, &["--", "sleep", "86431"]);
    c.wait_state(job, "running", T);

    // A session held open shows in the node's count.
    let mut session = c
        .ssh_to_job_cmd(&alice, &[&job.to_string(), "sleep 4361"], None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let n = wait_until("the session to be counted", T, || {
        let all = nodes(&c, &alice);
        let n = all
            .as_array()?
            .iter()
            .find(|n| n["name"] == "node1")?
            .clone();
        (n["sessions_open"] == 1).then_some(n)
    });
    assert_eq!(n["state"], "connected", "{n}");
    assert_eq!(n["slots_total"], 2);
    assert_eq!(n["slots_used"], 1);
    assert_eq!(n["jobs"], serde_json::json!([job]));
    assert_eq!(n["version"], env!("CARGO_PKG_VERSION"));
    let net = c.net.as_ref().unwrap();
    // Where its link came from, as the schedd saw it: through the NAT
    // router, whose masquerade stands for the node.
    let from: std::net::SocketAddr = n["address"].as_str().unwrap().parse().unwrap();
    assert_eq!(from.ip().to_string(), "10.231.1.254", "{n}");
    assert!(n["last_heard"].as_i64().unwrap() > 0);
    session.kill().ok();
    session.wait().ok();
    let table = ok(c.stj(Some(&alice), &c.workdir(&alice), &["nodes"]));
    assert!(
        table.starts_with("NODE") && table.contains("connected") && table.contains("1/2"),
        "{table}"
    );

    // Cut the node off: silent, since when it was last heard.
    let node_ns = net.nodes[0].clone();
    let rules = [
        ["OUTPUT", "-d", "10.231.1.1", "-j", "DROP"],
        ["INPUT", "-s", "10.231.1.1", "-j", "DROP"],
    ];
    for r in &rules {
        net.iptables(&node_ns, &[&["-I"][..], &r[..]].concat());
    }
    wait_until("node1 to show silent", T, || {
        (state_of(&c, &alice, "node1").as_deref() == Some("silent")).then_some(())
    });
    for r in &rules {
        net.iptables(&node_ns, &[&["-D"][..], &r[..]].concat());
    }
    wait_until("node1 to be connected again", T, || {
        (state_of(&c, &alice, "node1").as_deref() == Some("connected")).then_some(())
    });

    // kill -9: its link is reset, it is gone.
    c.kill_starter("node1");
    wait_until("node1 to show gone", T, || {
        (state_of(&c, &alice, "node1").as_deref() == Some("gone")).then_some(())
    });
    // A name nobody enrolled is an error, not an empty list.
    let out = c.stj(Some(&alice), &c.workdir(&alice), &["nodes", "nosuchnode"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node \"nosuchnode\""));
}
