//! The schema migrations, run the way CockroachDB requires: every statement of a migration
//! file is one step, executed alone as an implicit transaction (CockroachDB supports schema
//! changes only there with full guarantees, and recommends one schema change per transaction);
//! no advisory lock (CockroachDB has none).
//!
//! Why it is safe without a lock and across crashes: every step is idempotent DDL (`IF NOT
//! EXISTS`, checked by a unit test), and a step is recorded in `sink_migrations` only after it
//! committed, in a transaction of its own (DDL and DML never share one). A crash between the
//! two re-runs the step on the next start, a no-op. Two sinks migrating at once may both run a
//! step; PostgreSQL then fails one of the racing `CREATE ... IF NOT EXISTS` with a unique
//! violation (CockroachDB with a retryable error), which is retried, and the retry finds the
//! object there. The bookkeeping rows are written with `ON CONFLICT DO NOTHING`.
//!
//! A database migrated by the earlier sqlx migrator (`_sqlx_migrations`) is accepted: the
//! steps of every version it lists as successful are recorded as adopted, not run again.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};

use sqlx::{PgPool, Row};

use super::{classify, DbError, Failure, RetryPolicy};

/// One migration file, embedded in the binary. Files are append-only once released: a step
/// already applied somewhere must never change (the runner refuses a changed one).
#[derive(Debug, Clone, Copy)]
pub struct MigrationFile {
    /// The file's number (`0001_...` is 1), the version the sqlx migrator recorded.
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every file of `cloud-sink/migrations/`, in order (a unit test checks the list is whole).
pub const FILES: &[MigrationFile] = &[
    MigrationFile {
        version: 1,
        name: "registry",
        sql: include_str!("../../../migrations/0001_registry.sql"),
    },
    MigrationFile {
        version: 2,
        name: "pending_runs",
        sql: include_str!("../../../migrations/0002_pending_runs.sql"),
    },
    MigrationFile {
        version: 3,
        name: "pending_overflow",
        sql: include_str!("../../../migrations/0003_pending_overflow.sql"),
    },
];

/// One statement of a migration file: one schema change, one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub version: i64,
    /// 1-based position of the statement in its file.
    pub step: i64,
    pub description: String,
    /// The statement, comments removed and whitespace collapsed outside quotes.
    pub statement: String,
}

impl Step {
    pub fn key(&self) -> (i64, i64) {
        (self.version, self.step)
    }
}

/// The steps of a set of migration files, in the order they run.
#[derive(Debug, Clone)]
pub struct Migrations {
    steps: Vec<Step>,
}

impl Migrations {
    /// The migrations compiled into this binary.
    pub fn embedded() -> Result<Migrations, DbError> {
        Self::from_files(FILES)
    }

    /// Splits `files` (versions strictly increasing, each with at least one statement).
    pub fn from_files(files: &[MigrationFile]) -> Result<Migrations, DbError> {
        let mut steps = Vec::new();
        let mut last = 0;
        for file in files {
            if file.version <= last {
                return Err(DbError::Migrations(format!(
                    "migration {} ({}) does not follow {last}",
                    file.version, file.name
                )));
            }
            last = file.version;
            let statements = split(file.sql).map_err(|why| {
                DbError::Migrations(format!("migration {} ({}): {why}", file.version, file.name))
            })?;
            if statements.is_empty() {
                return Err(DbError::Migrations(format!(
                    "migration {} ({}) has no statement",
                    file.version, file.name
                )));
            }
            for (index, statement) in statements.into_iter().enumerate() {
                steps.push(Step {
                    version: file.version,
                    step: i64::try_from(index + 1).unwrap_or(i64::MAX),
                    description: describe(file.name, &statement),
                    statement,
                });
            }
        }
        Ok(Migrations { steps })
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// The first `n` steps only: what a run that crashed after `n` steps had done.
    pub fn first(&self, n: usize) -> Migrations {
        Migrations {
            steps: self.steps.iter().take(n).cloned().collect(),
        }
    }
}

/// What a run did, step by step: `(version, step)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Steps this run executed (each in a transaction of its own).
    pub applied: Vec<(i64, i64)>,
    /// Steps recorded as done because `_sqlx_migrations` lists their version as successful.
    pub adopted: Vec<(i64, i64)>,
    /// Steps found already recorded.
    pub already: usize,
}

