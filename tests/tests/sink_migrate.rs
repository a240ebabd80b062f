//! cloud-sink's migrations against a real PostgreSQL, run the way CockroachDB requires: one
//! schema change per transaction, no advisory lock. PostgreSQL's own event trigger records
//! which transaction ran which DDL; the resulting schema is compared with that of the earlier
//! single-transaction sqlx migration (its SQL kept as a fixture in `sink_migrate/sqlx/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use cloud_sink::apply::sql::migrate::{BOOKKEEPING, FILES};
use cloud_sink::apply::sql::{Migrations, SET_ISOLATION};
use cloud_sink::apply::{Db, DbError, DbOptions, RetryPolicy};
use rae_tests::services::Postgres;
use sqlx::{Connection, PgConnection, Row};

fn options() -> DbOptions {
    DbOptions {
        acquire_timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 40,
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
        },
        ..DbOptions::default()
    }
}

async fn connect(url: &str) -> Db {
    Db::connect(url, options()).await.unwrap()
}

/// A database migrated by the sqlx migrator the sink used before, from the SQL it had then.
async fn sqlx_migrated(pg: &Postgres, name: &str) -> String {
    let url = pg.create_database(name).await.unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sink_migrate/sqlx");
    let mut migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
    migrator.set_locking(false);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    migrator.run(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    url
}

/// Tables that are bookkeeping or test instrumentation, not the registry.
const NOT_SCHEMA: &str = "('sink_migrations', '_sqlx_migrations', 'ddl_log')";

/// The registry's columns, indexes and constraints, one line each.
async fn schema(url: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let queries = [
        format!(
            "SELECT concat_ws(' | ', 'column', table_name, ordinal_position, column_name, \
               data_type, udt_name, is_nullable, column_default) \
             FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name NOT IN {NOT_SCHEMA} \
             ORDER BY table_name, ordinal_position"
        ),
        format!(
            "SELECT concat_ws(' | ', 'index', tablename, indexname, indexdef) FROM pg_indexes \
             WHERE schemaname = 'public' AND tablename NOT IN {NOT_SCHEMA} \
             ORDER BY tablename, indexname"
        ),
        format!(
            "SELECT concat_ws(' | ', 'constraint', conrelid::regclass::TEXT, conname, \
               pg_get_constraintdef(oid)) \
             FROM pg_constraint \
             WHERE connamespace = 'public'::regnamespace \
               AND conrelid::regclass::TEXT NOT IN {NOT_SCHEMA} \
             ORDER BY 1"
        ),
    ];
    let mut lines = Vec::new();
    for query in queries {
        let rows: Vec<String> = sqlx::query_scalar(&query)
            .fetch_all(&mut conn)
            .await
            .unwrap();
        lines.extend(rows);
    }
    conn.close().await.unwrap();
    lines
}

/// The versions the sqlx migrator ever ran (the fixture's files); later files came with the
/// new runner.
const SQLX_VERSIONS: i64 = 1;

/// The schema the old way would give: the sqlx migrator over the fixture, then each later
/// file as one plain script. Checked to be the registry and not, say, empty.
async fn reference(pg: &Postgres) -> Vec<String> {
    let url = sqlx_migrated(pg, "reference").await;
    let mut conn = PgConnection::connect(&url).await.unwrap();
    for file in FILES.iter().filter(|f| f.version > SQLX_VERSIONS) {
        sqlx::raw_sql(file.sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("migration {} as a script: {e}", file.version));
    }
    conn.close().await.unwrap();
    let lines = schema(&url).await;
    let tables: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("column | "))
        .filter_map(|l| l.split(" | ").next())
        .collect();
    assert_eq!(
        tables,
        BTreeSet::from([
            "dead_letters",
            "device_dial_apps",
            "device_mdns_services",
            "device_sessions",
            "raes"
        ]),
        "{lines:#?}"
    );
    for index in [
        "device_sessions_open_by_serial",
        "dead_letters_kafka_origin",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(index)),
            "no {index}: {lines:#?}"
        );
    }
    lines
}

fn assert_same_schema(reference: &[String], actual: &[String], what: &str) {
    let missing: Vec<&String> = reference.iter().filter(|l| !actual.contains(l)).collect();
    let extra: Vec<&String> = actual.iter().filter(|l| !reference.contains(l)).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && reference.len() == actual.len(),
        "{what}: the schema differs from the sqlx migration's\nmissing: {missing:#?}\nextra: {extra:#?}"
    );
}

