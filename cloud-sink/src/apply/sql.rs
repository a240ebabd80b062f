//! [`Db`]: the one place that writes the Cloud Registry. One transaction per batch, retried
//! whole on serialization failures and lost connections.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

use super::fold::{Folded, SessionRow, StoredSession, DEFAULT_MAX_PENDING_RUNS};
use super::statements::{read_sessions, write_dead_letters, write_raes, write_sessions};
use super::{prepare, Rejection};
use crate::heal::{GapNotice, GapReporter};
use crate::record::{BatchWriter, Raw, WriteError, WriteOutcome};

pub mod migrate;

pub use migrate::{MigrationFile, MigrationReport, Migrations, Step};

/// How a failed transaction is retried: capped exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// About 30 s of trying: enough to ride out a CockroachDB node restart or a lease move.
    fn default() -> Self {
        Self {
            max_attempts: 12,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The pause before attempt `attempt + 1`: half the capped exponential delay, plus a
    /// random part of up to the other half, so that conflicting writers drift apart.
    pub fn backoff(&self, attempt: u32, random: u64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(20);
        let delay = self
            .first_backoff
            .saturating_mul(1 << exponent)
            .min(self.max_backoff);
        let half = delay / 2;
        let half_ms = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_micros(random % half_ms)
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct DbOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub retry: RetryPolicy,
    /// How many runs of received seqs a session's gap record keeps (see
    /// [`super::fold::SeqTrack::bound`]); at least 1.
    pub max_pending_runs: usize,
    /// In how many writes with nothing committed a record may be the first refused with a
    /// permanent error before it is dead-lettered although nothing proved the database
    /// healthy; at least 1.
    pub permanent_strikes: u32,
    /// The isolation every connection runs its transactions at.
    pub isolation: Isolation,
}

/// The isolation level of the sink's transactions, set per connection with
/// `SET default_transaction_isolation`.
///
/// The write is correct at both: it locks the rows it writes (`SELECT ... FOR UPDATE` by
/// primary key, and the open sessions of an inventory's RAE by serial), and inserts the rows
/// it did not find with `ON CONFLICT DO NOTHING`, retrying the transaction when a concurrent
/// writer inserted one first. SERIALIZABLE, the default, is CockroachDB's (which runs READ
/// COMMITTED only as an opt-in cluster setting). On PostgreSQL, SERIALIZABLE adds predicate
/// locks on the B-tree pages the lookups read: writers of disjoint sessions then fail each
/// other with 40001; READ COMMITTED relies on the row locks alone (see docs/cockroachdb.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Isolation {
    #[default]
    Serializable,
    ReadCommitted,
}

impl Isolation {
    /// The statement a new connection runs first.
    pub fn statement(self) -> &'static str {
        match self {
            Isolation::Serializable => SET_ISOLATION,
            Isolation::ReadCommitted => "SET default_transaction_isolation = 'read committed'",
        }
    }
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            max_pending_runs: DEFAULT_MAX_PENDING_RUNS,
            permanent_strikes: DEFAULT_PERMANENT_STRIKES,
            isolation: Isolation::default(),
        }
    }
}

/// See [`DbOptions::permanent_strikes`]: with the worker's backoff, some seconds of a record
/// failing alone before it goes to `dead_letters`.
pub const DEFAULT_PERMANENT_STRIKES: u32 = 3;

/// The strike counts kept at most; beyond, they start again from zero (a bound, not a
/// policy: only records failing right now are in it).
const MAX_STRIKE_ENTRIES: usize = 4096;

/// Why the database could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("the embedded migrations are malformed: {0}")]
    Migrations(String),
    #[error("cannot apply migration step {version}.{step} ({description})")]
    Migrate {
        version: i64,
        step: i64,
        description: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot read or record the applied migrations (table sink_migrations)")]
    Bookkeeping(#[source] sqlx::Error),
    #[error(
        "the database records migration step {version}.{step}, which this cloud-sink does not \
         have: a newer cloud-sink migrated it"
    )]
    UnknownStep { version: i64, step: i64 },
    #[error(
        "migration step {version}.{step} was applied as {applied:?} but this cloud-sink has \
         {embedded:?}: a released migration file was edited"
    )]
    ChangedStep {
        version: i64,
        step: i64,
        applied: String,
        embedded: String,
    },
}

/// The statement every new connection runs first (with the default [`Isolation`]).
pub const SET_ISOLATION: &str = "SET default_transaction_isolation = 'serializable'";

