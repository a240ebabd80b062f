//! `cloud-sink command` as a test runs it: one request to one RAE through the broker, its
//! `--json` output parsed and its exit status kept.

use std::process::Command;

use crate::agent::workspace_binary;
use crate::netlab::{LabError, Result};

/// One run of `cloud-sink command --json`.
#[derive(Debug)]
pub struct CommandRun {
    /// The exit status (0 done, 1 refused, 2 usage or broker error, 3 timeout); -1 when
    /// killed by a signal.
    pub code: i32,
    /// The one JSON object printed on stdout (`Null` when there was none).
    pub json: serde_json::Value,
    pub stdout: String,
    pub stderr: String,
}

impl CommandRun {
    /// `reply.<kind>` of a successful reply, e.g. `device`, `sessions`, `pong`.
    pub fn reply(&self, kind: &str) -> &serde_json::Value {
        &self.json["reply"][kind]
    }
}

/// Runs `cloud-sink command --serial <serial> --json --timeout-ms <timeout_ms> <args>`
/// against the broker at `host:port`.
pub fn cloud_command(
    host: &str,
    port: u16,
    serial: &str,
    timeout_ms: u64,
    args: &[&str],
) -> Result<CommandRun> {
    let bin = workspace_binary("cloud-sink")?;
    let out = Command::new(&bin)
        .args(["--log-filter", "warn"])
        .arg("command")
        .args(["--mqtt-host", host, "--mqtt-port", &port.to_string()])
        .args(["--serial", serial, "--json"])
        .args(["--timeout-ms", &timeout_ms.to_string()])
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: format!("{} command {}", bin.display(), args.join(" ")),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(CommandRun {
        code: out.status.code().unwrap_or(-1),
        json: serde_json::from_str(stdout.trim()).unwrap_or(serde_json::Value::Null),
        stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