/// The bookkeeping table; itself idempotent DDL, run alone.
pub const BOOKKEEPING: &str = "CREATE TABLE IF NOT EXISTS sink_migrations (\
    version INT8 NOT NULL, \
    step INT8 NOT NULL, \
    description TEXT NOT NULL, \
    statement TEXT NOT NULL, \
    origin TEXT NOT NULL, \
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), \
    PRIMARY KEY (version, step))";

const ORIGIN_APPLIED: &str = "applied";
const ORIGIN_SQLX: &str = "adopted from _sqlx_migrations";

/// Brings the database to `migrations`. Each DDL statement is sent alone over the simple query
/// protocol: an implicit transaction of one statement, on PostgreSQL and CockroachDB alike.
pub(super) async fn run(
    pool: &PgPool,
    migrations: &Migrations,
    retry: &RetryPolicy,
) -> Result<MigrationReport, DbError> {
    let mut report = MigrationReport::default();
    retrying(retry, || sqlx::raw_sql(BOOKKEEPING).execute(pool))
        .await
        .map_err(DbError::Bookkeeping)?;
    let mut applied = read_applied(pool, retry).await?;
    let known: BTreeMap<(i64, i64), &Step> =
        migrations.steps().iter().map(|s| (s.key(), s)).collect();
    for (key, statement) in &applied {
        match known.get(key) {
            None => {
                return Err(DbError::UnknownStep {
                    version: key.0,
                    step: key.1,
                })
            }
            Some(step) if step.statement != *statement => {
                return Err(DbError::ChangedStep {
                    version: key.0,
                    step: key.1,
                    applied: statement.clone(),
                    embedded: step.statement.clone(),
                })
            }
            Some(_) => {}
        }
    }
    for version in sqlx_versions(pool, retry).await? {
        let steps: Vec<&Step> = migrations
            .steps()
            .iter()
            .filter(|s| s.version == version)
            .collect();
        if steps.is_empty() {
            return Err(DbError::UnknownStep { version, step: 0 });
        }
        for step in steps {
            if applied.contains_key(&step.key()) {
                continue;
            }
            record(pool, retry, step, ORIGIN_SQLX).await?;
            applied.insert(step.key(), step.statement.clone());
            report.adopted.push(step.key());
        }
    }
    if !report.adopted.is_empty() {
        tracing::info!(
            steps = report.adopted.len(),
            "adopted the migrations recorded by the earlier sqlx migrator"
        );
    }
    for step in migrations.steps() {
        if applied.contains_key(&step.key()) {
            if !report.adopted.contains(&step.key()) {
                report.already += 1;
            }
            continue;
        }
        tracing::info!(
            version = step.version,
            step = step.step,
            what = %step.description,
            "applying a migration step"
        );
        retrying(retry, || sqlx::raw_sql(&step.statement).execute(pool))
            .await
            .map_err(|source| DbError::Migrate {
                version: step.version,
                step: step.step,
                description: step.description.clone(),
                source,
            })?;
        record(pool, retry, step, ORIGIN_APPLIED).await?;
        report.applied.push(step.key());
    }
    Ok(report)
}

