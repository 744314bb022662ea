//! The durable job queue in SQLite. Every state change is one committed
//! transaction (WAL, synchronous=FULL), so a `kill -9` at any moment leaves
//! each job in exactly one state: none lost, none duplicated.

use std::path::Path;
use std::sync::Mutex;

use prost::Message;
use rusqlite::{params, Connection, OptionalExtension, Row};
use stj_proto::starter::JobExited;
use stj_proto::user::{AuditRecord, Job, JobSpec, JobState};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("job queue database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("job queue database holds an undecodable job spec for job {0}")]
    Corrupt(u64),
}

pub type Result<T> = std::result::Result<T, QueueError>;

/// The database in the state dir: the queue, the audit records and the
/// enrolled nodes.
pub const DB_FILE: &str = "queue.sqlite";

/// A connection to the database as every user of it needs one: WAL
/// (readers do not wait for the writer), synchronous=FULL (a committed
/// change survives a crash), and a busy timeout (the schedd, its audit
/// writer and `stj-schedd token` share the file).
pub fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// What a submit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    New(u64),
    /// The request id was used before: the job that submit made.
    Again(u64),
    /// The owner has this many live jobs, the cap.
    OverCap(usize),
}

/// Why a job was not removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoveRefusal {
    NoSuchJob,
    NotOwner { owner: u32, owner_name: String },
}

/// One job's part of a removal: the node it was running on (which must
/// kill it; None if it was not running), or why it was not removed.
pub type Removed = std::result::Result<Option<String>, RemoveRefusal>;

pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
}

pub struct Queue {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_uid   INTEGER NOT NULL,
    owner_gid   INTEGER NOT NULL,
    owner_name  TEXT NOT NULL,
    state       INTEGER NOT NULL,
    node        TEXT NOT NULL DEFAULT '',
    submit_time INTEGER NOT NULL,
    start_time  INTEGER NOT NULL DEFAULT 0,
    end_time    INTEGER NOT NULL DEFAULT 0,
    exit_code   INTEGER,
    exit_signal INTEGER,
    reason      TEXT NOT NULL DEFAULT '',
    spec        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, node);
CREATE INDEX IF NOT EXISTS jobs_in_order ON jobs(state, id);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs(owner_uid, state);
CREATE INDEX IF NOT EXISTS jobs_ended ON jobs(state, end_time);
CREATE TABLE IF NOT EXISTS sessions (
    session_id  TEXT PRIMARY KEY,
    job_id      INTEGER NOT NULL,
    uid         INTEGER NOT NULL,
    node        TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    outcome     TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_job ON sessions(job_id);
CREATE INDEX IF NOT EXISTS sessions_by_time ON sessions(issued_at);
";

/// Columns the session records grew after the first release: added to an
/// older database when it is opened.
const SESSION_COLUMNS: [(&str, &str); 7] = [
    ("path", "TEXT NOT NULL DEFAULT ''"),
    ("started_at", "INTEGER"),
    ("ended_at", "INTEGER"),
    ("bytes_from_client", "INTEGER NOT NULL DEFAULT 0"),
    ("bytes_to_client", "INTEGER NOT NULL DEFAULT 0"),
    ("exit_status", "INTEGER"),
    ("end_note", "TEXT NOT NULL DEFAULT ''"),
];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let job_columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('jobs')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !job_columns.iter().any(|c| c == "request_id") {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN request_id TEXT NOT NULL DEFAULT ''")?;
    }
    if !job_columns.iter().any(|c| c == "start_failures") {
        conn.execute_batch(
            "ALTER TABLE jobs ADD COLUMN start_failures INTEGER NOT NULL DEFAULT 0",
        )?;
    }
    if !job_columns.iter().any(|c| c == "avoid_node") {
        conn.execute_batch("ALTER TABLE jobs ADD COLUMN avoid_node TEXT NOT NULL DEFAULT ''")?;
    }
    // A retried submit finds the job its first try made.
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS jobs_by_request ON jobs(owner_uid, request_id) WHERE request_id != ''",
    )?;
    let have: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('sessions')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (name, ty) in SESSION_COLUMNS {
        if !have.iter().any(|h| h == name) {
            conn.execute_batch(&format!("ALTER TABLE sessions ADD COLUMN {name} {ty}"))?;
        }
    }
    // Small: only open sessions are in it (for the ends inferred per node).
    conn.execute_batch(
        "CREATE INDEX IF NOT EXISTS sessions_open ON sessions(node) WHERE started_at IS NOT NULL AND ended_at IS NULL",
    )?;
    Ok(())
}