/// Records every DDL command with the id of its transaction and the query text it came in.
async fn log_ddl(url: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE ddl_log (txid INT8 NOT NULL, tag TEXT NOT NULL, query TEXT NOT NULL); \
         CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN \
           INSERT INTO ddl_log VALUES (txid_current(), tg_tag, current_query()); END $$; \
         CREATE EVENT TRIGGER log_ddl ON ddl_command_end EXECUTE FUNCTION log_ddl();",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

async fn bookkeeping(db: &Db) -> BTreeMap<(i64, i64), String> {
    sqlx::query("SELECT version, step, origin FROM sink_migrations")
        .fetch_all(db.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| ((r.get("version"), r.get("step")), r.get("origin")))
        .collect()
}

fn all_keys(migrations: &Migrations) -> Vec<(i64, i64)> {
    migrations.steps().iter().map(|s| s.key()).collect()
}

#[tokio::test]
async fn each_schema_change_runs_in_a_transaction_of_its_own_and_builds_the_old_schema() {
    let pg = Postgres::start().unwrap();
    let reference = reference(&pg).await;
    let migrations = Migrations::embedded().unwrap();
    let url = pg.create_database("one_per_tx").await.unwrap();
    log_ddl(&url).await;
    let db = connect(&url).await;
    let report = db.migrate().await.unwrap();
    assert_eq!(report.applied, all_keys(&migrations));
    assert_same_schema(&reference, &schema(&url).await, "the step runner's");

    let rows = sqlx::query("SELECT txid, tag, query FROM ddl_log")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let mut per_tx: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut queries = BTreeSet::new();
    for row in &rows {
        let query: String = row.get("query");
        per_tx
            .entry(row.get("txid"))
            .or_default()
            .push(format!("{}: {query}", row.get::<String, _>("tag")));
        queries.insert(query);
    }
    let crowded: Vec<&Vec<String>> = per_tx.values().filter(|v| v.len() > 1).collect();
    assert!(
        crowded.is_empty(),
        "transactions with more than one schema change: {crowded:#?}"
    );
    // Each DDL arrived alone: the query text of every command is exactly one step.
    let mut expected: BTreeSet<String> = migrations
        .steps()
        .iter()
        .map(|s| s.statement.clone())
        .collect();
    expected.insert(BOOKKEEPING.to_owned());
    assert_eq!(queries, expected);
    assert_eq!(per_tx.len(), migrations.steps().len() + 1, "{per_tx:#?}");
    // The bookkeeping rows (DML) were written by transactions that ran no DDL.
    let recorded_by: Vec<i64> = sqlx::query_scalar("SELECT xmin::TEXT::INT8 FROM sink_migrations")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(recorded_by.len(), migrations.steps().len());
    for txid in &recorded_by {
        assert!(
            !per_tx.contains_key(txid),
            "transaction {txid} wrote a bookkeeping row and ran {:?}",
            per_tx[txid]
        );
    }
    assert!(bookkeeping(&db).await.values().all(|o| o == "applied"));
}

/// The instrument sees what it must: the earlier sqlx migrator ran the whole file as one
/// transaction, which is what CockroachDB advises against.
#[tokio::test]
async fn the_ddl_log_shows_the_sqlx_migrator_put_every_schema_change_in_one_transaction() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("sqlx_logged").await.unwrap();
    log_ddl(&url).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sink_migrate/sqlx");
    let mut migrator = sqlx::migrate::Migrator::new(dir).await.unwrap();
    migrator.set_locking(false);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    migrator.run(&mut conn).await.unwrap();
    let per_tx: Vec<i64> =
        sqlx::query_scalar("SELECT count(*) FROM ddl_log GROUP BY txid ORDER BY count(*) DESC")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    conn.close().await.unwrap();
    // The fixture's file: the steps of the versions sqlx ran.
    let steps = Migrations::embedded()
        .unwrap()
        .steps()
        .iter()
        .filter(|s| s.version <= SQLX_VERSIONS)
        .count();
    assert!(
        per_tx
            .first()
            .is_some_and(|n| *n >= i64::try_from(steps).unwrap()),
        "expected one transaction with all {steps} schema changes, got {per_tx:?}"
    );
}