async fn read_applied(
    pool: &PgPool,
    retry: &RetryPolicy,
) -> Result<BTreeMap<(i64, i64), String>, DbError> {
    let rows = retrying(retry, || {
        sqlx::query("SELECT version, step, statement FROM sink_migrations").fetch_all(pool)
    })
    .await
    .map_err(DbError::Bookkeeping)?;
    let mut applied = BTreeMap::new();
    for row in rows {
        let key = (
            row.try_get::<i64, _>("version")
                .map_err(DbError::Bookkeeping)?,
            row.try_get::<i64, _>("step")
                .map_err(DbError::Bookkeeping)?,
        );
        applied.insert(
            key,
            row.try_get::<String, _>("statement")
                .map_err(DbError::Bookkeeping)?,
        );
    }
    Ok(applied)
}

/// The versions the sqlx migrator recorded as successful; none if it never ran here.
async fn sqlx_versions(pool: &PgPool, retry: &RetryPolicy) -> Result<Vec<i64>, DbError> {
    let exists: i64 = retrying(retry, || {
        sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'",
        )
        .fetch_one(pool)
    })
    .await
    .map_err(DbError::Bookkeeping)?;
    if exists == 0 {
        return Ok(Vec::new());
    }
    retrying(retry, || {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
    })
    .await
    .map_err(DbError::Bookkeeping)
}

async fn record(
    pool: &PgPool,
    retry: &RetryPolicy,
    step: &Step,
    origin: &str,
) -> Result<(), DbError> {
    retrying(retry, || {
        sqlx::query(
            "INSERT INTO sink_migrations (version, step, description, statement, origin) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (version, step) DO NOTHING",
        )
        .bind(step.version)
        .bind(step.step)
        .bind(&step.description)
        .bind(&step.statement)
        .bind(origin)
        .execute(pool)
    })
    .await
    .map_err(DbError::Bookkeeping)?;
    Ok(())
}

/// Runs `attempt` again on what a concurrent migrator or a flaky connection causes: the
/// transient failures of a write, and the unique/duplicate-object errors PostgreSQL raises
/// when two `CREATE ... IF NOT EXISTS` race (the retry then finds the object and skips).
async fn retrying<T, F, Fut>(retry: &RetryPolicy, mut attempt: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let random = RandomState::new();
    let mut tries = 1;
    loop {
        let error = match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        if tries >= retry.max_attempts.max(1) || !raced(&error) {
            return Err(error);
        }
        let mut hasher = random.build_hasher();
        hasher.write_u32(tries);
        let pause = retry.backoff(tries, hasher.finish());
        tracing::debug!(cause = %error, ?pause, "retrying a migration statement");
        tokio::time::sleep(pause).await;
        tries += 1;
    }
}

fn raced(error: &sqlx::Error) -> bool {
    if let sqlx::Error::Database(db) = error {
        // 23505 unique violation (on PostgreSQL's catalogs), 42P07 duplicate table,
        // 42710 duplicate object.
        if matches!(db.code().as_deref(), Some("23505" | "42P07" | "42710")) {
            return true;
        }
    }
    matches!(classify(error), Failure::Transient(_))
}

/// `registry: CREATE TABLE IF NOT EXISTS raes`: the statement up to its first parenthesis.
fn describe(file: &str, statement: &str) -> String {
    let head = statement.split('(').next().unwrap_or(statement).trim();
    let head: String = head.chars().take(100).collect();
    format!("{file}: {head}")
}