/// A granted session not known to have ended, for the per-user caps after a
/// restart.
pub struct LiveSession {
    pub session_id: String,
    pub uid: u32,
    pub node: String,
    pub issued_at: i64,
    pub started: bool,
}

/// Node-side start failures after which a job is ended instead of requeued:
/// something about it breaks every node it goes to.
pub const MAX_START_FAILURES: i64 = 3;

/// Unix seconds as the database stores them (SQLite integers are signed).
pub fn now() -> i64 {
    stj_proto::capability::unix_now() as i64
}

const COLUMNS: &str = "id, owner_uid, owner_gid, owner_name, state, node, submit_time, start_time, end_time, exit_code, exit_signal, reason, spec";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<(Job, Vec<u8>)> {
    let job = Job {
        id: row.get::<_, i64>(0)? as u64,
        owner_uid: row.get(1)?,
        owner_gid: row.get(2)?,
        owner_name: row.get(3)?,
        state: row.get(4)?,
        node: row.get(5)?,
        submit_time: row.get(6)?,
        start_time: row.get(7)?,
        end_time: row.get(8)?,
        exit_code: row.get(9)?,
        exit_signal: row.get(10)?,
        reason: row.get(11)?,
        spec: None,
        // Not stored: the registry's, filled in where the reply is made.
        node_away: false,
    };
    Ok((job, row.get(12)?))
}

fn with_spec((mut job, spec): (Job, Vec<u8>)) -> Result<Job> {
    job.spec = Some(JobSpec::decode(spec.as_slice()).map_err(|_| QueueError::Corrupt(job.id))?);
    Ok(job)
}

