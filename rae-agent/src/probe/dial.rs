//! DIAL (DIAL 2.x §6.1): the application resource `<Application-URL>/<name>` a DIAL server
//! answers with `<service xmlns="urn:dial-multiscreen-org:schemas:dial">`.
//!
//! Kept: `name`, `state` (running / stopped / installable=URL / hidden / anything else),
//! `additionalData` verbatim (bounded) and its simple `<key>value</key>` children, e.g. a
//! Netflix ESN. Nothing here does I/O.

use rae_proto::{DialApp, DialAppState};

use super::http::{HttpError, HttpUrl};
use super::upnp::{child, text_of, with_document, XmlError};

/// Largest application resource accepted, bytes.
pub const MAX_APP_RESOURCE: usize = 16 * 1024;
/// Longest `additionalData` kept verbatim, bytes; longer is dropped (its key/values stay).
const MAX_ADDITIONAL_DATA: usize = 2048;
/// Most additional-data key/values kept, and their longest key and value, characters.
const MAX_ADDITIONAL_ENTRIES: usize = 16;
const MAX_KEY: usize = 64;
const MAX_VALUE: usize = 256;
/// Longest name or state text kept, characters.
const MAX_TEXT: usize = 512;

/// One application resource as the DIAL server described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialAppResource {
    pub app: DialApp,
    /// `<additionalData>`'s leaf elements as (local name, trimmed text), in document order.
    pub additional: Vec<(String, String)>,
}