/// Every connection runs at [`DbOptions::isolation`], set with the
/// `default_transaction_isolation` session variable, which both PostgreSQL and CockroachDB
/// document (see docs/cockroachdb.md). sqlx's ping before each acquire stays: the writes
/// would retry a dead connection, but the pool is shared with `/readyz` and other direct
/// users, which would each get one error per connection killed by a database restart.
fn pool_options(options: &DbOptions) -> PgPoolOptions {
    let set_isolation = options.isolation.statement();
    PgPoolOptions::new()
        .max_connections(options.max_connections.max(1))
        .acquire_timeout(options.acquire_timeout)
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                conn.execute(set_isolation).await?;
                Ok(())
            })
        })
}

/// What to do about a failed attempt.
#[derive(Debug)]
enum Failure {
    /// Serialization failure, deadlock, ambiguous commit, lost connection: try again.
    Transient(String),
    /// The data of some record is unacceptable to the database (SQLSTATE class 22/23).
    Data(String),
    /// Anything else (schema missing, permissions): retrying the same batch cannot help.
    Permanent(String),
    Stopped,
}

/// Why an attempt failed.
#[derive(Debug)]
enum AttemptError {
    Sql(sqlx::Error),
    /// Rows the transaction was to insert were inserted by a concurrent writer since it read.
    Raced(usize),
}

impl From<sqlx::Error> for AttemptError {
    fn from(error: sqlx::Error) -> Self {
        AttemptError::Sql(error)
    }
}

fn classify_attempt(error: &AttemptError) -> Failure {
    match error {
        AttemptError::Sql(error) => classify(error),
        AttemptError::Raced(count) => Failure::Transient(format!(
            "a concurrent writer inserted {count} of the batch's new sessions first"
        )),
    }
}

fn classify(error: &sqlx::Error) -> Failure {
    let message = error.to_string();
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or(Cow::Borrowed(""));
            match code.as_ref() {
                // 40001 serialization failure, 40P01 deadlock, 40003 statement completion
                // unknown (CockroachDB's ambiguous result: the write is idempotent).
                "40001" | "40P01" | "40003" => Failure::Transient(message),
                // 57P01..03: admin shutdown, crash shutdown, cannot connect now.
                "57P01" | "57P02" | "57P03" => Failure::Transient(message),
                c if c.starts_with("08") => Failure::Transient(message),
                c if c.starts_with("22") || c.starts_with("23") => Failure::Data(message),
                _ => Failure::Permanent(message),
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => Failure::Transient(message),
        sqlx::Error::PoolClosed => Failure::Stopped,
        _ => Failure::Permanent(message),
    }
}

/// Why a (part of a) batch was not written.
#[derive(Debug)]
enum AttemptsFailed {
    Data { message: String, retries: u32 },
    Permanent { message: String, retries: u32 },
    Write(WriteError),
}

/// The Cloud Registry: a PostgreSQL-protocol pool (CockroachDB, or PostgreSQL in tests).
#[derive(Debug)]
pub struct Db {
    pool: PgPool,
    retry: RetryPolicy,
    retries_total: AtomicU64,
    random: RandomState,
    /// Where committed gaps are reported for repair (`None`: nobody repairs them).
    gaps: Option<GapReporter>,
    max_pending_runs: usize,
    permanent_strikes: u32,
    /// Per record (a hash of its origin and bytes), the writes in a row it failed alone
    /// with a permanent error while nothing else in its batch committed.
    strikes: Mutex<HashMap<u64, u32>>,
}

impl Db {
    /// Connects (at least one connection must succeed now; later ones are made on demand).
    pub async fn connect(url: &str, options: DbOptions) -> Result<Db, DbError> {
        let pool = pool_options(&options)
            .connect(url)
            .await
            .map_err(DbError::Connect)?;
        Ok(Self::from_pool(pool, options.retry).with_limits(&options))
    }

    /// Checks the URL only; connections are made by the first write, whose retries then
    /// cover a database that is not up yet.
    pub fn connect_lazy(url: &str, options: DbOptions) -> Result<Db, DbError> {
        let pool = pool_options(&options)
            .connect_lazy(url)
            .map_err(DbError::Connect)?;
        Ok(Self::from_pool(pool, options.retry).with_limits(&options))
    }

