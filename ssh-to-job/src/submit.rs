//! Submitting a job so that a lost reply never queues it twice: every
//! submit carries a request id of the client's choosing, and the schedd
//! returns the job it already made for a repeated one. When the schedd goes
//! away during the call (killed, restarted), the same request is retried
//! for a while; if it never answers, the outcome is unknown and the user is
//! told how to settle it without risking a second job.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;
use stj_proto::user::{JobSpec, SubmitRequest};

use crate::schedd_client::{connect, status_error};

/// How long a submit keeps retrying a schedd that went away.
const RETRY_FOR: Duration = Duration::from_secs(15);

/// A fresh request id: 16 random bytes, hex.
pub fn new_request_id() -> Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| anyhow::anyhow!("the system random generator failed"))?;
    Ok(hex::encode(b))
}

/// Failures after which the request may or may not have reached the queue:
/// the connection broke. A refusal the schedd wrote itself is final.
fn outcome_unknown(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
    )
}

pub async fn submit(socket: &Path, spec: JobSpec, request_id: &str) -> Result<u64> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(100);
    let mut said = false;
    loop {
        let attempt = async {
            let mut c = connect(socket).await.map_err(Err)?;
            c.submit(SubmitRequest {
                spec: Some(spec.clone()),
                request_id: request_id.to_string(),
            })
            .await
            .map(|r| r.into_inner().job_id)
            .map_err(Ok)
        };
        // Err(Err(_)): no connection at all; Err(Ok(status)): the call failed.
        let why = match attempt.await {
            Ok(id) => return Ok(id),
            Err(Ok(status)) if !outcome_unknown(&status) => return Err(status_error(status)),
            Err(Ok(status)) => status.message().to_string(),
            Err(Err(e)) => format!("{e:#}"),
        };
        if started.elapsed() >= RETRY_FOR {
            anyhow::bail!(
                "the schedd did not answer ({why}): whether the job was queued is unknown. Run the same command again with --request-id {request_id}: if it was queued you get its job id, otherwise it is queued then, never twice"
            );
        }
        if !said {
            eprintln!("stj: the schedd did not answer; retrying the submit (request {request_id})");
            said = true;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}
