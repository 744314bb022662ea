//! Puts idle jobs on connected starters with free slots, and hands jobs of
//! starters gone for longer than the job lease back to the queue.

use std::sync::Arc;
use std::time::Duration;

use stj_proto::starter::{schedd_message, RunJob, ScheddMessage};

use crate::state::Schedd;

/// One matchmaking pass. Runs under the pool lock so a starter's
/// (re-)registration never interleaves with an assignment to it.
pub async fn schedule(schedd: &Schedd) -> anyhow::Result<()> {
    let _pool = schedd.pool_lock.lock().await;
    let mut free = Vec::new();
    for (name, slots) in schedd.registry.slots() {
        let used = schedd.queue.count_running_on(&name)?;
        if slots > used {
            free.push((name, slots - used));
        }
    }
    // Only as many idle jobs as could start now: the pass costs what the
    // free slots are, not what the queue (or its history) holds.
    let room: usize = free.iter().map(|(_, n)| *n as usize).sum();
    if room == 0 {
        return Ok(());
    }
    let idle = schedd.queue.idle(room)?;
    let mut changed = false;
    for (job, avoid) in idle {
        // The emptiest node first spreads jobs across the pool; a node that
        // just failed to start the job only if no other one is free.
        let Some(slot) = free
            .iter_mut()
            .filter(|(_, n)| *n > 0)
            .max_by_key(|(name, n)| (*name != avoid, *n))
        else {
            break;
        };
        let node = slot.0.clone();
        if !schedd.queue.assign(job.id, &node)? {
            continue;
        }
        slot.1 -= 1;
        changed = true;
        tracing::info!(job_id = job.id, node = %node, owner = %job.owner_name, "job matched");
        let msg = ScheddMessage {
            msg: Some(schedd_message::Msg::RunJob(RunJob {
                job_id: job.id,
                uid: job.owner_uid,
                gid: job.owner_gid,
                owner_name: job.owner_name.clone(),
                spec: job.spec.clone(),
            })),
        };
        if !schedd.registry.send(&node, msg) {
            // The node's next registration reports it does not have the job,
            // and reconciliation requeues it.
            tracing::warn!(job_id = job.id, node = %node, "node went away while the job was sent to it");
        }
    }
    if changed {
        schedd.job_changed();
    }
    Ok(())
}

/// Runs `schedule` whenever something may have freed a slot or added a job,
/// and sweeps expired leases now and then.
pub async fn run(schedd: Arc<Schedd>) {
    let sweep_every = Duration::from_secs((schedd.config.job_lease_secs / 4).clamp(1, 60));
    let mut sweep = tokio::time::interval(sweep_every);
    loop {
        tokio::select! {
            _ = schedd.schedule.notified() => {}
            _ = sweep.tick() => {
                if let Err(e) = expire_leases(&schedd).await {
                    tracing::error!(error = %format!("{e:#}"), "lease sweep failed");
                }
            }
        }
        if let Err(e) = schedule(&schedd).await {
            tracing::error!(error = %format!("{e:#}"), "matchmaking failed");
        }
    }
}

async fn expire_leases(schedd: &Schedd) -> anyhow::Result<()> {
    let _pool = schedd.pool_lock.lock().await;
    let lease = Duration::from_secs(schedd.config.job_lease_secs);
    let mut changed = false;
    for job in schedd.queue.running()? {
        if schedd.registry.is_connected(&job.node) {
            continue;
        }
        let since = schedd
            .registry
            .gone_since(&job.node)
            .unwrap_or(schedd.started);
        if since.elapsed() >= lease {
            let reason = format!(
                "node {} was unreachable for longer than the job lease ({} s); requeued",
                job.node, schedd.config.job_lease_secs
            );
            if schedd.queue.requeue(job.id, &job.node, &reason)? {
                tracing::warn!(job_id = job.id, node = %job.node, "job lease expired; job requeued");
                changed = true;
            }
        }
    }
    if changed {
        schedd.job_changed();
    }
    Ok(())
}
