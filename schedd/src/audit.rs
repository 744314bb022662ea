//! Audit records of ssh-to-job sessions (the request, granted or denied, then
//! the path, start, end, bytes each way and exit status), written by one
//! thread in batches: one transaction (one fsync) per batch instead of one
//! per request, so issuing capabilities is not bound by disk latency.
//!
//! It fails closed: a grant is recorded with `record`, which returns only
//! once the record is committed — the capability is handed out after that,
//! or not at all (disk full, database broken). Everything else (denials,
//! what nodes report) is `send`: never waited for, and never dropped when
//! a commit fails — the writer keeps it and tries again. On shutdown,
//! `close` commits what is queued and joins the writer, so a SIGTERM loses
//! no record.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use rusqlite::{params, Connection};

use stj_proto::starter::{SessionEnded, SessionStarted};

use crate::queue::now;

pub struct Record {
    pub session_id: String,
    pub job_id: u64,
    pub uid: u32,
    pub node: String,
    /// "granted", or why it was denied.
    pub outcome: String,
}

/// What happens to a session record over its life. Updates of a record go
/// through the same queue as its insertion, so they never overtake it.
pub enum Event {
    Issued(Record),
    /// A node's reports apply only to sessions granted on that node: a
    /// compromised node cannot rewrite other nodes' records.
    Started {
        node: String,
        s: SessionStarted,
    },
    /// The node's own report: always wins over an inferred end.
    Ended {
        node: String,
        e: SessionEnded,
    },
    /// Sessions on `node` recorded as open, except `still_open`, ended
    /// without a report: the node's starter died, or the node registered
    /// again without them. The end is inferred, and kept only if the node
    /// never reports one.
    Lost {
        node: String,
        still_open: Vec<Vec<u8>>,
        note: String,
    },
    /// The client's exit status; only the granted user's, only once.
    Exit {
        session_id: String,
        uid: u32,
        status: i32,
    },
}

/// An event, when it happened, and who waits for its commit.
type Queued = (Event, i64, Option<oneshot::Sender<Result<(), String>>>);

/// None asks the writer to commit what it has and stop.
type Message = Option<Queued>;

pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Records sent and not yet taken by the writer, and those it holds
    /// after a failed commit (the `audit_backlog` metric).
    backlog: Backlog,
}

#[derive(Clone, Default)]
struct Backlog {
    queued: Arc<AtomicUsize>,
    held: Arc<AtomicUsize>,
}

const MAX_BATCH: usize = 4096;
/// Events kept across failed commits at most (about 1 KiB each); beyond
/// this the oldest are dropped, loudly.
const MAX_HELD: usize = 100_000;
/// How soon a failed commit is tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl AuditLog {
    /// Opens a second connection to the queue database for the writer
    /// thread, which also drops records older than `retention_days` (0:
    /// keep all) at start-up and hourly.
    pub fn open(db: &Path, retention_days: u64) -> rusqlite::Result<AuditLog> {
        let conn = crate::queue::connect(db)?;
        let (tx, rx) = mpsc::channel::<Message>();
        let path = db.to_path_buf();
        let backlog = Backlog::default();
        let counts = backlog.clone();
        let writer = std::thread::Builder::new()
            .name("stj-audit".into())
            .spawn(move || writer(conn, rx, retention_days, &path, counts))
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(AuditLog {
            tx,
            writer: std::sync::Mutex::new(Some(writer)),
            backlog,
        })
    }

    /// Commits everything queued so far and stops the writer; blocks until
    /// it has. Events sent afterwards are lost (and said to be).
    pub fn close(&self) {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = writer {
            let _ = self.tx.send(None);
            if w.join().is_err() {
                tracing::error!("the audit writer panicked");
            }
        }
    }

    /// Records not committed yet.
    pub fn backlog(&self) -> usize {
        self.backlog.queued.load(Ordering::Relaxed) + self.backlog.held.load(Ordering::Relaxed)
    }

    /// Queues `e`; it is written soon, and kept until it is.
    pub fn send(&self, e: Event) {
        self.backlog.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(Some((e, now(), None))).is_err() {
            tracing::error!("audit writer is gone; a record was lost");
        }
    }

    /// Writes `e` and returns once it is committed, or why it could not be.
    pub async fn record(&self, e: Event) -> Result<(), String> {
        let (ack, done) = oneshot::channel();
        self.backlog.queued.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Some((e, now(), Some(ack))))
            .map_err(|_| "the audit writer is gone".to_string())?;
        done.await
            .unwrap_or_else(|_| Err("the audit writer is gone".to_string()))
    }
}

