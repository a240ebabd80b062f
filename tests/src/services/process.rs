//! One service process: spawned in its own process group with its output in a log file,
//! polled until ready, and ended with its whole group.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::{Pid, User};

use super::ServiceError;

/// How often readiness is probed and exit is checked.
const POLL: Duration = Duration::from_millis(50);
/// How much of a log an error shows.
const TAIL_BYTES: u64 = 4096;
/// How long to wait for the group to go after SIGKILL before giving up on it.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// `stop()` of a service whose process lives in `slot`: stops it and empties the slot;
/// stopping a stopped service is an error.
pub(crate) fn stop_slot(
    service: &'static str,
    slot: &mut Option<ServiceProcess>,
) -> Result<(), ServiceError> {
    match slot.as_mut() {
        Some(process) => process.stop()?,
        None => return Err(wrong_state(service, "stopped", "stop", "running")),
    }
    *slot = None;
    Ok(())
}

/// The check before `start_again()`: the service must be stopped.
pub(crate) fn ensure_stopped(
    service: &'static str,
    slot: &Option<ServiceProcess>,
) -> Result<(), ServiceError> {
    match slot {
        Some(_) => Err(wrong_state(service, "running", "start_again", "stopped")),
        None => Ok(()),
    }
}

fn wrong_state(
    service: &'static str,
    state: &'static str,
    action: &'static str,
    wanted: &'static str,
) -> ServiceError {
    ServiceError::WrongState {
        service,
        state,
        action,
        wanted,
    }
}

/// A running service; its process group is ended on drop.
#[derive(Debug)]
pub(crate) struct ServiceProcess {
    service: &'static str,
    child: Child,
    log: PathBuf,
    stop_signal: Signal,
    stop_grace: Duration,
    stopped: bool,
}

/// How to start a service process.
pub(crate) struct Launch {
    pub service: &'static str,
    pub command: Command,
    /// Receives stdout and stderr; appended to, so a restart keeps the earlier run's lines.
    pub log: PathBuf,
    /// The signal for an orderly stop (PostgreSQL's fast shutdown is SIGINT, not SIGTERM).
    pub stop_signal: Signal,
    /// How long an orderly stop may take before SIGKILL.
    pub stop_grace: Duration,
}