impl Queue {
    pub fn open(path: &Path) -> Result<Queue> {
        let conn = connect(path)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Queue {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written
        // (transactions roll back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One statement, prepared once per connection and cached: parsing the
    /// SQL on every call showed up in the issuance profile. Returns the
    /// number of rows changed.
    fn execute(&self, sql: &str, args: impl rusqlite::Params) -> Result<usize> {
        Ok(self.conn().prepare_cached(sql)?.execute(args)?)
    }

    /// Audit records, oldest first, of one job (0: all) and one uid (None: all).
    pub fn sessions(&self, job_id: u64, uid: Option<u32>) -> Result<Vec<AuditRecord>> {
        Ok(self
            .sessions_page(job_id, uid, (i64::MIN, i64::MIN), i64::MAX as usize)?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// Up to `limit` audit records after `after` (issued_at, rowid), oldest
    /// first, each with its own cursor.
    pub fn sessions_page(
        &self,
        job_id: u64,
        uid: Option<u32>,
        after: (i64, i64),
        limit: usize,
    ) -> Result<Vec<(AuditRecord, (i64, i64))>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT session_id, job_id, uid, node, issued_at, outcome, path, started_at, ended_at, bytes_from_client, bytes_to_client, exit_status, end_note, rowid FROM sessions
             WHERE (?1 = 0 OR job_id = ?1) AND (?2 IS NULL OR uid = ?2) AND (issued_at > ?3 OR (issued_at = ?3 AND rowid > ?4))
             ORDER BY issued_at, rowid LIMIT ?5",
        )?;
        let rows = stmt.query_map(
            params![
                job_id as i64,
                uid,
                after.0,
                after.1,
                limit.min(i64::MAX as usize) as i64
            ],
            |r| {
                let issued_at: i64 = r.get(4)?;
                let rowid: i64 = r.get(13)?;
                Ok((audit_record(r)?, (issued_at, rowid)))
            },
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Up to `limit` jobs with ids above `after_id`, in id order: `ids`
    /// only when given, else the live ones (idle, running), or all
    /// with `include_ended`. By index: the cost follows `limit`.
    pub fn jobs_page(
        &self,
        ids: &[u64],
        include_ended: bool,
        after_id: u64,
        limit: usize,
    ) -> Result<Vec<Job>> {
        if !ids.is_empty() {
            let mut ids: Vec<u64> = ids.iter().copied().filter(|&i| i > after_id).collect();
            ids.sort_unstable();
            ids.dedup();
            ids.truncate(limit);
            return ids
                .into_iter()
                .filter_map(|id| self.get(id).transpose())
                .collect();
        }
        let (live, limit) = (!include_ended, limit.min(i64::MAX as usize) as i64);
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM jobs WHERE id > ?1 AND (?2 = 0 OR state IN (?3, ?4)) ORDER BY id LIMIT ?5"
        ))?;
        let rows = stmt.query_map(
            params![
                after_id as i64,
                live,
                JobState::Idle as i32,
                JobState::Running as i32,
                limit
            ],
            job_from_row,
        )?;
        rows.map(|r| with_spec(r?)).collect()
    }

    /// Drops ended jobs that ended more than `days` ago (0: keep all);
    /// returns how many.
    pub fn prune_history(&self, days: u64) -> Result<usize> {
        if days == 0 {
            return Ok(0);
        }
        let cutoff = now().saturating_sub(days.saturating_mul(86_400) as i64);
        self.execute(
            "DELETE FROM jobs WHERE state IN (?1, ?2) AND end_time < ?3",
            params![JobState::Completed as i32, JobState::Removed as i32, cutoff],
        )
    }
}

fn audit_record(r: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    Ok(AuditRecord {
        session_id: r.get(0)?,
        job_id: r.get::<_, i64>(1)? as u64,
        uid: r.get(2)?,
        node: r.get(3)?,
        issued_at: r.get(4)?,
        outcome: r.get(5)?,
        path: r.get(6)?,
        started_at: r.get::<_, Option<i64>>(7)?.unwrap_or(0),
        ended_at: r.get::<_, Option<i64>>(8)?.unwrap_or(0),
        bytes_from_client: r.get::<_, i64>(9)? as u64,
        bytes_to_client: r.get::<_, i64>(10)? as u64,
        exit_status: r.get(11)?,
        end_note: r.get(12)?,
    })
}

impl Queue {
    /// Granted sessions issued since `since` (still pending) or started and
    /// not ended (open).
    pub fn live_sessions(&self, since: i64) -> Result<Vec<LiveSession>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT session_id, uid, node, issued_at, started_at IS NOT NULL FROM sessions WHERE outcome = 'granted' AND ended_at IS NULL AND (started_at IS NOT NULL OR issued_at >= ?1)",
        )?;
        let rows = stmt.query_map(params![since], |r| {
            Ok(LiveSession {
                session_id: r.get(0)?,
                uid: r.get(1)?,
                node: r.get(2)?,
                issued_at: r.get(3)?,
                started: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Queues a job, unless `owner` has `max_live` jobs idle or running
    /// already. A non-empty `request_id` that `owner` used before
    /// returns that submit's job. Counting and inserting are one
    /// transaction, so concurrent submits cannot pass the cap together.
    pub fn submit(
        &self,
        owner: &Owner,
        spec: &JobSpec,
        request_id: &str,
        max_live: usize,
    ) -> Result<Submitted> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !request_id.is_empty() {
            let before: Option<i64> = tx
                .prepare_cached("SELECT id FROM jobs WHERE owner_uid = ?1 AND request_id = ?2")?
                .query_row(params![owner.uid, request_id], |r| r.get(0))
                .optional()?;
            if let Some(id) = before {
                return Ok(Submitted::Again(id as u64));
            }
        }
        let live: i64 = tx
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE owner_uid = ?1 AND state IN (?2, ?3)")?
            .query_row(
                params![owner.uid, JobState::Idle as i32, JobState::Running as i32,],
                |r| r.get(0),
            )?;
        if live as usize >= max_live {
            return Ok(Submitted::OverCap(live as usize));
        }
        tx.prepare_cached(
            "INSERT INTO jobs (owner_uid, owner_gid, owner_name, state, submit_time, spec, request_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![owner.uid, owner.gid, owner.name, JobState::Idle as i32, now(), spec.encode_to_vec(), request_id])?;
        let id = tx.last_insert_rowid() as u64;
        tx.commit()?;
        Ok(Submitted::New(id))
    }

    pub fn get(&self, id: u64) -> Result<Option<Job>> {
        // Cached like `execute`: `get` runs on every RequestSession.
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM jobs WHERE id = ?1"))?
            .query_row([id as i64], job_from_row)
            .optional()?;
        row.map(with_spec).transpose()
    }

    fn select(&self, where_clause: &str, args: impl rusqlite::Params) -> Result<Vec<Job>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM jobs {where_clause} ORDER BY id"
        ))?;
        let rows = stmt.query_map(args, job_from_row)?;
        rows.map(|r| with_spec(r?)).collect()
    }

    /// The `limit` oldest idle jobs, each with the node that last failed to
    /// start it (to be tried elsewhere first; empty if none). By index: the
    /// cost follows `limit`, not the queue or its history.
    pub fn idle(&self, limit: usize) -> Result<Vec<(Job, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS}, avoid_node FROM jobs WHERE state = ?1 ORDER BY id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![JobState::Idle as i32, limit as i64], |r| {
            Ok((job_from_row(r)?, r.get::<_, String>(13)?))
        })?;
        rows.map(|r| {
            let (job, avoid) = r?;
            Ok((with_spec(job)?, avoid))
        })
        .collect()
    }

