//! Audit records of ssh-to-job requests, granted or denied, written by one
//! thread in batches: one transaction (one fsync) per batch instead of one
//! per request, so issuing capabilities is not bound by disk latency. A
//! record reaches disk within milliseconds; a crash can lose only the
//! records of the last batch in flight, never a job state change (those
//! commit one by one in `queue.rs`).

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{params, Connection};

use crate::queue::now;

pub struct Record {
    pub session_id: String,
    pub job_id: u64,
    pub uid: u32,
    pub node: String,
    /// "granted", or why it was denied.
    pub outcome: String,
}

pub struct AuditLog {
    tx: mpsc::Sender<(Record, i64)>,
}

const MAX_BATCH: usize = 4096;

impl AuditLog {
    /// Opens a second connection to the queue database for the writer thread.
    pub fn open(db: &Path) -> rusqlite::Result<AuditLog> {
        let conn = Connection::open(db)?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let (tx, rx) = mpsc::channel::<(Record, i64)>();
        std::thread::Builder::new()
            .name("stj-audit".into())
            .spawn(move || writer(conn, rx))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(AuditLog { tx })
    }

    pub fn record(&self, r: Record) {
        if self.tx.send((r, now())).is_err() {
            tracing::error!("audit writer is gone; a record was lost");
        }
    }
}

fn writer(mut conn: Connection, rx: mpsc::Receiver<(Record, i64)>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let result = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO sessions (session_id, job_id, uid, node, issued_at, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for (r, at) in &batch {
                    stmt.execute(params![
                        r.session_id,
                        r.job_id as i64,
                        r.uid,
                        r.node,
                        at,
                        r.outcome
                    ])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = result {
            tracing::error!(error = %e, records = batch.len(), "cannot write audit records");
        }
    }
}