/// Splits SQL text into statements on `;`, dropping `--` and `/* */` comments and collapsing
/// whitespace outside quotes. Dollar quoting is refused: a `;` inside it would be split.
pub fn split(sql: &str) -> Result<Vec<String>, String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut space = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for next in chars.by_ref() {
                    if next == '\n' {
                        break;
                    }
                }
                space = true;
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                let mut closed = false;
                for next in chars.by_ref() {
                    if previous == '*' && next == '/' {
                        closed = true;
                        break;
                    }
                    previous = next;
                }
                if !closed {
                    return Err("a /* comment is not closed".into());
                }
                space = true;
            }
            '$' => return Err("dollar quoting ($) is not supported".into()),
            ';' => {
                if !current.is_empty() {
                    statements.push(std::mem::take(&mut current));
                }
                space = false;
            }
            c if c.is_whitespace() => space = true,
            '\'' | '"' => {
                if space && !current.is_empty() {
                    current.push(' ');
                }
                space = false;
                current.push(c);
                let mut closed = false;
                while let Some(next) = chars.next() {
                    current.push(next);
                    if next == c {
                        if chars.peek() == Some(&c) {
                            if let Some(doubled) = chars.next() {
                                current.push(doubled);
                            }
                            continue;
                        }
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(format!("a {c} quote is not closed"));
                }
            }
            c => {
                if space && !current.is_empty() {
                    current.push(' ');
                }
                space = false;
                current.push(c);
            }
        }
    }
    if !current.is_empty() {
        statements.push(current);
    }
    Ok(statements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_on_semicolons_outside_quotes_and_comments() {
        let sql = "-- a comment; with a semicolon\n\
                   CREATE TABLE IF NOT EXISTS t (\n  a TEXT DEFAULT 'x;  y''z', -- why\n  \
                   \"b;c\" INT8 /* block; */ NOT NULL\n);\n\n\
                   CREATE INDEX IF NOT EXISTS i ON t (a)";
        assert_eq!(
            split(sql).unwrap(),
            vec![
                "CREATE TABLE IF NOT EXISTS t ( a TEXT DEFAULT 'x;  y''z', \"b;c\" INT8 NOT NULL )"
                    .to_owned(),
                "CREATE INDEX IF NOT EXISTS i ON t (a)".to_owned(),
            ]
        );
        assert_eq!(split("  ;; -- nothing\n").unwrap(), Vec::<String>::new());
        assert!(split("SELECT 'open").is_err());
        assert!(split("SELECT 1 /* open").is_err());
        assert!(split("DO $$ BEGIN END $$").is_err());
    }

    #[test]
    fn every_embedded_step_is_one_idempotent_schema_change() {
        let migrations = Migrations::embedded().unwrap();
        assert_eq!(migrations.steps().len(), 9, "{:#?}", migrations.steps());
        for step in migrations.steps() {
            let upper = step.statement.to_ascii_uppercase();
            // A crash after the DDL commits and before its bookkeeping row re-runs the step.
            assert!(
                upper.contains(" IF NOT EXISTS ") || upper.contains(" IF EXISTS "),
                "step {}.{} is not idempotent: {}",
                step.version,
                step.step,
                step.statement
            );
            assert!(!step.statement.contains(';'), "{}", step.statement);
        }
        assert_eq!(
            migrations.steps()[0].description,
            "registry: CREATE TABLE IF NOT EXISTS raes"
        );
        assert_eq!(migrations.first(3).steps(), &migrations.steps()[..3]);
    }

    /// A file added to migrations/ but not to FILES would never run.
    #[test]
    fn files_lists_every_migration_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut on_disk = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if let Some(stem) = name.strip_suffix(".sql") {
                let (number, rest) = stem.split_once('_').unwrap();
                on_disk.push((number.parse::<i64>().unwrap(), rest.to_owned()));
            }
        }
        on_disk.sort();
        let listed: Vec<(i64, String)> = FILES
            .iter()
            .map(|f| (f.version, f.name.to_owned()))
            .collect();
        assert_eq!(listed, on_disk);
        for file in FILES {
            let path = dir.join(format!("{:04}_{}.sql", file.version, file.name));
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                file.sql,
                "{path:?}"
            );
        }
    }

    #[test]
    fn versions_must_increase() {
        let file = |version| MigrationFile {
            version,
            name: "x",
            sql: "CREATE TABLE IF NOT EXISTS x (a INT8)",
        };
        assert!(Migrations::from_files(&[file(1), file(2)]).is_ok());
        assert!(Migrations::from_files(&[file(2), file(1)]).is_err());
        assert!(Migrations::from_files(&[MigrationFile {
            sql: "-- empty",
            ..file(1)
        }])
        .is_err());
    }
}
