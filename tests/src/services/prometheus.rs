//! A Prometheus server on a loopback port with its own generated config and TSDB directory,
//! run as the `prometheus` system user, scraping only the loopback targets a test names;
//! and `promtool`, to check rule files.
//!
//! Debian 12's `prometheus` package (2.42) provides both; scripts/setup installs it without
//! starting the package's own daemon.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::ports::{retry_on_port_clash, PortLease};
use super::process::{find_program, run_to_end, Launch, ServiceProcess, ServiceUser};
use super::ServiceError;
use crate::labdir::OwnedDir;

const SERVICE: &str = "prometheus";
const READY_WITHIN: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const HINT: &str = "install the Debian package prometheus (scripts/setup does)";

/// One scrape job: its name and its `127.0.0.1` targets.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    pub name: String,
    pub targets: Vec<SocketAddr>,
}

/// A running Prometheus; stopped and its directory removed on drop.
#[derive(Debug)]
pub struct Prometheus {
    // Fields drop in order: the server goes before its port and its directory.
    process: Option<ServiceProcess>,
    lease: PortLease,
    dir: OwnedDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `jobs` every `interval`, evaluating `rule_files` (copied
    /// into its directory), answering its HTTP API on 127.0.0.1. Every target must be a
    /// loopback address.
    pub fn start(
        jobs: &[ScrapeJob],
        interval: Duration,
        rule_files: &[&Path],
    ) -> Result<Prometheus, ServiceError> {
        let program = find_program(SERVICE, &["/usr/bin/prometheus"], HINT)?;
        let user = ServiceUser::lookup(SERVICE, "prometheus")?;
        for job in jobs {
            if let Some(t) = job.targets.iter().find(|t| !t.ip().is_loopback()) {
                return Err(ServiceError::io(
                    "checking scrape targets",
                    PathBuf::from(t.to_string()),
                    std::io::Error::other("only loopback targets may be scraped"),
                ));
            }
        }
        let dir = OwnedDir::create(SERVICE)
            .map_err(|e| ServiceError::io("creating the Prometheus dir", super::lab_root(), e))?;
        let mut rules = Vec::new();
        for (i, file) in rule_files.iter().enumerate() {
            let copy = dir.path().join(format!("rules-{i}.yml"));
            std::fs::copy(file, &copy)
                .map_err(|e| ServiceError::io("copying a rule file", *file, e))?;
            rules.push(copy);
        }
        write_config(dir.path(), jobs, interval, &rules)?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)
            .map_err(|e| ServiceError::io("creating the TSDB dir", &data, e))?;
        user.own(dir.path())?;
        user.own(&data)?;
        let (lease, process) = retry_on_port_clash(SERVICE, || {
            let lease = PortLease::acquire()?;
            let process = launch(&program, dir.path(), lease.port(), &user)?;
            Ok((lease, process))
        })?;
        Ok(Prometheus {
            process: Some(process),
            lease,
            dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.lease.port()))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("prometheus.log")
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// One GET of `path_and_query` (already encoded): the status code and the body.
    pub fn get(&self, path_and_query: &str) -> std::io::Result<(u16, String)> {
        http_get(self.addr(), path_and_query)
    }

    /// GET `/api/v1/<endpoint>?<params>` (values percent-encoded here) and its JSON, which
    /// must say `"status":"success"`; the `data` member.
    pub fn api(
        &self,
        endpoint: &str,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Value, String> {
        let query: Vec<String> = params
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        let path = format!("/api/v1/{endpoint}?{}", query.join("&"));
        let (status, body) = self.get(&path).map_err(|e| format!("GET {path}: {e}"))?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| format!("GET {path} answered {status} with no JSON ({e}): {body}"))?;
        if status != 200 || json["status"] != "success" {
            return Err(format!("GET {path} answered {status}: {body}"));
        }
        Ok(json["data"].clone())
    }

    /// An instant query's result vector: each sample's labels and value.
    pub fn query(&self, promql: &str) -> Result<Vec<(serde_json::Value, f64)>, String> {
        let data = self.api("query", &[("query", promql)])?;
        let result = data["result"]
            .as_array()
            .ok_or_else(|| format!("{promql}: no result vector in {data}"))?;
        result
            .iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse::<f64>().ok())
                    .ok_or_else(|| format!("{promql}: bad sample {s}"))?;
                Ok((s["metric"].clone(), value))
            })
            .collect()
    }

    /// Sends `signal` to the server's process group.
    pub fn signal(&self, signal: Signal) -> Result<(), ServiceError> {
        match &self.process {
            Some(process) => process.signal(signal),
            None => Err(ServiceError::io(
                "signalling Prometheus",
                self.dir.path(),
                std::io::Error::other("Prometheus is stopped"),
            )),
        }
    }
}

