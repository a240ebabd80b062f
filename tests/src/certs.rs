//! Test certificates, made when a test runs (rcgen, ring): nothing private is committed.
//!
//! [`FleetPki`] is what an operator of the fleet broker has (deploy/mosquitto/README.md): a
//! fleet CA, the broker's certificate (SAN localhost, 127.0.0.1 and any lab address the broker
//! listens on), one client certificate per RAE (CN = serial) and the cloud identity
//! ([`CLOUD_IDENTITY`]); plus a second, foreign CA with its own client certificates, for the
//! wrong-CA and foreign-client cases.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::netlab::{LabError, Result};

/// The CN of the cloud's certificate, as the shipped ACL (deploy/mosquitto/rae-fleet.acl)
/// names it.
pub const CLOUD_IDENTITY: &str = "rae-cloud";

/// A certificate and its key, PEM files.
#[derive(Clone, Debug)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The fleet's CA, the broker's certificate and client certificates, in a temporary directory.
pub struct FleetPki {
    dir: tempfile::TempDir,
    fleet: Issuer<'static, KeyPair>,
    foreign: Issuer<'static, KeyPair>,
}

impl FleetPki {
    /// A fleet CA and a foreign CA, and the broker's certificate for `localhost`,
    /// `127.0.0.1` and `broker_ips`.
    pub fn generate(broker_ips: &[IpAddr]) -> Result<FleetPki> {
        let dir = tempfile::Builder::new()
            .prefix("rae-lab-pki-")
            .tempdir()
            .map_err(|e| LabError::io("creating the PKI dir", Path::new("/tmp"), e))?;
        let fleet = ca(dir.path(), "fleet-ca", "RAE fleet test CA")?;
        let foreign = ca(dir.path(), "foreign-ca", "Some other CA")?;
        let pki = FleetPki {
            dir,
            fleet,
            foreign,
        };
        let mut sans = vec![
            SanType::DnsName("localhost".try_into().map_err(rcgen_error)?),
            SanType::IpAddress(IpAddr::from([127, 0, 0, 1])),
        ];
        sans.extend(broker_ips.iter().map(|ip| SanType::IpAddress(*ip)));
        pki.issue("broker", "rae-fleet-broker", sans, true, false)?;
        Ok(pki)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The fleet CA's certificate: what the broker and every client trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("fleet-ca.pem")
    }

    /// The foreign CA's certificate: trusting it instead is the wrong-CA case.
    pub fn foreign_ca_file(&self) -> PathBuf {
        self.dir.path().join("foreign-ca.pem")
    }

    /// The broker's certificate and key.
    pub fn broker(&self) -> Identity {
        self.identity("broker")
    }

    /// A client certificate CN=`cn` signed by the fleet CA (made on first use).
    pub fn client(&self, cn: &str) -> Result<Identity> {
        let name = format!("client-{cn}");
        if !self.dir.path().join(format!("{name}.pem")).exists() {
            self.issue(&name, cn, Vec::new(), false, false)?;
        }
        Ok(self.identity(&name))
    }

    /// A client certificate CN=`cn` signed by the foreign CA, which the broker does not trust.
    pub fn foreign_client(&self, cn: &str) -> Result<Identity> {
        let name = format!("foreign-{cn}");
        if !self.dir.path().join(format!("{name}.pem")).exists() {
            self.issue(&name, cn, Vec::new(), false, true)?;
        }
        Ok(self.identity(&name))
    }

    fn identity(&self, name: &str) -> Identity {
        Identity {
            cert: self.dir.path().join(format!("{name}.pem")),
            key: self.dir.path().join(format!("{name}.key")),
        }
    }

    fn issue(
        &self,
        name: &str,
        cn: &str,
        sans: Vec<SanType>,
        server: bool,
        foreign: bool,
    ) -> Result<()> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let mut params = CertificateParams::new(Vec::new()).map_err(rcgen_error)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let issuer = if foreign { &self.foreign } else { &self.fleet };
        let cert = params.signed_by(&key, issuer).map_err(rcgen_error)?;
        write(self.dir.path(), &format!("{name}.pem"), &cert.pem())?;
        write(
            self.dir.path(),
            &format!("{name}.key"),
            &key.serialize_pem(),
        )
    }
}

fn ca(dir: &Path, name: &str, cn: &str) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut params = CertificateParams::new(Vec::new()).map_err(rcgen_error)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(rcgen_error)?;
    write(dir, &format!("{name}.pem"), &cert.pem())?;
    Ok(Issuer::new(params, key))
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(|e| LabError::io("writing a test certificate", &path, e))
}

fn rcgen_error(e: rcgen::Error) -> LabError {
    LabError::Parse {
        what: "a test certificate (rcgen)".into(),
        detail: e.to_string(),
    }
}
