//! The `cloud-sink` binary as a test runs it: started with flags, reached over its
//! `/metrics`, `/healthz` and `/readyz` endpoint, and stopped with SIGTERM or SIGKILL.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::agent::workspace_binary;
use crate::netlab::{wait_until, LabError, LabProcess, Result};
use crate::services::PortLease;

/// How to start one Kafka-mode sink.
#[derive(Debug, Clone)]
pub struct KafkaSinkSpec {
    /// Names the instance in its log file name.
    pub name: String,
    /// Where its log goes.
    pub dir: PathBuf,
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub database_url: String,
    pub shutdown_deadline_secs: u64,
    /// Further flags, e.g. `--batch-max-records 500`.
    pub extra: Vec<String>,
}

/// A running `cloud-sink kafka`.
pub struct Sink {
    process: LabProcess,
    metrics_addr: SocketAddr,
    _port: PortLease,
}

/// `/metrics` parsed: series (`name{labels}`) to value.
pub type Samples = BTreeMap<String, f64>;

impl Sink {
    pub fn start_kafka(spec: &KafkaSinkSpec) -> Result<Sink> {
        let port = PortLease::acquire().map_err(|e| LabError::Timeout {
            what: "a free port for /metrics".into(),
            waited: Duration::ZERO,
            last: e.to_string(),
        })?;
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], port.port()));
        let mut cmd = Command::new(workspace_binary("cloud-sink")?);
        cmd.args(["--metrics-addr", &metrics_addr.to_string()])
            .args(["--log-format", "json"])
            .args([
                "--shutdown-deadline-secs",
                &spec.shutdown_deadline_secs.to_string(),
            ])
            .arg("kafka")
            .args(["--topic", &spec.topic])
            .args(["--group", &spec.group])
            .arg("--migrate")
            .args(&spec.extra)
            // Connection settings through the environment, as a container gets them.
            .env("CLOUD_SINK_BROKERS", &spec.brokers)
            .env("CLOUD_SINK_DATABASE_URL", &spec.database_url);
        let log = spec.dir.join(format!("{}.log", spec.name));
        let process = LabProcess::spawn(cmd, log)?;
        Ok(Sink {
            process,
            metrics_addr,
            _port: port,
        })
    }

    /// Starts `cloud-sink <args>` with `env` (any mode: `mqtt ...`, `bridge ...`), JSON logs,
    /// `/metrics` on a free loopback port, its log in `dir/<name>.log`.
    pub fn start_mode(
        name: &str,
        dir: &Path,
        args: &[String],
        env: &[(&str, String)],
    ) -> Result<Sink> {
        let port = PortLease::acquire().map_err(|e| LabError::Timeout {
            what: "a free port for /metrics".into(),
            waited: Duration::ZERO,
            last: e.to_string(),
        })?;
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], port.port()));
        let mut cmd = Command::new(workspace_binary("cloud-sink")?);
        cmd.args(["--metrics-addr", &metrics_addr.to_string()])
            .args(["--log-format", "json"])
            .args(args);
        for (key, value) in env {
            cmd.env(key, value);
        }
        let process = LabProcess::spawn(cmd, dir.join(format!("{name}.log")))?;
        Ok(Sink {
            process,
            metrics_addr,
            _port: port,
        })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer (a loopback address).
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    /// One GET; the status code and body.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.metrics_addr, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(stream, "GET {path} HTTP/1.1\r\nHost: sink\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    }

    /// `/metrics`, parsed.
    pub fn metrics(&self) -> std::io::Result<Samples> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            return Err(std::io::Error::other(format!("/metrics answered {status}")));
        }
        Ok(parse_samples(&body))
    }

    /// Waits until `/readyz` answers 200, failing early with the log if the sink exits.
    pub fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let what = format!("{} ready", self.process.label());
        wait_until(what, within, || {
            self.process.ensure_running()?;
            Ok(match self.get("/readyz") {
                Ok((200, _)) => Ok(()),
                Ok((status, body)) => Err(format!("{status} {}", body.trim())),
                Err(e) => Err(e.to_string()),
            })
        })
    }

    /// Resident memory from `/proc/<pid>/status`, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let path = PathBuf::from(format!("/proc/{}/status", self.pid()));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LabError::io("reading the sink's memory", &path, e))?;
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| LabError::Timeout {
                what: "VmRSS in /proc status".into(),
                waited: Duration::ZERO,
                last: text.clone(),
            })
    }

    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// SIGKILL: no drain, no commit.
    pub fn kill(mut self) -> Result<()> {
        self.process.signal(Signal::SIGKILL)?;
        self.process.wait_exit(Duration::from_secs(10))?;
        Ok(())
    }

    /// SIGTERM and the exit status and how long the exit took (up to `within`).
    pub fn terminate(mut self, within: Duration) -> Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        self.process.signal(Signal::SIGTERM)?;
        let status = self.process.wait_exit(within)?;
        Ok((status, started.elapsed()))
    }
}

/// Prometheus text to samples; comments and unparsable lines are left out.
pub fn parse_samples(text: &str) -> Samples {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of `name` (any labels).
pub fn sum(samples: &Samples, name: &str) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| {
            series.as_str() == name
                || series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{'))
        })
        .map(|(_, v)| v)
        .sum()
}
