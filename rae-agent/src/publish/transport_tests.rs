use super::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

/// A CA, and a client certificate CN=`cn` signed by it, written into a temporary directory.
fn pki(cn: &str) -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::OrganizationName, "lab");
    client.distinguished_name.push(DnType::CommonName, cn);
    let cert = client.signed_by(&key, &issuer).unwrap();
    let other = KeyPair::generate().unwrap();
    let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.pem", ca_cert.pem());
    write("client.pem", cert.pem());
    write("client.key", key.serialize_pem());
    write("other.key", other.serialize_pem());
    write("junk.pem", "not a PEM file\n".into());
    Pki { dir }
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls(&self, cert: Option<&str>, key: Option<&str>) -> TlsConfig {
        TlsConfig {
            ca_file: self.path("ca.pem"),
            cert_file: cert.map(|c| self.path(c)),
            key_file: key.map(|k| self.path(k)),
            server_name: None,
            common_name: None,
        }
    }
}

#[test]
fn a_ca_with_or_without_a_client_certificate_loads() {
    let pki = pki("RAE-A");
    load(&pki.tls(None, None), "broker.lab").unwrap();
    load(
        &pki.tls(Some("client.pem"), Some("client.key")),
        "127.0.0.1",
    )
    .unwrap();
}

#[test]
fn the_serial_is_read_from_the_certificate_cn() {
    let pki = pki("RAE-0042");
    assert_eq!(
        certificate_common_name(&pki.path("client.pem")).unwrap(),
        "RAE-0042"
    );
    // The CA names a CN too; a file without a certificate has none.
    assert_eq!(
        certificate_common_name(&pki.path("ca.pem")).unwrap(),
        "test CA"
    );
    assert!(matches!(
        certificate_common_name(&pki.path("junk.pem")),
        Err(TransportError::NotPem { .. })
    ));
}

#[test]
fn unusable_files_are_named_in_the_error() {
    let pki = pki("RAE-A");
    let cases = [
        (
            pki.tls(Some("client.pem"), Some("other.key")),
            "does not belong",
        ),
        (
            pki.tls(Some("missing.pem"), Some("client.key")),
            "cannot read the client certificate",
        ),
        (
            pki.tls(Some("junk.pem"), Some("client.key")),
            "holds no PEM CERTIFICATE",
        ),
        (
            pki.tls(Some("client.pem"), Some("junk.pem")),
            "holds no PEM PRIVATE KEY",
        ),
        (
            TlsConfig {
                ca_file: pki.path("junk.pem"),
                ..pki.tls(None, None)
            },
            "CA file",
        ),
    ];
    for (tls, expected) in cases {
        let err = load(&tls, "broker.lab").unwrap_err();
        let text = crate::error_chain(&err);
        assert!(text.contains(expected), "{text}");
        assert!(
            text.contains(&pki.dir.path().display().to_string()),
            "{text}"
        );
    }
    let bad_name = TlsConfig {
        server_name: Some("not a name!".into()),
        ..pki.tls(None, None)
    };
    assert!(matches!(
        load(&bad_name, "broker.lab"),
        Err(TransportError::ServerName { .. })
    ));
}

#[test]
fn der_walk_refuses_truncated_input() {
    let pki = pki("RAE-A");
    let chain = read_certificates(&pki.path("client.pem"), "client certificate").unwrap();
    let der = chain[0].as_ref();
    for cut in [0, 1, 2, 10, der.len() / 2] {
        assert_eq!(subject_common_name(&der[..cut]), None, "cut at {cut}");
    }
    assert_eq!(subject_common_name(der).as_deref(), Some("RAE-A"));
}
