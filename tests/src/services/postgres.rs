//! A PostgreSQL 15 cluster of its own on a loopback port, run as the `postgres` system
//! user (PostgreSQL refuses to run as root), with `SERIALIZABLE` as the default isolation
//! because that is CockroachDB's, the production store.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use sqlx::Connection;

use super::ports::{retry_on_port_clash, PortLease};
use super::process::{
    ensure_stopped, find_program, run_to_end, stop_slot, Launch, ServiceProcess, ServiceUser,
};
use super::ServiceError;
use crate::labdir::OwnedDir;

const SERVICE: &str = "postgres";
const BIN: &str = "/usr/lib/postgresql/15/bin";
const HINT: &str = "install the Debian package postgresql-15 (scripts/setup does)";
const READY_WITHIN: Duration = Duration::from_secs(30);
/// The superuser initdb creates; loopback clients are trusted, so it has no password.
const SUPERUSER: &str = "postgres";

/// A running PostgreSQL cluster; stopped and its data removed on drop.
#[derive(Debug)]
pub struct Postgres {
    // Fields drop in order: the server goes before its port and its data directory.
    process: Option<ServiceProcess>,
    lease: PortLease,
    dir: OwnedDir,
    user: ServiceUser,
}

impl Postgres {
    /// Creates a fresh cluster (initdb) and starts it.
    pub fn start() -> Result<Postgres, ServiceError> {
        let user = ServiceUser::lookup(SERVICE, "postgres")?;
        let initdb = find_program(SERVICE, &[&format!("{BIN}/initdb")], HINT)?;
        let dir = OwnedDir::create(SERVICE)
            .map_err(|e| ServiceError::io("creating the cluster dir", super::lab_root(), e))?;
        user.own(dir.path())?;
        let data = data_dir(dir.path());
        let mut command = Command::new(initdb);
        command
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--username",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .current_dir(dir.path());
        user.apply(&mut command);
        run_to_end(SERVICE, &mut command)?;

        let (lease, process) = retry_on_port_clash(SERVICE, || {
            let lease = PortLease::acquire()?;
            write_settings(dir.path(), lease.port())?;
            let process = launch(dir.path(), lease.port(), &user)?;
            Ok((lease, process))
        })?;
        Ok(Postgres {
            process: Some(process),
            lease,
            dir,
            user,
        })
    }

    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.lease.port()
    }

    /// The sqlx URL of `database`, as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@{}:{}/{database}",
            self.host(),
            self.port()
        )
    }

    /// The URL of the `postgres` maintenance database.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// Creates an empty database and returns its sqlx URL.
    pub async fn create_database(&self, name: &str) -> Result<String, ServiceError> {
        check_database_name(name)?;
        let mut conn = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .map_err(|source| ServiceError::Sql {
                what: format!("connecting to {}", self.admin_url()),
                source,
            })?;
        // The name is checked above to need no quoting beyond the double quotes.
        sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .map_err(|source| ServiceError::Sql {
                what: format!("creating database {name}"),
                source,
            })?;
        let _ = conn.close().await;
        Ok(self.url(name))
    }

    /// The cluster's directory (data, Unix socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Fast shutdown (clients are disconnected, transactions rolled back); the data and
    /// the port stay for [`Postgres::start_again`].
    pub fn stop(&mut self) -> Result<(), ServiceError> {
        stop_slot(SERVICE, &mut self.process)
    }

    /// Starts the stopped server again on the same data directory and port.
    pub fn start_again(&mut self) -> Result<(), ServiceError> {
        ensure_stopped(SERVICE, &self.process)?;
        self.process = Some(launch(self.dir.path(), self.port(), &self.user)?);
        Ok(())
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

/// Names that need no quoting rules beyond double quotes and fold the same way everywhere.
fn check_database_name(name: &str) -> Result<(), ServiceError> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(ServiceError::InvalidName {
            what: "database name",
            value: name.to_owned(),
            rule: "[a-z_][a-z0-9_]{0,62}",
        })
    }
}

/// The lab's settings go to postgresql.auto.conf, which PostgreSQL reads after
/// postgresql.conf, so a retry on another port rewrites them whole.
fn write_settings(dir: &Path, port: u16) -> Result<(), ServiceError> {
    let path = data_dir(dir).join("postgresql.auto.conf");
    // cluster_name shows in every backend's process title, so the lab directory
    // names all of the cluster's processes, not only the postmaster.
    let settings = format!(
        "listen_addresses = '127.0.0.1'\n\
         port = {port}\n\
         unix_socket_directories = '{dir}'\n\
         cluster_name = '{dir}'\n\
         default_transaction_isolation = 'serializable'\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         shared_buffers = '16MB'\n\
         max_connections = 100\n\
         logging_collector = off\n\
         log_line_prefix = '%m [%p] '\n",
        dir = dir.display()
    );
    std::fs::write(&path, settings)
        .map_err(|e| ServiceError::io("writing PostgreSQL settings", &path, e))
}

fn launch(dir: &Path, port: u16, user: &ServiceUser) -> Result<ServiceProcess, ServiceError> {
    let postgres = find_program(SERVICE, &[&format!("{BIN}/postgres")], HINT)?;
    let pg_isready = find_program(SERVICE, &[&format!("{BIN}/pg_isready")], HINT)?;
    let mut command = Command::new(postgres);
    command.arg("-D").arg(data_dir(dir)).current_dir(dir);
    user.apply(&mut command);
    let mut process = ServiceProcess::spawn(Launch {
        service: SERVICE,
        command,
        log: dir.join("postgres.log"),
        // SIGTERM is the "smart" shutdown, which waits for every client to leave.
        stop_signal: Signal::SIGINT,
        stop_grace: Duration::from_secs(30),
    })?;
    let port_arg = port.to_string();
    process.wait_ready(
        "a server accepting connections (pg_isready)",
        READY_WITHIN,
        || {
            let status = Command::new(&pg_isready)
                .args(["-h", "127.0.0.1", "-p", &port_arg, "-U", SUPERUSER])
                .args(["-d", "postgres", "-t", "1", "-q"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("running pg_isready: {e}"))?;
            // pg_isready: 0 accepting, 1 rejecting (starting up), 2 no response.
            match status.code() {
                Some(0) => Ok(()),
                Some(1) => Err("server is rejecting connections (starting up)".into()),
                Some(2) => Err("no response on the port".into()),
                _ => Err(format!("pg_isready {status}")),
            }
        },
    )?;
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names() {
        for ok in ["sink", "_t1", "a_b_9"] {
            assert!(check_database_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1a", "Sink", "a-b", "a\"b", &"a".repeat(64)] {
            assert!(check_database_name(bad).is_err(), "{bad:?}");
        }
    }
}