    /// Every running job (for the lease sweep), by index.
    pub fn running(&self) -> Result<Vec<Job>> {
        self.select("WHERE state = ?1", [JobState::Running as i32])
    }

    pub fn running_on(&self, node: &str) -> Result<Vec<Job>> {
        self.select(
            "WHERE state = ?1 AND node = ?2",
            params![JobState::Running as i32, node],
        )
    }

    /// How many jobs are idle and how many run (the `jobs` metric).
    pub fn live_counts(&self) -> Result<(u64, u64)> {
        let count = |state: JobState| -> Result<u64> {
            let n: i64 = self
                .conn()
                .prepare_cached("SELECT COUNT(*) FROM jobs WHERE state = ?1")?
                .query_row(params![state as i32], |r| r.get(0))?;
            Ok(n as u64)
        };
        Ok((count(JobState::Idle)?, count(JobState::Running)?))
    }

    pub fn count_running_on(&self, node: &str) -> Result<u32> {
        let n: i64 = self
            .conn()
            .prepare_cached("SELECT COUNT(*) FROM jobs WHERE state = ?1 AND node = ?2")?
            .query_row(params![JobState::Running as i32, node], |r| r.get(0))?;
        Ok(n as u32)
    }

    /// idle → running on `node`. False when the job was no longer idle.
    pub fn assign(&self, id: u64, node: &str) -> Result<bool> {
        let n = self.execute(
            "UPDATE jobs SET state = ?1, node = ?2, start_time = ?3, reason = '' WHERE id = ?4 AND state = ?5",
            params![JobState::Running as i32, node, now(), id as i64, JobState::Idle as i32],
        )?;
        Ok(n == 1)
    }

    /// Records a job's end as reported by the node that ran it. A running job
    /// becomes completed; a removed one keeps its state but gains the exit
    /// status. Reports from a node the job is not on change nothing. A job
    /// that could not start for the node's reasons goes back to the queue,
    /// up to `MAX_START_FAILURES` times.
    pub fn finish(&self, node: &str, exit: &JobExited) -> Result<bool> {
        if exit.node_failure {
            let n = self.execute(
                "UPDATE jobs SET state = ?1, node = '', start_time = 0, start_failures = start_failures + 1,
                     avoid_node = ?4, reason = ?2 WHERE id = ?3 AND node = ?4 AND state = ?5 AND start_failures + 1 < ?6",
                params![
                    JobState::Idle as i32,
                    format!("node {node} could not start the job ({}); requeued", exit.error),
                    exit.job_id as i64,
                    node,
                    JobState::Running as i32,
                    MAX_START_FAILURES
                ],
            )?;
            if n == 1 {
                return Ok(true);
            }
        }
        let n = self.execute(
            "UPDATE jobs SET state = CASE WHEN state = ?1 THEN ?2 ELSE state END,
                 exit_code = ?3, exit_signal = ?4,
                 reason = CASE WHEN state = ?1 THEN ?5 ELSE reason END,
                 end_time = CASE WHEN end_time = 0 THEN ?6 ELSE end_time END
             WHERE id = ?7 AND node = ?8 AND state IN (?1, ?9)",
            params![
                JobState::Running as i32,
                JobState::Completed as i32,
                exit.exit_code,
                exit.exit_signal,
                exit.error,
                now(),
                exit.job_id as i64,
                node,
                JobState::Removed as i32
            ],
        )?;
        Ok(n == 1)
    }

