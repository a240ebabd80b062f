//! How every MQTT connection of the sink is made: the MQTT source, the bridge and the command
//! requester all build their [`MqttOptions`] in [`connect_options`] (from the command line:
//! [`options`]), so that TLS and credentials mean the same everywhere.
//!
//! TLS is rustls with the ring provider. The broker's certificate is verified against the CA
//! file only (a fleet broker has its own CA, not a public one) and its name against
//! `--mqtt-tls-server-name`, else `--mqtt-host`; the client certificate (`--mqtt-tls-cert`,
//! `--mqtt-tls-key`) is the cloud's identity at a broker with `use_identity_as_username`.
//! Every file is read and checked when the options are built, so a bad one is a start-up
//! error naming it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::{ConnectionError, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde::Deserialize;

use crate::config::BrokerArgs;
use crate::source::mqtt::MqttBrokerConfig;

/// TLS to the broker: the files, PEM.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTls {
    /// The CA(s) that signed the broker's certificate; the only ones trusted.
    pub ca_file: PathBuf,
    /// The client certificate, with `key_file`; both or neither.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name the broker's certificate must carry; defaults to the host.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// Why the options for a connection cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum MqttConnectError {
    #[error("cannot read the {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the {what} {path} holds no PEM {kind}: {reason}")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },
    #[error("the CA file {path} cannot be used: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("the client key {key} does not belong to the certificate {cert}: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("a client certificate needs its key and a key its certificate (--mqtt-tls-cert, --mqtt-tls-key)")]
    HalfClientIdentity,
    #[error(
        "{name:?} is not a server name TLS can verify (--mqtt-tls-server-name or --mqtt-host)"
    )]
    ServerName { name: String },
}

/// The options for a connection as `client_id` (exactly: `--mqtt-client-id` is the caller's
/// to apply) to the broker the command line names. A second client of one process, such as
/// the gap healer's command client next to the MQTT source, must not take the source's id:
/// the broker would drop one for the other, over and over.
pub fn options(broker: &BrokerArgs, client_id: &str) -> Result<MqttOptions, MqttConnectError> {
    let mut config = broker.broker_config(client_id);
    client_id.clone_into(&mut config.client_id);
    connect_options(&config)
}

/// The one place MQTT options are built: address, client id, keep-alive, credentials, TLS.
/// Callers add what their connection needs on top (sessions, acks, receive maximum).
pub fn connect_options(config: &MqttBrokerConfig) -> Result<MqttOptions, MqttConnectError> {
    let mut options = MqttOptions::new(&config.client_id, &config.host, config.port);
    options.set_keep_alive(Duration::from_secs(config.keep_alive_secs));
    if let Some(user) = &config.username {
        options.set_credentials(user, config.password.clone().unwrap_or_default());
    }
    if let Some(tls) = &config.tls {
        let client = client_config(tls, &config.host)?;
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(client)));
    }
    Ok(options)
}

