//! A small network of our own in network namespaces: a submit host (schedd
//! and clients), a router that NATs (MASQUERADE) two compute nodes, node
//! firewalls that drop every new inbound connection, and a submit-side
//! firewall that admits only the schedd's port.
//!
//!   submit 10.231.1.1 ── router 10.231.1.254 | 10.231.2.254 (br) ── node1 10.231.2.1
//!                                                                 └─ node2 10.231.2.2
//!   laptop 10.231.3.2 ── submit 10.231.3.1 (only its port 22; `add_laptop`)

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub const SCHEDD_PORT: u16 = 9618;
pub const SUBMIT_IP: &str = "10.231.1.1";

static NEXT: AtomicU32 = AtomicU32::new(0);

pub struct Net {
    pub submit: String,
    pub router: String,
    pub nodes: Vec<String>,
    /// A machine that reaches the submit (login) host's sshd and nothing else.
    pub laptop: Option<String>,
}

/// The submit (login) host as the laptop sees it.
pub const LOGIN_IP: &str = "10.231.3.1";

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run ip/iptables (iproute2, iptables)");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    pub fn new() -> Net {
        // Names are per process and per test so parallel tests never collide.
        let tag = format!(
            "stj{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            submit: format!("{tag}-submit"),
            router: format!("{tag}-router"),
            nodes: vec![format!("{tag}-node1"), format!("{tag}-node2")],
            laptop: None,
        };
        for ns in net.all() {
            run(&["ip", "netns", "add", &ns]);
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        let (s, r) = (net.submit.as_str(), net.router.as_str());
        run(&[
            "ip", "-n", r, "link", "add", "s0", "type", "veth", "peer", "name", "eth0", "netns", s,
        ]);
        run(&["ip", "-n", r, "addr", "add", "10.231.1.254/24", "dev", "s0"]);
        run(&["ip", "-n", r, "link", "set", "s0", "up"]);
        run(&["ip", "-n", s, "addr", "add", "10.231.1.1/24", "dev", "eth0"]);
        run(&["ip", "-n", s, "link", "set", "eth0", "up"]);
        // The submit host can route to the nodes; their firewalls are what stops it.
        run(&[
            "ip",
            "-n",
            s,
            "route",
            "add",
            "10.231.2.0/24",
            "via",
            "10.231.1.254",
        ]);
        run(&["ip", "-n", r, "link", "add", "br0", "type", "bridge"]);
        run(&[
            "ip",
            "-n",
            r,
            "addr",
            "add",
            "10.231.2.254/24",
            "dev",
            "br0",
        ]);
        run(&["ip", "-n", r, "link", "set", "br0", "up"]);
        for (i, n) in net.nodes.iter().enumerate() {
            let port = format!("n{i}");
            let ip = format!("10.231.2.{}/24", i + 1);
            run(&[
                "ip", "-n", r, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", n,
            ]);
            run(&["ip", "-n", r, "link", "set", &port, "master", "br0", "up"]);
            run(&["ip", "-n", n, "addr", "add", &ip, "dev", "eth0"]);
            run(&["ip", "-n", n, "link", "set", "eth0", "up"]);
            run(&[
                "ip",
                "-n",
                n,
                "route",
                "add",
                "default",
                "via",
                "10.231.2.254",
            ]);
            // NAT'd node: nothing gets in unless it asked for it.
            net.drop_new_inbound(n);
        }
        run(&[
            "ip",
            "netns",
            "exec",
            r,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        net.iptables(
            r,
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "10.231.2.0/24",
                "-o",
                "s0",
                "-j",
                "MASQUERADE",
            ],
        );
        // Firewalled submit host: only the schedd's one port is open.
        let port = SCHEDD_PORT.to_string();
        net.drop_new_inbound(s);
        net.iptables(
            s,
            &["-A", "INPUT", "-p", "tcp", "--dport", &port, "-j", "ACCEPT"],
        );
        net
    }

    fn all(&self) -> Vec<String> {
        let mut v = vec![self.submit.clone(), self.router.clone()];
        v.extend(self.nodes.iter().cloned());
        v.extend(self.laptop.iter().cloned());
        v
    }

    /// Adds the laptop: linked to the submit host only, which lets it reach
    /// its port 22 (a login node's sshd) and nothing else — not the schedd,
    /// not the nodes.
    pub fn add_laptop(&mut self) -> String {
        let ns = self.submit.replace("-submit", "-laptop");
        run(&["ip", "netns", "add", &ns]);
        run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let s = self.submit.as_str();
        run(&[
            "ip", "-n", s, "link", "add", "l0", "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        run(&["ip", "-n", s, "addr", "add", "10.231.3.1/24", "dev", "l0"]);
        run(&["ip", "-n", s, "link", "set", "l0", "up"]);
        run(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            "10.231.3.2/24",
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        self.iptables(
            s,
            &[
                "-I", "INPUT", "1", "-i", "l0", "-p", "tcp", "!", "--dport", "22", "-j", "DROP",
            ],
        );
        self.iptables(
            s,
            &[
                "-A", "INPUT", "-i", "l0", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
            ],
        );
        self.laptop = Some(ns.clone());
        ns
    }

    /// Inbound policy drop, except loopback and replies to our own dials.
    fn drop_new_inbound(&self, ns: &str) {
        self.iptables(ns, &["-P", "INPUT", "DROP"]);
        self.iptables(ns, &["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"]);
        self.iptables(
            ns,
            &[
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            ],
        );
    }

    pub fn iptables(&self, ns: &str, args: &[&str]) {
        let mut v = vec!["ip", "netns", "exec", ns, "iptables"];
        v.extend_from_slice(args);
        run(&v);
    }

    pub fn node_ip(&self, i: usize) -> String {
        format!("10.231.2.{}", i + 1)
    }

    /// Runs `f` on a thread that lives in namespace `ns` (setns affects only
    /// the calling thread), e.g. to dial from the submit host.
    pub fn within<T: Send + 'static>(&self, ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{ns}");
        std::thread::spawn(move || {
            let fd = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.all() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}
