//! The job of `stj submit --interactive`: it only waits. It runs in the
//! job's PID namespace, where every process other than itself and the init
//! belongs to a session, so it ends once a session has come and gone (and
//! nothing else is attached), or after the idle timeout without any session.

use std::time::{Duration, Instant};

const TICK: Duration = Duration::from_millis(250);

fn others() -> usize {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()))
        .filter(|&pid| pid != me && pid != 1)
        .count()
}

pub fn main(idle_timeout: Duration) -> ! {
    let mut seen = false;
    let mut idle_since = Instant::now();
    loop {
        if others() > 0 {
            seen = true;
            idle_since = Instant::now();
        } else if seen {
            println!("the session ended; the interactive job ends with it");
            std::process::exit(0);
        } else if idle_since.elapsed() >= idle_timeout {
            println!(
                "no session for {} s; the interactive job ends",
                idle_timeout.as_secs()
            );
            std::process::exit(0);
        }
        std::thread::sleep(TICK);
    }
}