/// Runs `promtool <args>` in `dir`; an error with its output when it fails.
pub fn promtool(dir: &Path, args: &[&str]) -> Result<(), ServiceError> {
    let program = find_program("promtool", &["/usr/bin/promtool"], HINT)?;
    let mut command = Command::new(program);
    command.args(args).current_dir(dir);
    run_to_end("promtool", &mut command)
}

fn write_config(
    dir: &Path,
    jobs: &[ScrapeJob],
    interval: Duration,
    rules: &[PathBuf],
) -> Result<(), ServiceError> {
    let secs = interval.as_secs_f64();
    let mut text = format!(
        "global:\n  scrape_interval: {secs}s\n  scrape_timeout: {secs}s\n  evaluation_interval: {secs}s\n"
    );
    if !rules.is_empty() {
        text.push_str("rule_files:\n");
        for r in rules {
            text.push_str(&format!("  - {:?}\n", r.display().to_string()));
        }
    }
    text.push_str("scrape_configs:\n");
    for job in jobs {
        text.push_str(&format!(
            "  - job_name: {:?}\n    static_configs:\n      - targets: [",
            job.name
        ));
        let targets: Vec<String> = job
            .targets
            .iter()
            .map(|t| format!("{:?}", t.to_string()))
            .collect();
        text.push_str(&targets.join(", "));
        text.push_str("]\n");
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, text).map_err(|e| ServiceError::io("writing prometheus.yml", &path, e))
}

fn launch(
    program: &Path,
    dir: &Path,
    port: u16,
    user: &ServiceUser,
) -> Result<ServiceProcess, ServiceError> {
    let mut command = Command::new(program);
    user.apply(&mut command);
    command
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        // No console templates from /etc: the API is all a test reads.
        .arg(format!("--web.console.templates={}", dir.display()))
        .arg(format!("--web.console.libraries={}", dir.display()))
        .current_dir(dir);
    let mut process = ServiceProcess::spawn(Launch {
        service: SERVICE,
        command,
        log: dir.join("prometheus.log"),
        stop_signal: Signal::SIGTERM,
        stop_grace: Duration::from_secs(10),
    })?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    process.wait_ready("/-/ready answering 200", READY_WITHIN, || {
        match http_get(addr, "/-/ready") {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => Err(format!("{status} {}", body.trim())),
            Err(e) => Err(format!("GET /-/ready: {e}")),
        }
    })?;
    Ok(process)
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or_default();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The body of a `Transfer-Encoding: chunked` response.
fn dechunk(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let after = &rest[eol + 2..];
        if n == 0 || after.len() < n {
            break;
        }
        out.extend_from_slice(&after[..n]);
        rest = after[n..].strip_prefix(b"\r\n").unwrap_or(&after[n..]);
    }
    out
}

/// Percent-encoding of a query component (everything but unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql_and_dechunks() {
        assert_eq!(encode("up{job=\"a b\"}"), "up%7Bjob%3D%22a%20b%22%7D");
        assert_eq!(dechunk(b"4\r\nabcd\r\n2\r\nef\r\n0\r\n\r\n"), b"abcdef");
    }
}
