//! Processes the lab starts (dnsmasq, DHCP clients, whatever a test runs in a DUT).
//!
//! Each runs in its own process group with stdout and stderr in a log file, and is
//! killed, group and all, when its guard drops.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::error::{LabError, Result};
use super::sys::{describe, wait_until};

/// How much of a log an error message quotes.
const LOG_TAIL: usize = 2000;

/// A running process owned by the lab; killed with its whole process group on drop.
#[derive(Debug)]
pub struct LabProcess {
    child: Child,
    label: String,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl LabProcess {
    /// Starts `cmd` in a new process group, output appended to `log`.
    pub(crate) fn spawn(mut cmd: Command, log: PathBuf) -> Result<LabProcess> {
        let label = describe(&cmd);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| LabError::io("creating a process log", &log, e))?;
        let err = out
            .try_clone()
            .map_err(|e| LabError::io("creating a process log", &log, e))?;
        use std::os::unix::process::CommandExt;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            command: label.clone(),
            source,
        })?;
        Ok(LabProcess {
            child,
            label,
            log,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line it was started with.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The end of its log (stdout and stderr).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// Its exit status if it has exited (reaping it), `None` while it runs. When it is
    /// found dead, what is left of its group goes too, while the group id is still ours.
    pub fn try_exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .map_err(|e| LabError::io("checking a lab process", &self.log, e))?;
            if self.exited.is_some() {
                self.kill_group();
            }
        }
        Ok(self.exited)
    }

    /// An [`LabError::Exited`] with its log if it is no longer running.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_exit_status()? {
            None => Ok(()),
            Some(status) => Err(LabError::Exited {
                process: self.label.clone(),
                status: status.to_string(),
                log: self.log_tail(),
            }),
        }
    }

    /// Sends `signal` to the process itself (not its group).
    pub fn signal(&mut self, signal: Signal) -> Result<()> {
        self.ensure_running()?;
        kill(self.pid_t(), signal).map_err(|source| LabError::Signal {
            process: self.label.clone(),
            source,
        })
    }

    /// Waits up to `timeout` for it to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("exit of `{}`", self.label);
        wait_until(what, timeout, || {
            Ok(self
                .try_exit_status()?
                .ok_or_else(|| "still running".to_string()))
        })
    }

    /// SIGTERM to the group, then SIGKILL if it has not exited within `grace`.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit_status()? {
            return Ok(status);
        }
        let _ = killpg(self.pid_t(), Signal::SIGTERM);
        let status = match self.wait_exit(grace) {
            Ok(status) => status,
            Err(_) => {
                self.kill_group();
                let status = self
                    .child
                    .wait()
                    .map_err(|e| LabError::io("waiting for a lab process", &self.log, e))?;
                self.exited = Some(status);
                status
            }
        };
        Ok(status)
    }

    fn pid_t(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Kills the group. Only called while the leader is unreaped or was reaped by us just
    /// now: until then its pid, and so the group id, cannot belong to anyone else.
    fn kill_group(&mut self) {
        let _ = killpg(self.pid_t(), Signal::SIGKILL);
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        self.kill_group();
        let _ = self.child.wait();
    }
}

/// The last [`LOG_TAIL`] bytes of a log file, or a note that it could not be read.
pub(crate) fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(LOG_TAIL);
            String::from_utf8_lossy(&bytes[start..]).trim().to_string()
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}
