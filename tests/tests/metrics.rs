//! Prometheus metrics on both daemons (`metrics_listen`): `promtool check
//! metrics` accepts what they serve, and the session counters move by
//! exactly the sessions a test opened and the denials it provoked.

use std::io::{Read, Write};
use std::time::Duration;

use stj_tests::{ok, Cluster, TestUser};

const T: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET /metrics, the body.
fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    let (head, body) = r.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// The value of the sample `name` (with its labels) in a scrape; 0 if absent.
fn value(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

fn promtool_accepts(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/install-deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn both_daemons_serve_metrics_promtool_accepts_and_counters_move_exactly() {
    let (sp, np) = (free_port(), free_port());
    let mut c = Cluster::with_schedd_config(&format!("metrics_listen = \"127.0.0.1:{sp}\"\n"));
    c.start_starter_with(
        "node1",
        1,
        &["--metrics-listen", &format!("127.0.0.1:{np}")],
    );
    let alice = TestUser::alice();
    let bob = TestUser::bob();
    let job = c.submit(&alice, &["--", "sleep", "86441"]);
    c.wait_state(job, "running", T);
    let (s0, n0) = (scrape(sp), scrape(np));
    promtool_accepts(&s0);
    promtool_accepts(&n0);

    for _ in 0..2 {
        assert_eq!(
            ok(c.ssh_to_job(&alice, &[&job.to_string(), "echo in"], None)),
            "in\n"
        );
    }
    for _ in 0..3 {
        assert!(!c
            .ssh_to_job(&bob, &[&job.to_string(), "true"], None)
            .status
            .success());
    }
    let (s1, n1) = (scrape(sp), scrape(np));
    promtool_accepts(&s1);
    promtool_accepts(&n1);
    let moved = |a: &str, b: &str, sample: &str| value(b, sample) - value(a, sample);
    assert_eq!(moved(&s0, &s1, "stj_sessions_granted_total"), 2.0, "{s1}");
    assert_eq!(
        moved(&s0, &s1, "stj_sessions_denied_total{reason=\"not_owner\"}"),
        3.0,
        "{s1}"
    );
    assert_eq!(moved(&s0, &s1, "stj_grant_seconds_count"), 2.0);
    // The node: two handshakes accepted, each as the client's path took it.
    let accepted: f64 = ["direct", "reverse", "relay"]
        .iter()
        .map(|p| {
            moved(
                &n0,
                &n1,
                &format!("stj_starter_handshakes_total{{path=\"{p}\",outcome=\"accepted\"}}"),
            )
        })
        .sum();
    assert_eq!(accepted, 2.0, "{n1}");
    assert_eq!(moved(&n0, &n1, "stj_starter_attach_seconds_count"), 2.0);
    assert_eq!(value(&n1, "stj_starter_jobs_running"), 1.0);
    assert_eq!(value(&s1, "stj_starters{state=\"connected\"}"), 1.0);
    assert_eq!(value(&s1, "stj_jobs{state=\"running\"}"), 1.0);
    assert!(value(&s1, "stj_connection_caps{kind=\"tcp\"}") > 0.0);
    // Sessions reported started by the node, by path.
    let started: f64 = ["direct", "reverse", "relay"]
        .iter()
        .map(|p| {
            moved(
                &s0,
                &s1,
                &format!("stj_sessions_started_total{{path=\"{p}\"}}"),
            )
        })
        .sum();
    assert!(started >= 1.0, "{s1}");
}