    /// running on `node` → idle, with the reason recorded for `stj q`.
    pub fn requeue(&self, id: u64, node: &str, reason: &str) -> Result<bool> {
        let n = self.execute(
            "UPDATE jobs SET state = ?1, node = '', start_time = 0, reason = ?2 WHERE id = ?3 AND node = ?4 AND state = ?5",
            params![JobState::Idle as i32, reason, id as i64, node, JobState::Running as i32],
        )?;
        Ok(n == 1)
    }

    /// Marks the jobs `ids` removed, in one transaction, where `by_uid` may
    /// (their owner, or root); says for each what became of it.
    pub fn remove_many(&self, ids: &[u64], by_uid: u32) -> Result<Vec<(u64, Removed)>> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut out = Vec::with_capacity(ids.len());
        {
            let mut get = tx.prepare_cached(
                "SELECT owner_uid, owner_name, state, node FROM jobs WHERE id = ?1",
            )?;
            let mut set = tx.prepare_cached(
                "UPDATE jobs SET state = ?1, end_time = ?2, reason = ?3 WHERE id = ?4 AND state = ?5",
            )?;
            let reason = format!("removed by uid {by_uid}");
            for &id in ids {
                let row: Option<(u32, String, i32, String)> = get
                    .query_row([id as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()?;
                let Some((owner, owner_name, state, node)) = row else {
                    out.push((id, Err(RemoveRefusal::NoSuchJob)));
                    continue;
                };
                if by_uid != 0 && by_uid != owner {
                    out.push((id, Err(RemoveRefusal::NotOwner { owner, owner_name })));
                    continue;
                }
                let st = JobState::try_from(state).unwrap_or(JobState::Unspecified);
                if !st.is_terminal() {
                    set.execute(params![
                        JobState::Removed as i32,
                        now(),
                        reason,
                        id as i64,
                        state
                    ])?;
                }
                out.push((id, Ok((st == JobState::Running).then_some(node))));
            }
        }
        tx.commit()?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner {
            uid: 1000,
            gid: 1000,
            name: "alice".into(),
        }
    }

    fn new(s: Submitted) -> u64 {
        match s {
            Submitted::New(id) => id,
            other => panic!("not a new job: {other:?}"),
        }
    }

    #[test]
    fn old_ended_jobs_are_pruned_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.sqlite")).unwrap();
        let old = new(q.submit(&owner(), &spec(), "", 10).unwrap());
        let recent = new(q.submit(&owner(), &spec(), "", 10).unwrap());
        let live = new(q.submit(&owner(), &spec(), "", 10).unwrap());
        q.remove_many(&[old, recent], 0).unwrap();
        q.execute(
            "UPDATE jobs SET end_time = end_time - 31 * 86400 WHERE id = ?1",
            [old as i64],
        )
        .unwrap();
        assert_eq!(q.prune_history(0).unwrap(), 0, "0 keeps everything");
        assert_eq!(q.prune_history(30).unwrap(), 1);
        assert!(q.get(old).unwrap().is_none());
        assert!(q.get(recent).unwrap().is_some() && q.get(live).unwrap().is_some());
        // Paging: live jobs by default, history with include_ended.
        let ids = |v: Vec<Job>| v.into_iter().map(|j| j.id).collect::<Vec<_>>();
        assert_eq!(ids(q.jobs_page(&[], false, 0, 10).unwrap()), vec![live]);
        assert_eq!(
            ids(q.jobs_page(&[], true, 0, 10).unwrap()),
            vec![recent, live]
        );
        assert_eq!(ids(q.jobs_page(&[], true, recent, 10).unwrap()), vec![live]);
        assert_eq!(
            ids(q.jobs_page(&[live, recent], true, 0, 1).unwrap()),
            vec![recent]
        );
    }