#[tokio::test]
async fn a_crash_between_steps_resumes_to_the_full_schema_and_a_rerun_is_a_no_op() {
    let pg = Postgres::start().unwrap();
    let reference = reference(&pg).await;
    let migrations = Migrations::embedded().unwrap();
    let total = migrations.steps().len();
    for done in [1, 3, total - 1] {
        let url = pg
            .create_database(&format!("crash_after_{done}"))
            .await
            .unwrap();
        let db = connect(&url).await;
        let first = db.migrate_with(&migrations.first(done)).await.unwrap();
        assert_eq!(first.applied.len(), done);
        // The next step's DDL committed, then the process died before recording it.
        let next = &migrations.steps()[done];
        sqlx::raw_sql(&next.statement)
            .execute(db.pool())
            .await
            .unwrap();
        let resumed = db.migrate().await.unwrap();
        assert_eq!(
            resumed.applied,
            all_keys(&migrations)[done..].to_vec(),
            "after {done} steps"
        );
        assert_eq!(resumed.already, done);
        assert_same_schema(&reference, &schema(&url).await, &format!("after {done}"));
        let again = db.migrate().await.unwrap();
        assert!(
            again.applied.is_empty() && again.adopted.is_empty(),
            "{again:?}"
        );
        assert_eq!(again.already, total);
        assert_eq!(bookkeeping(&db).await.len(), total);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_migrating_at_once_end_in_one_correct_schema() {
    let pg = Postgres::start().unwrap();
    let reference = reference(&pg).await;
    let total = Migrations::embedded().unwrap().steps().len();
    for round in 0..4 {
        let url = pg
            .create_database(&format!("at_once_{round}"))
            .await
            .unwrap();
        let sinks = [
            connect(&url).await,
            connect(&url).await,
            connect(&url).await,
        ];
        let (a, b, c) = tokio::join!(sinks[0].migrate(), sinks[1].migrate(), sinks[2].migrate());
        for (which, result) in [a, b, c].into_iter().enumerate() {
            let report = result.unwrap_or_else(|e| panic!("round {round}, sink {which}: {e:?}"));
            assert_eq!(report.applied.len() + report.already, total, "{report:?}");
        }
        assert_same_schema(&reference, &schema(&url).await, &format!("round {round}"));
        assert_eq!(bookkeeping(&sinks[0]).await.len(), total);
        let again = sinks[1].migrate().await.unwrap();
        assert_eq!(again.already, total);
    }
}

#[tokio::test]
async fn a_database_migrated_by_the_sqlx_migrator_is_accepted() {
    let pg = Postgres::start().unwrap();
    let reference = reference(&pg).await;
    let migrations = Migrations::embedded().unwrap();
    let url = sqlx_migrated(&pg, "from_sqlx").await;
    let db = connect(&url).await;
    sqlx::query(
        "INSERT INTO raes (serial, status, updated_at) VALUES ('RAE-OLD', 'online', now())",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let report = db.migrate().await.unwrap();
    // What sqlx ran is adopted, not run again; the files that came after are applied.
    let (old, new): (Vec<_>, Vec<_>) = all_keys(&migrations)
        .into_iter()
        .partition(|(version, _)| *version <= SQLX_VERSIONS);
    assert_eq!(report.adopted, old, "{report:?}");
    assert_eq!(report.applied, new, "{report:?}");
    let recorded = bookkeeping(&db).await;
    for (key, origin) in &recorded {
        assert_eq!(
            origin == "adopted from _sqlx_migrations",
            key.0 <= SQLX_VERSIONS,
            "{key:?}: {origin} ({recorded:?})"
        );
    }
    let again = db.migrate().await.unwrap();
    assert!(
        again.applied.is_empty() && again.adopted.is_empty(),
        "{again:?}"
    );
    assert_eq!(again.already, migrations.steps().len());
    assert_same_schema(&reference, &schema(&url).await, "after adoption");
    let status: String = sqlx::query_scalar("SELECT status FROM raes WHERE serial = 'RAE-OLD'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(status, "online");
    let sqlx_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(sqlx_rows, 1, "the old bookkeeping is left as it was");
}

#[tokio::test]
async fn an_older_sink_refuses_a_database_a_newer_one_migrated() {
    let pg = Postgres::start().unwrap();
    let migrations = Migrations::embedded().unwrap();
    let url = pg.create_database("newer").await.unwrap();
    let db = connect(&url).await;
    db.migrate().await.unwrap();
    let older = migrations.first(3);
    match db.migrate_with(&older).await {
        Err(DbError::UnknownStep {
            version: 1,
            step: 4,
        }) => {}
        other => panic!("expected UnknownStep 1.4, got {other:?}"),
    }
}

#[tokio::test]
async fn every_connection_runs_serializable_whatever_the_server_default() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("isolation").await.unwrap();
    let mut admin = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("ALTER DATABASE isolation SET default_transaction_isolation = 'read committed'")
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut plain = PgConnection::connect(&url).await.unwrap();
    let level: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    assert_eq!(level, "read committed", "the database default took effect");
    plain.close().await.unwrap();

    let db = connect(&url).await;
    let mut tx = db.pool().begin().await.unwrap();
    let level: String = sqlx::query_scalar("SELECT current_setting('transaction_isolation')")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(level, "serializable", "the sink runs `{SET_ISOLATION}`");
}