impl DialAppResource {
    /// The additional-data value under `key` (case-insensitive).
    pub fn additional(&self, key: &str) -> Option<&str> {
        self.additional
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    /// A Netflix ESN, when the server published one.
    pub fn esn(&self) -> Option<&str> {
        self.additional("esn")
    }
}

/// Parses a DIAL application resource.
pub fn parse_app(body: &[u8]) -> Result<DialAppResource, XmlError> {
    with_document(body, MAX_APP_RESOURCE, |doc| {
        let service = doc.root_element();
        if service.tag_name().name() != "service" {
            return Err(XmlError::Missing("service"));
        }
        let name = child(service, "name")
            .and_then(|n| text_of(n, MAX_TEXT))
            .ok_or(XmlError::Missing("name"))?;
        let state = child(service, "state")
            .and_then(|n| text_of(n, MAX_TEXT))
            .ok_or(XmlError::Missing("state"))?;
        let mut additional = Vec::new();
        let mut verbatim = None;
        if let Some(data) = child(service, "additionalData") {
            if let (Some(first), Some(last)) = (data.first_child(), data.last_child()) {
                let inner = doc
                    .input_text()
                    .get(first.range().start..last.range().end)
                    .map(str::trim)
                    .unwrap_or_default();
                if !inner.is_empty() && inner.len() <= MAX_ADDITIONAL_DATA {
                    verbatim = Some(inner.to_owned());
                }
            }
            let leaves = data
                .children()
                .filter(|n| n.is_element() && !n.children().any(|c| c.is_element()));
            for leaf in leaves.take(MAX_ADDITIONAL_ENTRIES) {
                let key = leaf.tag_name().name();
                if key.chars().count() > MAX_KEY {
                    continue;
                }
                let value = text_of(leaf, MAX_VALUE).unwrap_or_default();
                additional.push((key.to_owned(), value));
            }
        }
        Ok(DialAppResource {
            app: DialApp {
                name,
                state: DialAppState::from_dial(&state),
                additional_data: verbatim,
            },
            additional,
        })
    })
}

/// The resource URL of application `name` under `application_url` (DIAL §5.4: the
/// Application-URL with `/<name>` appended, one slash between them).
pub fn app_url(application_url: &HttpUrl, name: &str) -> Result<HttpUrl, HttpError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !valid {
        return Err(HttpError::InvalidUrl {
            url: name.chars().take(64).collect(),
            why: "DIAL application names are URL-safe ASCII",
        });
    }
    // A query on the Application-URL would end up before the name: none is expected.
    let base = application_url.path.split('?').next().unwrap_or("/");
    Ok(HttpUrl {
        host: application_url.host,
        port: application_url.port,
        path: format!("{}/{name}", base.trim_end_matches('/')),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NETFLIX_RUNNING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<service xmlns="urn:dial-multiscreen-org:schemas:dial" dialVer="2.1">
  <name>Netflix</name>
  <options allowStop="true"/>
  <state>running</state>
  <link rel="run" href="run"/>
  <additionalData>
    <esn>NFANDROID2-PRV-ACMETV-1234-ABCDEF</esn>
    <sdkVersion>2024.1</sdkVersion>
    <nested><x>1</x></nested>
  </additionalData>
</service>"#;

    #[test]
    fn running_app_with_esn() {
        let r = parse_app(NETFLIX_RUNNING.as_bytes()).unwrap();
        assert_eq!(r.app.name, "Netflix");
        assert_eq!(r.app.state, DialAppState::Running);
        assert_eq!(r.esn(), Some("NFANDROID2-PRV-ACMETV-1234-ABCDEF"));
        assert_eq!(r.additional("SDKVERSION"), Some("2024.1"));
        assert_eq!(r.additional.len(), 2, "nested elements are not key/values");
        let verbatim = r.app.additional_data.unwrap();
        assert!(verbatim.starts_with("<esn>NFANDROID2-PRV-ACMETV-1234-ABCDEF</esn>"));
        assert!(verbatim.ends_with("<nested><x>1</x></nested>"));
    }

    #[test]
    fn states() {
        for (text, state) in [
            ("stopped", DialAppState::Stopped),
            ("hidden", DialAppState::Hidden),
            (
                "installable=https://store.example/netflix",
                DialAppState::Installable("https://store.example/netflix".into()),
            ),
            ("starting", DialAppState::Other("starting".into())),
        ] {
            let xml = format!(
                "<service xmlns=\"urn:dial-multiscreen-org:schemas:dial\"><name>YouTube</name>\
                 <state> {text} </state><additionalData/></service>"
            );
            let r = parse_app(xml.as_bytes()).unwrap();
            assert_eq!(r.app.state, state);
            assert_eq!(r.app.additional_data, None);
            assert!(r.additional.is_empty());
            assert_eq!(r.esn(), None);
        }
    }

    #[test]
    fn missing_elements() {
        assert_eq!(
            parse_app(b"<service><state>running</state></service>"),
            Err(XmlError::Missing("name"))
        );
        assert_eq!(
            parse_app(b"<service><name>Netflix</name></service>"),
            Err(XmlError::Missing("state"))
        );
        assert_eq!(
            parse_app(b"<root><device/></root>"),
            Err(XmlError::Missing("service"))
        );
        assert!(matches!(
            parse_app(&vec![b' '; MAX_APP_RESOURCE + 1]),
            Err(XmlError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_additional_data_keeps_its_key_values() {
        let xml = format!(
            "<service><name>Netflix</name><state>stopped</state><additionalData>\
             <esn>E1</esn><blob>{}</blob></additionalData></service>",
            "x".repeat(MAX_ADDITIONAL_DATA)
        );
        let r = parse_app(xml.as_bytes()).unwrap();
        assert_eq!(r.app.additional_data, None);
        assert_eq!(r.esn(), Some("E1"));
        assert_eq!(r.additional("blob").unwrap().len(), MAX_VALUE);
    }

    #[test]
    fn application_urls() {
        let base = HttpUrl::parse("http://198.18.1.20:8008/apps/").unwrap();
        assert_eq!(app_url(&base, "Netflix").unwrap().path, "/apps/Netflix");
        let base = HttpUrl::parse("http://198.18.1.20:8008/apps").unwrap();
        assert_eq!(app_url(&base, "Netflix").unwrap().path, "/apps/Netflix");
        let base = HttpUrl::parse("http://198.18.1.20:8008").unwrap();
        assert_eq!(app_url(&base, "YouTube").unwrap().path, "/YouTube");
        assert!(app_url(&base, "../etc").is_err());
        assert!(app_url(&base, "a b").is_err());
        assert!(app_url(&base, "").is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse_app(text.as_bytes());
            let wrapped = format!("<service><name>n</name><state>s</state><additionalData>{text}</additionalData></service>");
            let _ = parse_app(wrapped.as_bytes());
        }

        #[test]
        fn arbitrary_app_names_never_panic(name in "\\PC{0,80}") {
            let base = HttpUrl::parse("http://198.18.1.20:8008/apps/").unwrap();
            if let Ok(url) = app_url(&base, &name) {
                let again = format!("http://198.18.1.20:8008{}", url.path);
                proptest::prop_assert!(HttpUrl::parse(&again).is_ok());
            }
        }
    }
}