    /// Wraps a pool made elsewhere. Its connections must run transactions at SERIALIZABLE
    /// (CockroachDB always does; [`Db::connect`] sets it for PostgreSQL), which the
    /// read-then-upsert of the seq bookkeeping relies on.
    pub fn from_pool(pool: PgPool, retry: RetryPolicy) -> Db {
        Db {
            pool,
            retry: RetryPolicy {
                max_attempts: retry.max_attempts.max(1),
                ..retry
            },
            retries_total: AtomicU64::new(0),
            random: RandomState::new(),
            gaps: None,
            max_pending_runs: DEFAULT_MAX_PENDING_RUNS,
            permanent_strikes: DEFAULT_PERMANENT_STRIKES,
            strikes: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the gap record cap and the permanent-error strikes of `options`.
    pub fn with_limits(mut self, options: &DbOptions) -> Db {
        self.max_pending_runs = options.max_pending_runs.max(1);
        self.permanent_strikes = options.permanent_strikes.max(1);
        self
    }

    /// Reports, after each commit, the sessions written with a gap and those whose gap
    /// closed, to the gap healer (never blocking: see [`GapReporter`]).
    pub fn with_gap_reports(mut self, reporter: GapReporter) -> Db {
        self.gaps = Some(reporter);
        self
    }

    /// Applies the embedded migrations, one statement per transaction and without a lock
    /// (see [`migrate`] for why several sinks may run this at once, and why a crash between
    /// two steps resumes correctly). A database the earlier sqlx migrator set up is accepted.
    pub async fn migrate(&self) -> Result<MigrationReport, DbError> {
        self.migrate_with(&Migrations::embedded()?).await
    }

    /// Applies `migrations` (tests run a prefix of the embedded ones this way).
    pub async fn migrate_with(&self, migrations: &Migrations) -> Result<MigrationReport, DbError> {
        migrate::run(&self.pool, migrations, &self.retry).await
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Transaction attempts beyond the first, over the life of this `Db` (for metrics).
    pub fn retries_total(&self) -> u64 {
        self.retries_total.load(Ordering::Relaxed)
    }

    /// Closes the pool; later writes fail with [`WriteError::Stopped`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes a batch: decode, fold, one transaction. A record the database rejects as data
    /// (SQLSTATE class 22/23) is isolated by halving the batch and dead-lettered alone; the
    /// halves then commit separately, which is safe because applying is idempotent (a
    /// failure after a committed half makes the caller write the whole batch again).
    ///
    /// A permanent error (any other refusal: a program limit such as an index row too large,
    /// a trigger, an internal error) is isolated the same way, but it may as well be the
    /// database's fault (a dropped table, a revoked grant), where dead-lettering would empty
    /// the partition into `dead_letters`. So a record refused permanently is dead-lettered
    /// when another part of the batch committed, which proves the database takes writes, or
    /// when it was the first one refused in [`DbOptions::permanent_strikes`] writes in which
    /// nothing committed. Two records refused with nothing committed look like the database:
    /// the write fails (the caller retries it, as for an outage), the first takes a strike,
    /// and nothing is dead-lettered.
    pub async fn write(&self, batch: &[Raw]) -> Result<WriteOutcome, WriteError> {
        let mut total = WriteOutcome::default();
        // Ranges of `batch` still to write, the next one last.
        let mut todo = Vec::new();
        todo.push(0..batch.len());
        let mut committed = false;
        // Single records refused permanently: not yet proven guilty, and proven.
        let mut suspects: Vec<(usize, String)> = Vec::new();
        let mut convicted: Vec<(usize, String)> = Vec::new();
        while let Some(range) = todo.pop() {
            let part = &batch[range.clone()];
            match self.write_part(part, prepare(part), || prepare(part)).await {
                Ok(outcome) => {
                    committed |= outcome.applied > 0;
                    add(&mut total, outcome);
                }
                Err(AttemptsFailed::Write(error)) => return Err(error),
                Err(AttemptsFailed::Permanent { message, retries }) => {
                    total.retries += retries;
                    if part.len() > 1 {
                        let middle = range.start + part.len() / 2;
                        todo.push(middle..range.end);
                        todo.push(range.start..middle);
                        continue;
                    }
                    if self.strikes(&part[0]) + 1 >= self.permanent_strikes {
                        convicted.push((range.start, message));
                    } else {
                        suspects.push((range.start, message));
                        if suspects.len() > 1 && !committed {
                            break;
                        }
                    }
                }
                Err(AttemptsFailed::Data { message, retries }) => {
                    total.retries += retries;
                    if part.len() > 1 {
                        let middle = range.start + part.len() / 2;
                        todo.push(middle..range.end);
                        todo.push(range.start..middle);
                        continue;
                    }
                    tracing::warn!(cause = %message, "the database rejected a record; dead-lettering it");
                    let mut only = Folded::default();
                    only.rejected.push((0, Rejection::Database(message)));
                    add(&mut total, self.write_dead_letters(part, only).await?);
                }
            }
        }
        if !suspects.is_empty() && !committed {
            // Only the first takes the strike: under a fault of the database, one record
            // after the other reaches its conviction, not the whole batch at once.
            self.strike(&batch[suspects[0].0]);
            return Err(systemic(&suspects));
        }
        convicted.append(&mut suspects);
        if !convicted.is_empty() {
            let mut letters = Folded::default();
            for (index, message) in &convicted {
                tracing::warn!(
                    cause = %message,
                    origin = ?batch[*index].origin,
                    "the database refused a record permanently; dead-lettering it so that its \
                     partition moves on"
                );
                letters
                    .rejected
                    .push((*index, Rejection::Database(message.clone())));
            }
            let outcome = self.write_dead_letters(batch, letters).await?;
            total.permanent_rejections += outcome.dead_lettered;
            add(&mut total, outcome);
            self.acquit(convicted.iter().map(|(index, _)| &batch[*index]));
        }
        Ok(total)
    }

    /// Writes only the dead letters of `plan` (positions into `batch`).
    async fn write_dead_letters(
        &self,
        batch: &[Raw],
        plan: Folded,
    ) -> Result<WriteOutcome, WriteError> {
        let again = plan.clone(); // dead letters only: small
        match self.write_part(batch, plan, || again.clone()).await {
            Ok(outcome) => Ok(outcome),
            Err(AttemptsFailed::Write(error)) => Err(error),
            Err(
                AttemptsFailed::Data { message, .. } | AttemptsFailed::Permanent { message, .. },
            ) => Err(WriteError::Unavailable {
                attempts: 1,
                message: format!("even the dead letter was rejected: {message}"),
            }),
        }
    }

    fn record_key(&self, raw: &Raw) -> u64 {
        self.random.hash_one(raw)
    }

    /// The failed writes `raw` took a strike in so far.
    fn strikes(&self, raw: &Raw) -> u32 {
        let key = self.record_key(raw);
        let strikes = self.strikes.lock().unwrap_or_else(|e| e.into_inner());
        strikes.get(&key).copied().unwrap_or(0)
    }

    /// `raw` was the first record refused permanently in a write where nothing committed.
    fn strike(&self, raw: &Raw) {
        let key = self.record_key(raw);
        let mut strikes = self.strikes.lock().unwrap_or_else(|e| e.into_inner());
        if strikes.len() >= MAX_STRIKE_ENTRIES && !strikes.contains_key(&key) {
            strikes.clear();
        }
        *strikes.entry(key).or_insert(0) += 1;
    }

    fn acquit<'a>(&self, records: impl Iterator<Item = &'a Raw>) {
        let keys: Vec<u64> = records.map(|raw| self.record_key(raw)).collect();
        let mut strikes = self.strikes.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            strikes.remove(&key);
        }
    }

    /// Runs `plan` in a transaction, retried. An attempt consumes its plan; a retry (rare)
    /// takes a new one from `remake` (decoding the batch again) rather than every attempt
    /// paying for a copy.
    async fn write_part(
        &self,
        batch: &[Raw],
        plan: Folded,
        remake: impl Fn() -> Folded,
    ) -> Result<WriteOutcome, AttemptsFailed> {
        let mut attempt = 1;
        let mut first = Some(plan);
        loop {
            let plan = first.take().unwrap_or_else(&remake);
            let failure = match self.transaction(batch, plan).await {
                Ok(mut outcome) => {
                    outcome.retries = attempt - 1;
                    return Ok(outcome);
                }
                Err(error) => classify_attempt(&error),
            };
            let message = match failure {
                Failure::Transient(message) => message,
                Failure::Data(message) => {
                    return Err(AttemptsFailed::Data {
                        message,
                        retries: attempt - 1,
                    })
                }
                Failure::Permanent(message) => {
                    return Err(AttemptsFailed::Permanent {
                        message,
                        retries: attempt - 1,
                    })
                }
                Failure::Stopped => return Err(AttemptsFailed::Write(WriteError::Stopped)),
            };
            if attempt >= self.retry.max_attempts {
                return Err(AttemptsFailed::Write(WriteError::Unavailable {
                    attempts: attempt,
                    message,
                }));
            }
            let mut hasher = self.random.build_hasher();
            hasher.write_u32(attempt);
            hasher.write_u64(self.retries_total.load(Ordering::Relaxed));
            let pause = self.retry.backoff(attempt, hasher.finish());
            tracing::debug!(attempt, cause = %message, ?pause, "retrying the batch transaction");
            self.retries_total.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(pause).await;
            attempt += 1;
        }
    }

    /// One attempt: everything of the batch in one transaction, or nothing.
    async fn transaction(
        &self,
        batch: &[Raw],
        mut plan: Folded,
    ) -> Result<WriteOutcome, AttemptError> {
        let mut tx = self.pool.begin().await?;
        let serials: Vec<String> = plan
            .inventory_serials()
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        let stored = read_sessions(&mut tx, &plan.sessions_to_read(), &serials).await?;
        let rows = plan.settle(&stored, self.max_pending_runs);
        let raced = write_sessions(&mut tx, &rows).await?;
        if raced > 0 {
            // Dropping `tx` rolls it back; the retry reads (and locks) the rows now there.
            return Err(AttemptError::Raced(raced));
        }
        write_raes(&mut tx, &plan.raes).await?;
        let rejected: Vec<(usize, String)> = plan
            .rejected
            .iter()
            .map(|(index, why)| (*index, why.to_string()))
            .collect();
        write_dead_letters(&mut tx, batch, &rejected).await?;
        tx.commit().await?;
        if let Some(gaps) = &self.gaps {
            report_gaps(gaps, &stored, &rows);
        }
        Ok(WriteOutcome {
            applied: plan.applied,
            dead_lettered: rejected.len(),
            gap_overflows: rows.iter().filter(|row| row.gap_overflow).count(),
            ..WriteOutcome::default()
        })
    }
}

/// Tells the healer which committed rows have a gap and which had one that is now closed.
fn report_gaps(
    gaps: &GapReporter,
    stored: &std::collections::BTreeMap<rae_proto::SessionId, StoredSession>,
    rows: &[SessionRow],
) {
    for row in rows {
        let before = stored.get(&row.session);
        let had_gap = before.is_some_and(|s| s.track.needs_resync(s.inventory_seq));
        // A closed session needs no Snapshot: its gap is history.
        let closed = row.fold.closed.is_some() || before.is_some_and(|s| s.closed_seq.is_some());
        let open = row.needs_resync && !closed;
        if open || had_gap {
            gaps.report(GapNotice {
                serial: row.fold.serial.clone(),
                session: row.session,
                open,
            });
        }
    }
}

fn add(total: &mut WriteOutcome, part: WriteOutcome) {
    total.applied += part.applied;
    total.dead_lettered += part.dead_lettered;
    total.retries += part.retries;
    total.permanent_rejections += part.permanent_rejections;
    total.gap_overflows += part.gap_overflows;
}

/// Several records refused permanently and nothing committed: most likely the database.
fn systemic(suspects: &[(usize, String)]) -> WriteError {
    let message = suspects.first().map_or("", |(_, m)| m.as_str());
    WriteError::Unavailable {
        attempts: 1,
        message: format!(
            "{} refused permanently and nothing committed (the database, not the records?): \
             {message}",
            match suspects.len() {
                1 => "a record alone".to_owned(),
                n => format!("{n} records"),
            }
        ),
    }
}

impl BatchWriter for Db {
    fn write(
        &self,
        batch: &[Raw],
    ) -> impl Future<Output = Result<WriteOutcome, WriteError>> + Send {
        Db::write(self, batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            first_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(policy.backoff(1, 0), Duration::from_millis(50));
        assert_eq!(policy.backoff(2, 0), Duration::from_millis(100));
        for attempt in 1..40 {
            for random in [0, 7, u64::MAX] {
                let pause = policy.backoff(attempt, random);
                assert!(
                    pause <= Duration::from_secs(1),
                    "{attempt} {random}: {pause:?}"
                );
            }
        }
        assert!(policy.backoff(30, 0) >= Duration::from_millis(500));
    }

    #[test]
    fn serialization_failures_and_lost_connections_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(matches!(classify(&io), Failure::Transient(_)));
        assert!(matches!(
            classify(&sqlx::Error::PoolTimedOut),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(&sqlx::Error::PoolClosed),
            Failure::Stopped
        ));
        assert!(matches!(
            classify(&sqlx::Error::RowNotFound),
            Failure::Permanent(_)
        ));
    }
}