    #[test]
    fn one_user_has_at_most_max_live_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.sqlite")).unwrap();
        let a = new(q.submit(&owner(), &spec(), "", 2).unwrap());
        new(q.submit(&owner(), &spec(), "", 2).unwrap());
        assert_eq!(
            q.submit(&owner(), &spec(), "", 2).unwrap(),
            Submitted::OverCap(2)
        );
        // Ended jobs do not count.
        q.remove_many(&[a], 0).unwrap();
        new(q.submit(&owner(), &spec(), "", 2).unwrap());
    }

    fn spec() -> JobSpec {
        JobSpec {
            args: vec!["true".into()],
            ..Default::default()
        }
    }

    #[test]
    fn lifecycle_and_survival_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.sqlite");
        let q = Queue::open(&db).unwrap();
        let a = new(q.submit(&owner(), &spec(), "", 10).unwrap());
        let b = new(q.submit(&owner(), &spec(), "", 10).unwrap());
        assert_ne!(a, b);
        assert!(q.assign(a, "n1").unwrap());
        assert!(
            !q.assign(a, "n2").unwrap(),
            "a running job cannot be assigned twice"
        );
        drop(q);

        let q = Queue::open(&db).unwrap();
        assert_eq!(q.running_on("n1").unwrap().len(), 1);
        assert_eq!(q.idle(10).unwrap()[0].0.id, b);
        let exit = JobExited {
            job_id: a,
            exit_code: Some(3),
            ..Default::default()
        };
        assert!(
            !q.finish("n2", &exit).unwrap(),
            "another node cannot finish the job"
        );
        assert!(q.finish("n1", &exit).unwrap());
        let job = q.get(a).unwrap().unwrap();
        assert_eq!(job.state, JobState::Completed as i32);
        assert_eq!(job.exit_code, Some(3));
        assert_eq!(job.spec.unwrap().args, vec!["true".to_string()]);
    }

    #[test]
    fn a_node_failure_requeues_until_it_happened_too_often() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.sqlite")).unwrap();
        let a = new(q.submit(&owner(), &spec(), "", 10).unwrap());
        let broken = JobExited {
            job_id: a,
            error: "Too many open files".into(),
            node_failure: true,
            ..Default::default()
        };
        for _ in 1..MAX_START_FAILURES {
            assert!(q.assign(a, "n1").unwrap());
            assert!(q.finish("n1", &broken).unwrap());
            let job = q.get(a).unwrap().unwrap();
            assert_eq!(job.state, JobState::Idle as i32);
            assert!(job
                .reason
                .contains("node n1 could not start the job (Too many open files)"));
            assert_eq!(q.idle(1).unwrap()[0].1, "n1", "to be tried elsewhere first");
        }
        assert!(q.assign(a, "n1").unwrap());
        assert!(q.finish("n1", &broken).unwrap());
        assert_eq!(q.get(a).unwrap().unwrap().state, JobState::Completed as i32);
    }

    #[test]
    fn a_retried_submit_returns_the_first_ones_job() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.sqlite")).unwrap();
        let a = new(q.submit(&owner(), &spec(), "r1", 10).unwrap());
        assert_eq!(
            q.submit(&owner(), &spec(), "r1", 10).unwrap(),
            Submitted::Again(a)
        );
        // Another request id, or another user with the same id: new jobs.
        assert_ne!(new(q.submit(&owner(), &spec(), "r2", 10).unwrap()), a);
        let bob = Owner {
            uid: 1001,
            gid: 1001,
            name: "bob".into(),
        };
        assert!(matches!(
            q.submit(&bob, &spec(), "r1", 10).unwrap(),
            Submitted::New(_)
        ));
    }

    #[test]
    fn remove_and_requeue() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(&dir.path().join("q.sqlite")).unwrap();
        let a = new(q.submit(&owner(), &spec(), "", 10).unwrap());
        q.assign(a, "n1").unwrap();
        assert!(q.requeue(a, "n1", "node lost it").unwrap());
        let job = q.get(a).unwrap().unwrap();
        assert_eq!(job.state, JobState::Idle as i32);
        assert_eq!(job.reason, "node lost it");
        assert_eq!(q.remove_many(&[a], 0).unwrap(), vec![(a, Ok(None))]);
        assert_eq!(q.get(a).unwrap().unwrap().state, JobState::Removed as i32);
        assert!(!q.assign(a, "n1").unwrap(), "a removed job never runs");
        assert_eq!(
            q.remove_many(&[999], 0).unwrap(),
            vec![(999, Err(RemoveRefusal::NoSuchJob))]
        );
    }
}
