//! How the publisher reaches the broker and who it says it is: plain TCP or TLS (rustls with
//! the ring provider), a client certificate and/or a user name and password.
//!
//! TLS always verifies the broker's certificate against `mqtt.tls.ca_file` (only that CA, not
//! the system's roots: a fleet broker has its own CA) and its name against
//! `mqtt.tls.server_name`, else `mqtt.host`. [`load`] reads and checks every file once, so a
//! missing file, one without PEM, or a key that is not the certificate's is a start-up error
//! that names the file; a broker that fails verification later is a connection error that
//! [`explain`] turns into one line naming what failed and which file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::v5::{ConnectionError, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use super::PublisherSettings;
use crate::config::TlsConfig;

/// A TLS file that cannot be used, or a client configuration rustls refuses.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
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
    #[error("the CA file {path} holds a certificate that is not a usable CA: {source}")]
    BadCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the client key {key} does not belong to the certificate {cert}: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("the client certificate {path} names no subject CN")]
    NoCommonName { path: PathBuf },
    #[error("{name:?} is not a server name TLS can verify (mqtt.tls.server_name or mqtt.host)")]
    ServerName { name: String },
}

/// The TLS client configuration `tls` describes, for a broker at `host`, with every file read
/// and checked.
pub fn load(tls: &TlsConfig, host: &str) -> Result<Arc<ClientConfig>, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in read_certificates(&tls.ca_file, "CA file")? {
        roots.add(ca).map_err(|source| TransportError::BadCa {
            path: tls.ca_file.clone(),
            source,
        })?;
    }
    let expected = tls.server_name.as_deref().unwrap_or(host);
    let name =
        ServerName::try_from(expected.to_owned()).map_err(|_| TransportError::ServerName {
            name: expected.to_owned(),
        })?;
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|source| TransportError::BadCa {
            path: tls.ca_file.clone(),
            source: rustls::Error::General(source.to_string()),
        })?;
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
        .map_err(|source| TransportError::BadCa {
            path: tls.ca_file.clone(),
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let chain = read_certificates(cert_file, "client certificate")?;
            let key = read_key(key_file)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|source| TransportError::KeyMismatch {
                    cert: cert_file.clone(),
                    key: key_file.clone(),
                    source,
                })?
        }
        // Config::validate asks for both or neither.
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The subject CN of the client certificate (the first certificate of `cert_file`).
pub fn certificate_common_name(cert_file: &Path) -> Result<String, TransportError> {
    let chain = read_certificates(cert_file, "client certificate")?;
    chain
        .first()
        .and_then(|cert| subject_common_name(cert.as_ref()))
        .ok_or_else(|| TransportError::NoCommonName {
            path: cert_file.to_path_buf(),
        })
}

/// Sets the transport and the credentials of `settings` on `options`.
pub fn apply(
    options: &mut MqttOptions,
    settings: &PublisherSettings,
) -> Result<(), TransportError> {
    if let Some(tls) = &settings.tls {
        let config = load(tls, &settings.host)?;
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(config)));
    }
    if let Some(credentials) = &settings.credentials {
        options.set_credentials(&credentials.user, &credentials.password);
    }
    Ok(())
}

/// One line saying why a connection failed; `true` with it when TLS failed (a wrong CA, a
/// refused client certificate: worth a line every attempt, it will not cure itself).
pub fn explain(error: &ConnectionError, settings: &PublisherSettings) -> (String, bool) {
    let chain = crate::error_chain(error);
    let Some(tls) = &settings.tls else {
        return (chain, false);
    };
    let Some(rustls_error) = find_rustls_error(error) else {
        return (chain, false);
    };
    let line = match rustls_error {
        rustls::Error::InvalidCertificate(reason) => format!(
            "TLS: the broker's certificate failed verification against the CA file {} \
             (server name {}): {reason:?}",
            tls.ca_file.display(),
            tls.server_name.as_deref().unwrap_or(&settings.host),
        ),
        rustls::Error::AlertReceived(alert) => match &tls.cert_file {
            Some(cert) => format!(
                "TLS: the broker refused the handshake (alert {alert:?}); is the client \
                 certificate {} signed by a CA the broker trusts?",
                cert.display()
            ),
            None => format!(
                "TLS: the broker refused the handshake (alert {alert:?}); it may require a \
                 client certificate (mqtt.tls.cert_file, key_file)"
            ),
        },
        other => format!("TLS: {other} ({chain})"),
    };
    (line, true)
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

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = read(path, what)?;
    let not_pem = |reason: String| TransportError::NotPem {
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

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let bytes = read(path, "client key")?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TransportError::NotPem {
        what: "client key",
        path: path.to_path_buf(),
        kind: "PRIVATE KEY",
        reason: e.to_string(),
    })
}

/// Verifies the broker as the WebPKI verifier does, for a configured name instead of the host
/// dialled (a broker reached by its address whose certificate names it by DNS name).
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

/// The first CN of an X.509 certificate's subject (DER): Certificate ::= SEQUENCE {
/// tbsCertificate SEQUENCE { [0] version OPTIONAL, serialNumber, signature, issuer, validity,
/// subject, ... }, ... }. Only this walk, so that the agent needs no X.509 parser; the
/// certificate itself is checked by rustls when it is used.
fn subject_common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, cert, _) = der_item(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_item(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // Version is context tag [0], present in v2/v3 certificates.
    if tbs.first() == Some(&0xa0) {
        tbs = der_item(tbs)?.2;
    }
    // serialNumber, signature, issuer, validity.
    for _ in 0..4 {
        tbs = der_item(tbs)?.2;
    }
    let (tag, mut names, _) = der_item(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    while !names.is_empty() {
        let (tag, mut set, rest) = der_item(names)?;
        names = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, pair, rest) = der_item(set)?;
            set = rest;
            let (tag, oid, value) = der_item(pair)?;
            if tag != 0x06 || oid != OID_CN {
                continue;
            }
            let (tag, text, _) = der_item(value)?;
            // UTF8String, PrintableString, IA5String.
            if matches!(tag, 0x0c | 0x13 | 0x16) {
                return std::str::from_utf8(text).ok().map(str::to_owned);
            }
            return None;
        }
    }
    None
}

/// One DER item: its tag, its contents and what follows it.
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |len, b| (len << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
#[path = "transport_tests.rs"]
mod tests;
