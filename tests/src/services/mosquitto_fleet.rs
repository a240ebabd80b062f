//! The fleet broker of `deploy/mosquitto/` (TLS listener, `require_certificate`,
//! `use_identity_as_username`, the per-RAE ACL) on a loopback port: the shipped
//! `mosquitto.conf` and `rae-fleet.acl` as they are, with only the paths and the port replaced
//! and test logging appended, so the isolation tests prove the configuration operators deploy.

use super::*;

/// Where the shipped broker configuration lives, from this crate's manifest directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
        .join("mosquitto")
}

/// The broker's TLS files (PEM): the fleet CA, its certificate and key.
#[derive(Debug, Clone)]
pub struct FleetTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// What the shipped conf names, and what the test puts in its place.
const SHIPPED_CERTS: &str = "/etc/mosquitto/certs/";
const SHIPPED_ACL: &str = "/etc/mosquitto/rae-fleet.acl";
const SHIPPED_DATA: &str = "/var/lib/mosquitto/";
const SHIPPED_LISTENER: &str = "listener 8883";

impl Mosquitto {
    /// Starts the fleet broker with `tls` (see the module documentation). Clients connect to
    /// 127.0.0.1 with TLS and a certificate the fleet CA signed.
    pub fn start_fleet(tls: &FleetTls) -> Result<Mosquitto, ServiceError> {
        let program = find_program(SERVICE, &["/usr/sbin/mosquitto"], HINT)?;
        let user = ServiceUser::lookup(SERVICE, "mosquitto")?;
        let dir = OwnedDir::create(SERVICE).map_err(|e| {
            ServiceError::io("creating the broker dir", crate::services::lab_root(), e)
        })?;
        user.own(dir.path())?;
        let certs = dir.path().join("certs");
        let data = dir.path().join("data");
        for sub in [&certs, &data] {
            std::fs::create_dir_all(sub)
                .map_err(|e| ServiceError::io("creating a broker dir", sub, e))?;
            user.own(sub)?;
        }
        // The names the shipped conf gives them.
        for (from, name) in [
            (&tls.ca_file, "fleet-ca.pem"),
            (&tls.cert_file, "broker.pem"),
            (&tls.key_file, "broker.key"),
        ] {
            let to = certs.join(name);
            std::fs::copy(from, &to)
                .map_err(|e| ServiceError::io("copying a broker TLS file", from, e))?;
            user.own(&to)?;
        }
        let shipped = deploy_dir();
        let acl_from = shipped.join("rae-fleet.acl");
        let acl_to = dir.path().join("rae-fleet.acl");
        std::fs::copy(&acl_from, &acl_to)
            .map_err(|e| ServiceError::io("copying the shipped ACL", &acl_from, e))?;
        let conf_path = shipped.join("mosquitto.conf");
        let template = std::fs::read_to_string(&conf_path)
            .map_err(|e| ServiceError::io("reading the shipped broker config", &conf_path, e))?;
        let (lease, process) = retry_on_port_clash(SERVICE, || {
            let lease = PortLease::acquire()?;
            let conf = fleet_config(&template, dir.path(), lease.port())?;
            write_file(&dir.path().join("mosquitto.conf"), &conf)?;
            let process = launch_fleet(&program, dir.path(), lease.port(), &user)?;
            Ok((lease, process))
        })?;
        Ok(Mosquitto {
            process: Some(process),
            lease,
            dir,
            options: MosquittoOptions::default(),
            setup: BrokerSetup::default(),
            host: Ipv4Addr::LOCALHOST.to_string(),
        })
    }
}

/// The shipped conf with the test's paths and port; fails when a line it replaces is gone
/// (the shipped file changed and this would no longer test it).
fn fleet_config(template: &str, dir: &Path, port: u16) -> Result<String, ServiceError> {
    let mut conf = template.to_owned();
    let replacements = [
        (
            SHIPPED_LISTENER.to_owned(),
            format!("listener {port} {}", Ipv4Addr::LOCALHOST),
        ),
        (
            SHIPPED_CERTS.to_owned(),
            format!("{}/", dir.join("certs").display()),
        ),
        (
            SHIPPED_ACL.to_owned(),
            dir.join("rae-fleet.acl").display().to_string(),
        ),
        (
            SHIPPED_DATA.to_owned(),
            format!("{}/", dir.join("data").display()),
        ),
    ];
    for (from, to) in replacements {
        if !conf.contains(&from) {
            return Err(ServiceError::InvalidName {
                what: "deploy/mosquitto/mosquitto.conf",
                value: from,
                rule: "the shipped broker config must name this (tests replace it)",
            });
        }
        conf = conf.replace(&from, &to);
    }
    conf.push_str(
        "\n# Test logging (appended by tests/src/services/mosquitto_fleet.rs)\n\
         log_dest stderr\n\
         log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
         log_type subscribe\n\
         connection_messages true\n\
         log_timestamp_format %Y-%m-%dT%H:%M:%S\n",
    );
    Ok(conf)
}

fn launch_fleet(
    program: &Path,
    dir: &Path,
    port: u16,
    user: &ServiceUser,
) -> Result<ServiceProcess, ServiceError> {
    let mut command = Command::new(program);
    user.apply(&mut command);
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
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // A TLS listener answers no plain CONNECT: the listening socket is the readiness.
    process.wait_ready("the TLS listener", READY_WITHIN, || {
        TcpStream::connect_timeout(&addr, PROBE_TIMEOUT)
            .map(drop)
            .map_err(|e| format!("TCP connect to {addr}: {e}"))
    })?;
    Ok(process)
}
