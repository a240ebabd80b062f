//! A mosquitto broker on a loopback port, with its own generated config, run as the
//! `mosquitto` system user.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use super::ports::{retry_on_port_clash, PortLease};
use super::process::{
    ensure_stopped, find_program, run_to_end, stop_slot, Launch, ServiceProcess, ServiceUser,
};
use super::ServiceError;
use crate::labdir::OwnedDir;

#[path = "mosquitto_fleet.rs"]
mod fleet;
pub use fleet::{deploy_dir, FleetTls};

const SERVICE: &str = "mosquitto";
const READY_WITHIN: Duration = Duration::from_secs(15);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
const HINT: &str =
    "install the Debian packages mosquitto and mosquitto-clients (scripts/setup does)";

/// A broker account: user name and clear-text password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUser {
    pub name: String,
    pub password: String,
}

impl MqttUser {
    pub fn new(name: impl Into<String>, password: impl Into<String>) -> MqttUser {
        MqttUser {
            name: name.into(),
            password: password.into(),
        }
    }
}

/// The text of a mosquitto `acl_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    text: String,
}

impl Acl {
    /// Per-RAE isolation as in DESIGN section 3 (`%u` is the RAE's serial), plus
    /// `cloud_user`, which reads every topic and sends commands to every RAE.
    pub fn rae_fleet(cloud_user: &str) -> Acl {
        Acl {
            text: format!(
                "pattern write rae/v1/%u/devices/#\n\
                 pattern write rae/v1/%u/inventory\n\
                 pattern write rae/v1/%u/status\n\
                 pattern write rae/v1/%u/reply/#\n\
                 pattern read rae/v1/%u/cmd/#\n\
                 \n\
                 user {cloud_user}\n\
                 topic read #\n\
                 topic write rae/v1/+/cmd/#\n"
            ),
        }
    }

    /// Any ACL, in mosquitto's `acl_file` syntax.
    pub fn from_text(text: impl Into<String>) -> Acl {
        Acl { text: text.into() }
    }

    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Accounts and access rules; without them the broker accepts anonymous clients.
#[derive(Debug, Clone)]
pub struct MosquittoAuth {
    pub users: Vec<MqttUser>,
    pub acl: Acl,
}

#[derive(Debug, Clone, Default)]
pub struct MosquittoOptions {
    /// Keep retained messages and persistent sessions across [`Mosquitto::stop`] and
    /// [`Mosquitto::start_again`].
    pub persistence: bool,
    pub auth: Option<MosquittoAuth>,
}

/// What fault tests change about a broker, beyond [`MosquittoOptions`].
#[derive(Debug, Clone, Default)]
pub struct BrokerSetup {
    /// Anonymous clients are allowed and limited by this ACL (when `auth` is not set):
    /// for the real agent, whose config file has no MQTT credentials.
    pub anonymous_acl: Option<Acl>,
    /// Further lines of `mosquitto.conf`, e.g. `max_packet_size 1024`.
    pub extra_config: String,
    /// Run inside this network namespace (one the test created), listening on every address
    /// there; clients are pointed at the address given (and the readiness probe uses it), so
    /// that a test can cut one path to the broker and keep another.
    pub netns: Option<(String, Ipv4Addr)>,
}

/// A running broker; stopped and its directory removed on drop.
#[derive(Debug)]
pub struct Mosquitto {
    // Fields drop in order: the process goes before its port and its directory.
    process: Option<ServiceProcess>,
    lease: PortLease,
    dir: OwnedDir,
    options: MosquittoOptions,
    setup: BrokerSetup,
    host: String,
}

impl Mosquitto {
    /// A broker that accepts anonymous clients, without persistence.
    pub fn start() -> Result<Mosquitto, ServiceError> {
        Mosquitto::start_with(MosquittoOptions::default())
    }

    /// A broker that accepts only `users`, each limited by `acl`.
    pub fn start_with_acl(users: &[MqttUser], acl: &Acl) -> Result<Mosquitto, ServiceError> {
        Mosquitto::start_with(MosquittoOptions {
            persistence: false,
            auth: Some(MosquittoAuth {
                users: users.to_vec(),
                acl: acl.clone(),
            }),
        })
    }

    pub fn start_with(options: MosquittoOptions) -> Result<Mosquitto, ServiceError> {
        Mosquitto::start_setup(options, BrokerSetup::default())
    }