fn apply(tx: &rusqlite::Transaction<'_>, event: &Event, at: i64) -> rusqlite::Result<usize> {
    match event {
        Event::Issued(r) => tx
            .prepare_cached(
                "INSERT OR REPLACE INTO sessions (session_id, job_id, uid, node, issued_at, outcome) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![r.session_id, r.job_id as i64, r.uid, r.node, at, r.outcome]),
        Event::Started { node, s } => tx
            .prepare_cached(
                "UPDATE sessions SET path = ?2, started_at = ?3 WHERE session_id = ?1 AND node = ?4 AND started_at IS NULL",
            )?
            .execute(params![hex::encode(&s.session_id), s.path, s.started_at, node]),
        Event::Ended { node, e } => tx
            .prepare_cached(
                "UPDATE sessions SET path = ?2, started_at = coalesce(started_at, ?3), ended_at = ?4, bytes_from_client = ?5, bytes_to_client = ?6, end_note = ?7 WHERE session_id = ?1 AND node = ?8",
            )?
            .execute(params![
                hex::encode(&e.session_id),
                e.path,
                e.started_at,
                e.ended_at,
                e.bytes_from_client as i64,
                e.bytes_to_client as i64,
                e.error,
                node
            ]),
        Event::Lost {
            node,
            still_open,
            note,
        } => {
            let open: Vec<String> = tx
                .prepare_cached(
                    "SELECT session_id FROM sessions WHERE node = ?1 AND started_at IS NOT NULL AND ended_at IS NULL",
                )?
                .query_map(params![node], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let keep: std::collections::HashSet<String> =
                still_open.iter().map(hex::encode).collect();
            let mut end = tx.prepare_cached(
                "UPDATE sessions SET ended_at = ?2, end_note = ?3 WHERE session_id = ?1 AND ended_at IS NULL",
            )?;
            let mut n = 0;
            for id in open.iter().filter(|id| !keep.contains(*id)) {
                n += end.execute(params![id, at, note])?;
            }
            Ok(n)
        }
        Event::Exit {
            session_id,
            uid,
            status,
        } => tx
            .prepare_cached(
                "UPDATE sessions SET exit_status = ?3 WHERE session_id = ?1 AND uid = ?2 AND exit_status IS NULL",
            )?
            .execute(params![session_id, uid, status]),
    }
}

const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes records issued more than `days` ago; returns how many.
fn prune(conn: &Connection, days: u64, now: i64) -> rusqlite::Result<usize> {
    if days == 0 {
        return Ok(0);
    }
    let cutoff = now.saturating_sub(days.saturating_mul(86_400) as i64);
    conn.execute("DELETE FROM sessions WHERE issued_at < ?1", params![cutoff])
}

fn writer(
    mut conn: Connection,
    rx: mpsc::Receiver<Message>,
    retention_days: u64,
    path: &Path,
    backlog: Backlog,
) {
    let mut next_prune = std::time::Instant::now();
    // Events whose commit failed, oldest first, tried again with the next batch.
    let mut held: std::collections::VecDeque<(Event, i64)> = std::collections::VecDeque::new();
    loop {
        if std::time::Instant::now() >= next_prune {
            match prune(&conn, retention_days, now()) {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, retention_days, "old audit records dropped"),
                Err(e) => tracing::error!(error = %e, "cannot drop old audit records"),
            }
            next_prune = std::time::Instant::now() + PRUNE_EVERY;
        }
        let wait = if held.is_empty() { PRUNE_EVERY } else { RETRY };
        let mut stop = false;
        let mut batch: Vec<Queued> = match rx.recv_timeout(wait) {
            Ok(Some(e)) => vec![e],
            Ok(None) => {
                stop = true;
                vec![]
            }
            Err(mpsc::RecvTimeoutError::Timeout) if held.is_empty() => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => vec![],
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        while !stop && batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Some(r)) => batch.push(r),
                Ok(None) => stop = true,
                Err(_) => break,
            }
        }
        let taken = batch.len();
        let _ = backlog
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(taken))
            });
        let result = (|| -> rusqlite::Result<()> {
            // IMMEDIATE: take the write lock up front, waiting (busy
            // timeout) for the queue's own writes. A deferred transaction
            // that reads first cannot wait when it upgrades: it failed with
            // "database is locked" when a requeue committed in between.
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for (event, at) in &held {
                apply(&tx, event, *at)?;
            }
            for (event, at, _) in &batch {
                apply(&tx, event, *at)?;
            }
            tx.commit()
        })();
        match result {
            Ok(()) => {
                if !held.is_empty() {
                    tracing::info!(records = held.len(), "held audit records written");
                    held.clear();
                }
                for (_, _, ack) in batch {
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(()));
                    }
                }
            }
            Err(e) => {
                let why = format!(
                    "cannot write the audit log {} ({e}; is its filesystem full?)",
                    path.display()
                );
                tracing::error!(error = %why, held = held.len() + batch.len(), "audit records kept for another try; grants are refused until they can be recorded");
                for (event, at, ack) in batch {
                    match ack {
                        // The grant is refused: nothing to keep.
                        Some(ack) => {
                            let _ = ack.send(Err(why.clone()));
                        }
                        None => held.push_back((event, at)),
                    }
                }
                while held.len() > MAX_HELD {
                    held.pop_front();
                    tracing::error!("too many audit records held; the oldest was dropped");
                }
            }
        }
        backlog.held.store(held.len(), Ordering::Relaxed);
        if stop {
            if !held.is_empty() {
                tracing::error!(
                    records = held.len(),
                    "the schedd is stopping with audit records it could not write"
                );
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::Queue;

    /// The records once `n` are written (the writer is asynchronous).
    fn wait_records(q: &Queue, n: usize) -> Vec<stj_proto::user::AuditRecord> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = q.sessions(0, None).unwrap();
            if r.len() == n {
                return r;
            }
            assert!(std::time::Instant::now() < deadline, "records not written");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// A fresh database, its queue and an audit writer keeping everything.
    fn open_log() -> (tempfile::TempDir, Queue, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(crate::queue::DB_FILE);
        let q = Queue::open(&db).unwrap();
        let log = AuditLog::open(&db, 0).unwrap();
        (dir, q, log)
    }

    fn issued(id: &str, uid: u32) -> Event {
        Event::Issued(Record {
            session_id: id.into(),
            job_id: 1,
            uid,
            node: "n".into(),
            outcome: "granted".into(),
        })
    }

    #[test]
    fn only_the_granted_user_reports_the_exit_status_and_only_once() {
        let (_dir, q, log) = open_log();
        let exit = |uid, status| Event::Exit {
            session_id: "s1".into(),
            uid,
            status,
        };
        log.send(issued("s1", 1000));
        log.send(exit(1001, 5)); // another user: ignored
        log.send(exit(1000, 7));
        log.send(exit(1000, 9)); // a second report: ignored
        log.send(issued("s2", 1000)); // marks the end of the updates above
        let records = wait_records(&q, 2);
        assert_eq!(records[0].exit_status, Some(7));
    }

    #[test]
    fn records_older_than_the_retention_are_dropped() {
        let (dir, q, log) = open_log();
        log.send(issued("old", 1000));
        log.send(issued("new", 1000));
        wait_records(&q, 2);
        let conn = Connection::open(dir.path().join(crate::queue::DB_FILE)).unwrap();
        conn.execute(
            "UPDATE sessions SET issued_at = issued_at - 31 * 86400 WHERE session_id = 'old'",
            [],
        )
        .unwrap();
        assert_eq!(prune(&conn, 0, now()).unwrap(), 0, "0 keeps everything");
        assert_eq!(prune(&conn, 30, now()).unwrap(), 1);
        let left = q.sessions(0, None).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].session_id, "new");
    }

    #[test]
    fn another_nodes_reports_change_nothing() {
        // A compromised node knows a session id of another node's: its
        // reports about it are not applied.
        let (_dir, q, log) = open_log();
        let sid = [2u8; 16];
        log.send(issued(&hex::encode(sid), 1000)); // granted on node "n"
        let forged = SessionEnded {
            session_id: sid.to_vec(),
            ended_at: 7,
            bytes_from_client: 1,
            ..Default::default()
        };
        log.send(Event::Started {
            node: "evil".into(),
            s: SessionStarted {
                session_id: sid.to_vec(),
                started_at: 3,
                ..Default::default()
            },
        });
        log.send(Event::Ended {
            node: "evil".into(),
            e: forged,
        });
        log.send(issued("marker", 1000));
        let r = wait_records(&q, 2);
        assert_eq!(
            (r[0].started_at, r[0].ended_at, r[0].bytes_from_client),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_nodes_report_wins_over_an_inferred_end() {
        let (_dir, q, log) = open_log();
        let sid = [1u8; 16];
        let id = hex::encode(sid);
        log.send(issued(&id, 1000));
        log.send(Event::Started {
            node: "n".into(),
            s: SessionStarted {
                session_id: sid.to_vec(),
                job_id: 1,
                path: "relay".into(),
                started_at: 5,
            },
        });
        // Another node's report about this session changes nothing.
        log.send(Event::Ended {
            node: "other".into(),
            e: SessionEnded {
                session_id: sid.to_vec(),
                ended_at: 7,
                ..Default::default()
            },
        });
        log.send(Event::Lost {
            node: "n".into(),
            still_open: vec![],
            note: "node went away".into(),
        });
        log.send(Event::Ended {
            node: "n".into(),
            e: SessionEnded {
                session_id: sid.to_vec(),
                job_id: 1,
                path: "relay".into(),
                started_at: 5,
                ended_at: 9,
                bytes_from_client: 10,
                bytes_to_client: 20,
                error: String::new(),
            },
        });
        log.send(issued("marker", 1000));
        let r = wait_records(&q, 2);
        let s = &r[0];
        assert_eq!((s.path.as_str(), s.started_at, s.ended_at), ("relay", 5, 9));
        assert_eq!((s.bytes_from_client, s.bytes_to_client), (10, 20));
        assert_eq!(s.end_note, "");
    }
}