/// The rustls client configuration `tls` describes, for a broker at `host`.
pub fn client_config(tls: &MqttTls, host: &str) -> Result<Arc<ClientConfig>, MqttConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let bad_ca = |reason: String| MqttConnectError::BadCa {
        path: tls.ca_file.clone(),
        reason,
    };
    let mut roots = RootCertStore::empty();
    for ca in read_certificates(&tls.ca_file, "CA file")? {
        roots.add(ca).map_err(|e| bad_ca(e.to_string()))?;
    }
    let expected = tls.server_name.as_deref().unwrap_or(host);
    let name =
        ServerName::try_from(expected.to_owned()).map_err(|_| MqttConnectError::ServerName {
            name: expected.to_owned(),
        })?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad_ca(e.to_string()))?;
    // rumqttc verifies against the host it dials; a configured server name replaces it.
    let verifier: Arc<dyn ServerCertVerifier> = match &tls.server_name {
        Some(_) => Arc::new(NamedServer {
            inner: webpki,
            name,
        }),
        None => webpki,
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad_ca(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(
                read_certificates(cert, "client certificate")?,
                read_key(key)?,
            )
            .map_err(|source| MqttConnectError::KeyMismatch {
                cert: cert.clone(),
                key: key.clone(),
                source,
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err(MqttConnectError::HalfClientIdentity),
    };
    Ok(Arc::new(config))
}

/// One line saying why a connection failed, naming the file to look at when TLS failed.
pub fn explain(error: &ConnectionError, tls: Option<&MqttTls>) -> String {
    let text = error.to_string();
    let (Some(tls), Some(rustls_error)) = (tls, find_rustls_error(error)) else {
        return text;
    };
    match rustls_error {
        rustls::Error::InvalidCertificate(reason) => format!(
            "TLS: the broker's certificate failed verification against the CA file {}: \
             {reason:?}",
            tls.ca_file.display()
        ),
        rustls::Error::AlertReceived(alert) => format!(
            "TLS: the broker refused the handshake (alert {alert:?}); client certificate: {}",
            tls.cert_file
                .as_deref()
                .map_or("none".to_owned(), |p| p.display().to_string())
        ),
        other => format!("TLS: {other} ({text})"),
    }
}

fn find_rustls_error(error: &ConnectionError) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = source {
        if let Some(found) = err.downcast_ref::<rustls::Error>() {
            return Some(found);
        }
        // tokio-rustls wraps the handshake's error in an io::Error, whose `source` skips it.
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(found) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return Some(found);
            }
        }
        source = match err.downcast_ref::<rumqttc::v5::StateError>() {
            // Its Display shows the cause, but it is not its `source`.
            Some(rumqttc::v5::StateError::Deserialization(inner)) => Some(inner),
            _ => err.source(),
        };
    }
    None
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, MqttConnectError> {
    std::fs::read(path).map_err(|source| MqttConnectError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, MqttConnectError> {
    let bytes = read(path, what)?;
    let not_pem = |reason: String| MqttConnectError::NotPem {
        what,
        path: path.to_path_buf(),
        kind: "CERTIFICATE",
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| not_pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(not_pem("no BEGIN CERTIFICATE section".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, MqttConnectError> {
    let bytes = read(path, "client key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| MqttConnectError::NotPem {
        what: "client key",
        path: path.to_path_buf(),
        kind: "PRIVATE KEY",
        reason: e.to_string(),
    })
}

/// The WebPKI verifier, for a configured name instead of the host dialled.
#[derive(Debug)]
struct NamedServer {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    #[test]
    fn options_connect_as_the_client_id_given_even_when_the_flags_name_one() {
        let cli = crate::config::Cli::try_parse_from([
            "cloud-sink",
            "mqtt",
            "--database-url",
            "u",
            "--mqtt-client-id",
            "sink-1",
        ])
        .unwrap();
        let crate::config::Command::Mqtt(m) = cli.command else {
            panic!("not mqtt")
        };
        // The gap healer's client next to the source: a clash would make the broker drop
        // one for the other.
        let options = options(&m.broker, "sink-1-cmd").unwrap();
        assert_eq!(options.client_id(), "sink-1-cmd");
    }

    #[test]
    fn tls_options_load_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("cloud-sink-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut client = CertificateParams::new(Vec::new()).unwrap();
        client.distinguished_name.push(DnType::CommonName, "cloud");
        let cert = client.signed_by(&key, &issuer).unwrap();
        let other = KeyPair::generate().unwrap();
        for (name, text) in [
            ("ca.pem", ca_cert.pem()),
            ("cloud.pem", cert.pem()),
            ("cloud.key", key.serialize_pem()),
            ("other.key", other.serialize_pem()),
        ] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let tls = MqttTls {
            ca_file: dir.join("ca.pem"),
            cert_file: Some(dir.join("cloud.pem")),
            key_file: Some(dir.join("cloud.key")),
            server_name: Some("broker.lab".into()),
        };
        let config = MqttBrokerConfig {
            tls: Some(tls.clone()),
            ..MqttBrokerConfig::default()
        };
        connect_options(&config).unwrap();

        let cases = [
            (
                MqttTls {
                    key_file: Some(dir.join("other.key")),
                    ..tls.clone()
                },
                "does not belong",
            ),
            (
                MqttTls {
                    ca_file: dir.join("missing.pem"),
                    ..tls.clone()
                },
                "missing.pem",
            ),
            (
                MqttTls {
                    ca_file: dir.join("cloud.key"),
                    ..tls.clone()
                },
                "holds no PEM CERTIFICATE",
            ),
            (
                MqttTls {
                    key_file: None,
                    ..tls.clone()
                },
                "needs its key",
            ),
        ];
        for (tls, expected) in cases {
            let err = client_config(&tls, "127.0.0.1").unwrap_err();
            assert!(err.to_string().contains(expected), "{err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