    /// A broker with `setup` on top of `options`.
    pub fn start_setup(
        options: MosquittoOptions,
        setup: BrokerSetup,
    ) -> Result<Mosquitto, ServiceError> {
        let program = find_program(SERVICE, &["/usr/sbin/mosquitto"], HINT)?;
        let user = ServiceUser::lookup(SERVICE, "mosquitto")?;
        let dir = OwnedDir::create(SERVICE)
            .map_err(|e| ServiceError::io("creating the broker dir", super::lab_root(), e))?;
        let (lease, process) = retry_on_port_clash(SERVICE, || {
            let lease = PortLease::acquire()?;
            write_config(dir.path(), lease.port(), &options, &setup, &user)?;
            let process = launch(&program, dir.path(), lease.port(), &setup, &user)?;
            Ok((lease, process))
        })?;
        let host = listen_ip(&setup).to_string();
        Ok(Mosquitto {
            process: Some(process),
            lease,
            dir,
            options,
            setup,
            host,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.lease.port()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((listen_ip(&self.setup), self.port()))
    }

    /// `mqtt://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("mqtt://{}:{}", self.host(), self.port())
    }

    /// The accounts the broker accepts (empty when it accepts anonymous clients).
    pub fn users(&self) -> &[MqttUser] {
        self.options
            .auth
            .as_ref()
            .map_or(&[], |a| a.users.as_slice())
    }

    pub fn user(&self, name: &str) -> Option<&MqttUser> {
        self.users().iter().find(|u| u.name == name)
    }

    /// The broker's state directory (config, password and ACL files, persistence, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("mosquitto.log")
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Stops the broker (clients see the connection drop); the port stays reserved.
    pub fn stop(&mut self) -> Result<(), ServiceError> {
        stop_slot(SERVICE, &mut self.process)
    }

    /// Starts the stopped broker again on the same port with the same config.
    pub fn start_again(&mut self) -> Result<(), ServiceError> {
        ensure_stopped(SERVICE, &self.process)?;
        let program = find_program(SERVICE, &["/usr/sbin/mosquitto"], HINT)?;
        let user = ServiceUser::lookup(SERVICE, "mosquitto")?;
        self.process = Some(launch(
            &program,
            self.dir.path(),
            self.port(),
            &self.setup,
            &user,
        )?);
        Ok(())
    }

    /// Sends `signal` to the broker's process group: SIGSTOP freezes it (connections stay
    /// open, nothing is answered), SIGCONT thaws it, SIGHUP makes it reload its config and ACL.
    pub fn signal(&self, signal: Signal) -> Result<(), ServiceError> {
        match &self.process {
            Some(process) => process.signal(signal),
            None => Err(ServiceError::io(
                "signalling the broker",
                self.dir.path(),
                std::io::Error::other("the broker is stopped"),
            )),
        }
    }

    /// Kills the broker with SIGKILL (no orderly goodbye to its clients) and reaps it; the
    /// port stays reserved for [`Mosquitto::start_again`].
    pub fn kill(&mut self) -> Result<(), ServiceError> {
        self.signal(Signal::SIGKILL)?;
        self.stop()
    }

    /// Replaces the ACL file (with [`BrokerSetup::anonymous_acl`] or [`MosquittoAuth`]) and
    /// makes the running broker reload it (SIGHUP).
    pub fn replace_acl(&mut self, acl: &Acl) -> Result<(), ServiceError> {
        write_file(&self.dir.path().join("acl"), acl.text())?;
        self.signal(Signal::SIGHUP)
    }
}

fn listen_ip(setup: &BrokerSetup) -> Ipv4Addr {
    setup
        .netns
        .as_ref()
        .map_or(Ipv4Addr::LOCALHOST, |(_, ip)| *ip)
}

fn write_config(
    dir: &Path,
    port: u16,
    options: &MosquittoOptions,
    setup: &BrokerSetup,
    user: &ServiceUser,
) -> Result<(), ServiceError> {
    user.own(dir)?;
    let listener = match setup.netns {
        Some(_) => format!("listener {port}"),
        None => format!("listener {port} {}", Ipv4Addr::LOCALHOST),
    };
    // Log to stderr, which goes to mosquitto.log: start-up errors (a taken port) land
    // there too, before the broker has read its own log settings.
    let mut config = format!(
        "{listener}\n\
         log_dest stderr\n\
         log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
         connection_messages true\n\
         log_timestamp_format %Y-%m-%dT%H:%M:%S\n"
    );
    if options.persistence {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)
            .map_err(|e| ServiceError::io("creating the persistence dir", &data, e))?;
        user.own(&data)?;
        config.push_str(&format!(
            "persistence true\npersistence_location {}/\n",
            data.display()
        ));
    } else {
        config.push_str("persistence false\n");
    }
    match &options.auth {
        None => {
            config.push_str("allow_anonymous true\n");
            if let Some(acl) = &setup.anonymous_acl {
                let path = dir.join("acl");
                write_file(&path, acl.text())?;
                config.push_str(&format!("acl_file {}\n", path.display()));
            }
        }
        Some(auth) => {
            let passwords = dir.join("passwd");
            write_passwords(&passwords, &auth.users)?;
            user.own(&passwords)?;
            let acl = dir.join("acl");
            write_file(&acl, auth.acl.text())?;
            config.push_str(&format!(
                "allow_anonymous false\npassword_file {}\nacl_file {}\n",
                passwords.display(),
                acl.display()
            ));
        }
    }
    config.push_str(&setup.extra_config);
    config.push('\n');
    write_file(&dir.join("mosquitto.conf"), &config)
}

/// Writes clear-text `name:password` lines and lets `mosquitto_passwd -U` hash them.
fn write_passwords(path: &Path, users: &[MqttUser]) -> Result<(), ServiceError> {
    let mut text = String::new();
    for user in users {
        if user.name.is_empty() || user.name.contains([':', '\n']) || user.password.contains('\n') {
            return Err(ServiceError::InvalidName {
                what: "MQTT user",
                value: user.name.clone(),
                rule: "a non-empty name without ':' or newlines, a password without newlines",
            });
        }
        text.push_str(&format!("{}:{}\n", user.name, user.password));
    }
    write_file(path, &text)?;
    let tool = find_program(SERVICE, &["/usr/bin/mosquitto_passwd"], HINT)?;
    run_to_end(SERVICE, Command::new(tool).arg("-U").arg(path))
}

fn write_file(path: &Path, text: &str) -> Result<(), ServiceError> {
    std::fs::write(path, text).map_err(|e| ServiceError::io("writing broker config", path, e))
}

fn launch(
    program: &Path,
    dir: &Path,
    port: u16,
    setup: &BrokerSetup,
    user: &ServiceUser,
) -> Result<ServiceProcess, ServiceError> {
    let mut command = match &setup.netns {
        None => {
            let mut command = Command::new(program);
            user.apply(&mut command);
            command
        }
        // `ip netns exec` needs root; mosquitto started as root drops to its own user.
        Some((ns, _)) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", ns]).arg(program);
            command
        }
    };
    command
        .arg("-c")
        .arg(dir.join("mosquitto.conf"))
        .current_dir(dir);
    let mut process = ServiceProcess::spawn(Launch {
        service: SERVICE,
        command,
        log: dir.join("mosquitto.log"),
        stop_signal: Signal::SIGTERM,
        stop_grace: Duration::from_secs(10),
    })?;
    let addr = SocketAddr::from((listen_ip(setup), port));
    process.wait_ready("an MQTT CONNACK", READY_WITHIN, || probe(addr))?;
    Ok(process)
}

/// Sends an MQTT 3.1.1 CONNECT and waits for the CONNACK. Any return code counts: a
/// broker that refuses anonymous clients is up all the same.
fn probe(addr: SocketAddr) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
        .map_err(|e| format!("TCP connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(PROBE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(PROBE_TIMEOUT)))
        .map_err(|e| format!("socket options: {e}"))?;
    const CLIENT_ID: &[u8] = b"rae-lab-probe";
    let mut connect = vec![0x10, (12 + CLIENT_ID.len()) as u8];
    // Protocol name "MQTT", level 4 (3.1.1), clean session, keep-alive 10 s.
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10]);
    connect.extend_from_slice(&[0, CLIENT_ID.len() as u8]);
    connect.extend_from_slice(CLIENT_ID);
    stream
        .write_all(&connect)
        .map_err(|e| format!("sending CONNECT: {e}"))?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .map_err(|e| format!("reading CONNACK: {e}"))?;
    if connack[0] != 0x20 || connack[1] != 2 {
        return Err(format!("expected a CONNACK, got bytes {connack:02x?}"));
    }
    // Polite goodbye; the broker is known to be up whatever happens to it.
    let _ = stream.write_all(&[0xe0, 0]);
    Ok(())
}
