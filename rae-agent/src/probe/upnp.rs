//! The UPnP device description (UDA 1.1 §2.3): the root device's identification fields.
//!
//! Elements are matched by local name whatever their namespace (devices get the namespace
//! wrong often enough), only the root device is read (embedded devices in `deviceList` are a
//! TV's own tuner or renderer, not other devices on the LAN), and fields that are missing or
//! empty are `None`. DTDs are refused, node count and size are capped.

use rae_proto::UpnpDescription;
use roxmltree::{Document, Node, ParsingOptions};

/// Largest description accepted, bytes.
pub const MAX_DESCRIPTION: usize = 64 * 1024;
/// Most XML nodes parsed; a real description has a few hundred.
const MAX_NODES: u32 = 8192;
/// Longest field kept, characters (UDA limits friendlyName to 64, modelName to 32 ...).
const MAX_FIELD: usize = 256;

/// Why a body is not a usable device description.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    #[error("document of {len} bytes is over the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("not well-formed XML: {0}")]
    Syntax(String),
    #[error("no <{0}> element where expected")]
    Missing(&'static str),
}

/// Parses the XML with the agent's limits. Bytes that are not UTF-8 become U+FFFD rather than
/// losing the whole document (some devices declare ISO-8859-1 and mean it).
pub(crate) fn with_document<T>(
    body: &[u8],
    limit: usize,
    read: impl FnOnce(&Document<'_>) -> Result<T, XmlError>,
) -> Result<T, XmlError> {
    if body.len() > limit {
        return Err(XmlError::TooLarge {
            len: body.len(),
            limit,
        });
    }
    let text = String::from_utf8_lossy(body);
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_NODES,
        ..ParsingOptions::default()
    };
    let doc = Document::parse_with_options(&text, options)
        .map_err(|e| XmlError::Syntax(e.to_string()))?;
    read(&doc)
}

/// The first child element named `local`.
pub(crate) fn child<'a, 'input>(node: Node<'a, 'input>, local: &str) -> Option<Node<'a, 'input>> {
    node.children()
        .find(|n| n.is_element() && n.tag_name().name() == local)
}

/// The trimmed text of an element, bounded; `None` when empty.
pub(crate) fn text_of(node: Node<'_, '_>, max_chars: usize) -> Option<String> {
    let mut text = String::new();
    for part in node.children().filter(|n| n.is_text()) {
        text.push_str(part.text().unwrap_or_default());
    }
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    Some(match text.char_indices().nth(max_chars) {
        Some((at, _)) => text[..at].to_owned(),
        None => text.to_owned(),
    })
}

/// Reads the root device's identification from a description document.
pub fn parse_description(body: &[u8]) -> Result<UpnpDescription, XmlError> {
    with_document(body, MAX_DESCRIPTION, |doc| {
        let root = doc.root_element();
        if root.tag_name().name() != "root" {
            return Err(XmlError::Missing("root"));
        }
        let device = child(root, "device").ok_or(XmlError::Missing("device"))?;
        let field = |name| child(device, name).and_then(|n| text_of(n, MAX_FIELD));
        Ok(UpnpDescription {
            friendly_name: field("friendlyName"),
            manufacturer: field("manufacturer"),
            model_name: field("modelName"),
            model_number: field("modelNumber"),
            serial_number: field("serialNumber"),
            udn: field("UDN"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TV: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<root xmlns="urn:schemas-upnp-org:device-1-0" xmlns:dlna="urn:schemas-dlna-org:device-1-0">
  <specVersion><major>1</major><minor>0</minor></specVersion>
  <URLBase>http://198.18.1.20:8008</URLBase>
  <device>
    <deviceType>urn:dial-multiscreen-org:device:dial:1</deviceType>
    <friendlyName>Living Room TV &amp; Sound</friendlyName>
    <manufacturer>Acme</manufacturer>
    <modelName> Acme Cast 4K </modelName>
    <modelNumber>AC-4000</modelNumber>
    <serialNumber></serialNumber>
    <UDN>uuid:3e1cc7c3-f4d5-2c4f-a2ae-a2bca1e6d3a1</UDN>
    <deviceList>
      <device>
        <friendlyName>Embedded renderer</friendlyName>
        <UDN>uuid:embedded</UDN>
      </device>
    </deviceList>
  </device>
</root>"#;

    #[test]
    fn root_device_fields() {
        let d = parse_description(TV.as_bytes()).unwrap();
        assert_eq!(d.friendly_name.as_deref(), Some("Living Room TV & Sound"));
        assert_eq!(d.manufacturer.as_deref(), Some("Acme"));
        assert_eq!(d.model_name.as_deref(), Some("Acme Cast 4K"));
        assert_eq!(d.model_number.as_deref(), Some("AC-4000"));
        assert_eq!(d.serial_number, None);
        assert_eq!(
            d.udn.as_deref(),
            Some("uuid:3e1cc7c3-f4d5-2c4f-a2ae-a2bca1e6d3a1")
        );
    }

    #[test]
    fn prefixed_namespace_and_missing_fields() {
        let xml = r#"<u:root xmlns:u="urn:schemas-upnp-org:device-1-0"><u:device>
            <u:friendlyName><![CDATA[Bed <room>]]></u:friendlyName></u:device></u:root>"#;
        let d = parse_description(xml.as_bytes()).unwrap();
        assert_eq!(d.friendly_name.as_deref(), Some("Bed <room>"));
        assert_eq!(d.manufacturer, None);
        assert_eq!(d.udn, None);
    }

    #[test]
    fn latin1_bytes_do_not_lose_the_document() {
        let xml = b"<root><device><friendlyName>T\xe9l\xe9</friendlyName></device></root>";
        let d = parse_description(xml).unwrap();
        assert_eq!(d.friendly_name.as_deref(), Some("T\u{fffd}l\u{fffd}"));
    }

    #[test]
    fn long_fields_are_cut() {
        let xml = format!(
            "<root><device><modelName>{}</modelName></device></root>",
            "é".repeat(1000)
        );
        let d = parse_description(xml.as_bytes()).unwrap();
        assert_eq!(d.model_name.unwrap().chars().count(), MAX_FIELD);
    }

    #[test]
    fn rejected_documents() {
        assert_eq!(
            parse_description(b"<html><body/></html>"),
            Err(XmlError::Missing("root"))
        );
        assert_eq!(
            parse_description(b"<root><specVersion/></root>"),
            Err(XmlError::Missing("device"))
        );
        assert!(matches!(
            parse_description(b"<root><device>"),
            Err(XmlError::Syntax(_))
        ));
        let laughs = br#"<?xml version="1.0"?><!DOCTYPE root [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><root><device><friendlyName>&b;</friendlyName></device></root>"#;
        assert!(matches!(
            parse_description(laughs),
            Err(XmlError::Syntax(_))
        ));
        let big = vec![b' '; MAX_DESCRIPTION + 1];
        assert!(matches!(
            parse_description(&big),
            Err(XmlError::TooLarge { .. })
        ));
        let many = format!("<root>{}</root>", "<a/>".repeat(MAX_NODES as usize));
        assert!(matches!(
            parse_description(many.as_bytes()),
            Err(XmlError::Syntax(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            let _ = parse_description(text.as_bytes());
            let wrapped = format!("<root><device>{text}</device></root>");
            let _ = parse_description(wrapped.as_bytes());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse_description(&bytes);
        }
    }
}
