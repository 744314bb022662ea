//! What the schedd does on a timer besides matchmaking: writes the summary
//! records of denial floods whose minute is over, and drops ended jobs
//! older than `job_retention_days` (like audit records, so neither `stj q
//! --all` nor the database grows without bound).

use std::sync::Arc;
use std::time::Duration;

use crate::queue::now;
use crate::state::Schedd;

const TICK: Duration = Duration::from_secs(30);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

pub async fn run(schedd: Arc<Schedd>) {
    let mut tick = tokio::time::interval(TICK);
    let mut next_prune = tokio::time::Instant::now();
    loop {
        tick.tick().await;
        for s in schedd.denials.flush(now()) {
            crate::capability_issuer::write_summary(&schedd, s);
        }
        if tokio::time::Instant::now() >= next_prune {
            next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
            let days = schedd.config.job_retention_days;
            match schedd.queue.prune_history(days) {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, retention_days = days, "old ended jobs dropped"),
                Err(e) => tracing::error!(error = %e, "cannot drop old ended jobs"),
            }
        }
    }
}