impl ServiceProcess {
    pub(crate) fn spawn(launch: Launch) -> Result<ServiceProcess, ServiceError> {
        let Launch {
            service,
            mut command,
            log,
            stop_signal,
            stop_grace,
        } = launch;
        let out = open_log(&log)?;
        let err = out
            .try_clone()
            .map_err(|e| ServiceError::io("duplicating the log file handle", &log, e))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|source| ServiceError::Spawn {
                service,
                program: command.get_program().to_string_lossy().into_owned(),
                source,
            })?;
        Ok(ServiceProcess {
            service,
            child,
            log,
            stop_signal,
            stop_grace,
            stopped: false,
        })
    }

    /// Polls `probe` until it succeeds, the process exits, or `deadline` passes.
    /// `missing` names what the probe waits for, for the error message.
    pub(crate) fn wait_ready(
        &mut self,
        missing: &'static str,
        deadline: Duration,
        mut probe: impl FnMut() -> Result<(), String>,
    ) -> Result<(), ServiceError> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.try_status()? {
                return Err(ServiceError::Exited {
                    service: self.service,
                    status,
                    log_tail: log_tail(&self.log),
                });
            }
            let last_probe = match probe() {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if started.elapsed() >= deadline {
                return Err(ServiceError::NotReady {
                    service: self.service,
                    waited: started.elapsed(),
                    missing,
                    last_probe,
                    log_tail: log_tail(&self.log),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    fn try_status(&mut self) -> Result<Option<ExitStatus>, ServiceError> {
        self.child
            .try_wait()
            .map_err(|e| ServiceError::io("checking a service process", &self.log, e))
    }

    fn pgid(&self) -> Pid {
        // The child leads its own group, so its pid is the group id.
        Pid::from_raw(self.child.id() as i32)
    }

    /// Sends `signal` to the whole process group.
    pub(crate) fn signal(&self, signal: Signal) -> Result<(), ServiceError> {
        killpg(self.pgid(), signal).map_err(|errno| {
            ServiceError::io(
                "signalling a service process",
                &self.log,
                std::io::Error::from(errno),
            )
        })
    }

    /// Ends the whole process group: the stop signal, then SIGKILL after the grace period.
    pub(crate) fn stop(&mut self) -> Result<(), ServiceError> {
        if self.stopped {
            return Ok(());
        }
        let pgid = self.pgid();
        // The leader may be gone while helpers it forked live on; signal the group anyway.
        let _ = killpg(pgid, self.stop_signal);
        if self.wait_group_gone(self.stop_grace)? {
            self.stopped = true;
            return Ok(());
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        if self.wait_group_gone(KILL_WAIT)? {
            self.stopped = true;
            return Ok(());
        }
        Err(ServiceError::Unkillable {
            service: self.service,
            pgid: pgid.as_raw(),
            waited: self.stop_grace + KILL_WAIT,
        })
    }

    /// Reaps the leader and waits until no process of the group is left.
    fn wait_group_gone(&mut self, within: Duration) -> Result<bool, ServiceError> {
        let started = Instant::now();
        loop {
            let leader_gone = self.try_status()?.is_some();
            // Signal 0 probes for any remaining member of the group.
            if leader_gone && killpg(self.pgid(), None).is_err() {
                return Ok(true);
            }
            if started.elapsed() >= within {
                return Ok(false);
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::error!(service = self.service, error = %e, "lab service left running");
        }
    }
}

fn open_log(path: &Path) -> Result<File, ServiceError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ServiceError::io("opening a service log", path, e))
}

/// The last few KiB of a log, for error messages.
pub(crate) fn log_tail(path: &Path) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // Start at a line boundary unless the whole log fits.
        Ok(match (len > TAIL_BYTES, text.find('\n')) {
            (true, Some(cut)) => text[cut + 1..].to_owned(),
            _ => text,
        })
    };
    match read() {
        Ok(text) if text.trim().is_empty() => format!("({} is empty)", path.display()),
        Ok(text) => text,
        Err(e) => format!("(could not read {}: {e})", path.display()),
    }
}

/// Runs a short set-up command (initdb, a storage format, mosquitto_passwd) in its own
/// process group, failing with its output when it fails.
pub(crate) fn run_to_end(service: &'static str, command: &mut Command) -> Result<(), ServiceError> {
    let shown = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|source| ServiceError::Spawn {
            service,
            program: command.get_program().to_string_lossy().into_owned(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ServiceError::Command {
        service,
        command: shown,
        status: output.status,
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}

/// An unprivileged system account a service runs as (PostgreSQL refuses root).
#[derive(Debug, Clone)]
pub(crate) struct ServiceUser {
    pub uid: nix::unistd::Uid,
    pub gid: nix::unistd::Gid,
}

impl ServiceUser {
    pub(crate) fn lookup(service: &'static str, name: &str) -> Result<ServiceUser, ServiceError> {
        let missing = || ServiceError::Missing {
            service,
            missing: format!("the system user `{name}`"),
            hint: "install the service's Debian package, which creates it",
        };
        let user = User::from_name(name)
            .map_err(|_| missing())?
            .ok_or_else(missing)?;
        Ok(ServiceUser {
            uid: user.uid,
            gid: user.gid,
        })
    }

    /// Makes `command` run as this user with no supplementary groups.
    pub(crate) fn apply(&self, command: &mut Command) {
        command.uid(self.uid.as_raw()).gid(self.gid.as_raw());
    }

    /// Gives `path` to this user, and lets it through the lab root above (which a
    /// restrictive umask may have closed).
    pub(crate) fn own(&self, path: &Path) -> Result<(), ServiceError> {
        let root = Path::new(crate::labdir::LAB_ROOT);
        let meta = std::fs::metadata(root)
            .map_err(|e| ServiceError::io("reading the lab root", root, e))?;
        let mode = meta.permissions().mode();
        if mode & 0o011 != 0o011 {
            std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode | 0o711))
                .map_err(|e| ServiceError::io("opening the lab root to service users", root, e))?;
        }
        nix::unistd::chown(path, Some(self.uid), Some(self.gid))
            .map_err(|e| ServiceError::io("handing a file to the service user", path, e.into()))
    }
}

/// The first program of `candidates` that exists, or an error naming them.
pub(crate) fn find_program(
    service: &'static str,
    candidates: &[&str],
    hint: &'static str,
) -> Result<PathBuf, ServiceError> {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| ServiceError::Missing {
            service,
            missing: candidates.join(" or "),
            hint,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(dir: &Path, script: &str) -> Launch {
        let mut command = Command::new("/bin/sh");
        command.arg("-c").arg(script);
        Launch {
            service: "test",
            command,
            log: dir.join("test.log"),
            stop_signal: Signal::SIGTERM,
            stop_grace: Duration::from_secs(5),
        }
    }

    fn group_alive(pgid: Pid) -> bool {
        killpg(pgid, None).is_ok()
    }

    #[test]
    fn an_early_exit_reports_status_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut process =
            ServiceProcess::spawn(shell(dir.path(), "echo config is broken; exit 3")).unwrap();
        let err = process
            .wait_ready("a greeting", Duration::from_secs(10), || {
                Err("not yet".into())
            })
            .unwrap_err();
        match &err {
            ServiceError::Exited {
                status, log_tail, ..
            } => {
                assert_eq!(status.code(), Some(3));
                assert!(log_tail.contains("config is broken"), "{log_tail}");
            }
            other => panic!("expected Exited, got {other}"),
        }
    }

    #[test]
    fn a_deadline_names_what_was_missing_and_stop_ends_the_group() {
        let dir = tempfile::tempdir().unwrap();
        // The shell forks a child that outlives nothing but the group kill.
        let mut process =
            ServiceProcess::spawn(shell(dir.path(), "echo starting; sleep 300 & wait")).unwrap();
        let pgid = process.pgid();
        let err = process
            .wait_ready("a greeting", Duration::from_millis(200), || {
                Err("port closed".into())
            })
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("a greeting") && text.contains("port closed"),
            "{text}"
        );
        assert!(group_alive(pgid));
        process.stop().unwrap();
        assert!(!group_alive(pgid), "the background sleep survived");
    }

    #[test]
    fn a_process_ignoring_the_stop_signal_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut launch = shell(dir.path(), "trap '' TERM; sleep 300 & wait; wait");
        launch.stop_grace = Duration::from_millis(200);
        let process = ServiceProcess::spawn(launch).unwrap();
        let pgid = process.pgid();
        drop(process);
        assert!(!group_alive(pgid));
    }

    #[test]
    fn log_tail_keeps_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        let mut text = String::new();
        for i in 0..2000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, text).unwrap();
        let tail = log_tail(&path);
        assert!(tail.ends_with("line 1999\n"));
        assert!(tail.starts_with("line "), "cut mid-line: {:?}", &tail[..20]);
        assert!(tail.len() <= TAIL_BYTES as usize);
    }
}
