//! What a captured mDNS response says about the device that sent it: host name, services, withdrawn services.
//!
//! [`mdns_decode`] is pure: one UDP payload in, [`Observation`]s about the Ethernet source out
//! (a responder answers for itself), plus the service types a `_services._dns-sd._udp.local.`
//! answer listed, for the querier to browse. Queries say nothing about services and give
//! nothing. Every output is bounded by [`MdnsDecodeSettings`].
//!
//! - [`ObservationKind::MdnsHost`]: each owner name of an A or AAAA record under `.local`
//!   (TTL > 0), without `.local.`.
//! - [`ObservationKind::MdnsService`]: a PTR from a service type to an instance of it whose SRV
//!   and TXT records are in the same packet (any section but authority); only the selected
//!   TXT keys, first occurrence of each, values cut to `max_txt_value`; the service type keeps its
//!   `.local.` suffix (`_googlecast._tcp.local.`), the instance is the name before the type.
//! - [`ObservationKind::MdnsServiceGone`]: such a PTR with TTL 0 (a goodbye).
//!
//! Limitations: subtype PTRs (`_x._sub._y._tcp.local.`) and services whose SRV or TXT came in
//! another packet are not reported (the querier's PTR questions make responders send all three
//! together, RFC 6763 §12.1); the SRV target is not checked against the host's A records.

use rae_proto::{Mac, MdnsService, Text, TxtEntry};

use super::observation::{Observation, ObservationKind};
use crate::probe::mdns::MdnsSettings;
use crate::wire::mdns::{rtype, MdnsRepr, Name, Packet, Record, RecordData, CLASS_IN};
use crate::wire::DropReason;

/// The DNS-SD service type enumeration name (RFC 6763 §9), as labels.
const META: [&[u8]; 4] = [b"_services", b"_dns-sd", b"_udp", b"local"];
/// Longest name kept (a DNS name is at most 255 bytes on the wire).
const MAX_NAME: usize = 255;

/// Limits and TXT selection of the decoder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MdnsDecodeSettings {
    /// TXT keys kept (case-insensitive); others are dropped.
    pub txt_keys: Vec<String>,
    /// Longest TXT value kept, bytes (longer ones are cut).
    pub max_txt_value: usize,
    /// Services (added or gone) reported per packet at most.
    pub max_services: usize,
    /// Host names reported per packet at most.
    pub max_hosts: usize,
    /// Service types returned per packet at most.
    pub max_types: usize,
}

impl MdnsDecodeSettings {
    /// The decoder's settings from the browsing settings, so both keep the same TXT keys.
    pub fn from_browse(settings: &MdnsSettings) -> Self {
        Self {
            txt_keys: settings.txt_keys.clone(),
            max_txt_value: settings.max_txt_value,
            max_services: settings.max_services_per_host,
            max_hosts: 4,
            max_types: settings.max_types,
        }
    }
}

impl Default for MdnsDecodeSettings {
    fn default() -> Self {
        Self::from_browse(&MdnsSettings::default())
    }
}

/// What one mDNS payload gave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MdnsDecoded {
    pub observations: Vec<Observation>,
    /// Service types from `_services._dns-sd._udp.local.` answers, e.g. `_googlecast._tcp.local.`,
    /// each once.
    pub types: Vec<String>,
}

/// The observations an mDNS payload sent by `src` carries (see the module documentation).
pub fn mdns_observations(
    src: Mac,
    payload: &[u8],
    at_ms: i64,
    settings: &MdnsDecodeSettings,
) -> Result<Vec<Observation>, DropReason> {
    mdns_decode(src, payload, at_ms, settings).map(|decoded| decoded.observations)
}

/// The observations and the service types an mDNS payload sent by `src` carries.
pub fn mdns_decode(
    src: Mac,
    payload: &[u8],
    at_ms: i64,
    settings: &MdnsDecodeSettings,
) -> Result<MdnsDecoded, DropReason> {
    let packet = Packet::new_checked(payload)?;
    let repr = MdnsRepr::parse(&packet)?;
    let mut decoded = MdnsDecoded::default();
    if !repr.header.response || !src.is_unicast() || src == Mac::ZERO {
        return Ok(decoded);
    }
    let records: Vec<&Record<'_>> = repr
        .answers_and_additionals()
        .filter(|r| r.class == CLASS_IN)
        .collect();
    let mut kinds = Vec::new();
    hosts(&records, settings, &mut kinds);
    services(&records, settings, &mut kinds, &mut decoded.types);
    decoded.observations = kinds
        .into_iter()
        .map(|kind| Observation {
            mac: src,
            at_ms,
            kind,
        })
        .collect();
    Ok(decoded)
}

fn hosts(records: &[&Record<'_>], settings: &MdnsDecodeSettings, out: &mut Vec<ObservationKind>) {
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for record in records {
        if !matches!(record.data, RecordData::A(_) | RecordData::Aaaa(_)) || record.ttl == 0 {
            continue;
        }
        let Some(hostname) = host_name(&record.name) else {
            continue;
        };
        if seen.iter().any(|s| s.eq_ignore_ascii_case(&hostname)) {
            continue;
        }
        if seen.len() >= settings.max_hosts {
            break;
        }
        seen.push(hostname.clone());
        out.push(ObservationKind::MdnsHost {
            hostname: Text::new(hostname),
        });
    }
}

/// `tv.local.` -> `tv`; names outside `.local` are not mDNS host names.
fn host_name(name: &Name<'_>) -> Option<Vec<u8>> {
    let count = name.label_count();
    if count < 2 || !name.ends_with(&[b"local"]) {
        return None;
    }
    let mut host = Vec::new();
    for (i, label) in name.labels().take(count - 1).enumerate() {
        if i > 0 {
            host.push(b'.');
        }
        host.extend_from_slice(label);
    }
    (host.len() <= MAX_NAME).then_some(host)
}

/// `_x._tcp.local.` when `name` is a browsable service type (the meta name is not).
fn service_type(name: &Name<'_>) -> Option<String> {
    let labels: Vec<&[u8]> = name.labels().collect();
    let [service, proto, domain] = labels.as_slice() else {
        return None;
    };
    let usable = service.len() > 1
        && service.starts_with(b"_")
        && !service.eq_ignore_ascii_case(b"_services")
        && (proto.eq_ignore_ascii_case(b"_tcp") || proto.eq_ignore_ascii_case(b"_udp"))
        && domain.eq_ignore_ascii_case(b"local")
        && service
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
    usable.then(|| name.to_dotted())
}

fn services(
    records: &[&Record<'_>],
    settings: &MdnsDecodeSettings,
    out: &mut Vec<ObservationKind>,
    types: &mut Vec<String>,
) {
    let mut reported: Vec<(String, String)> = Vec::new();
    for record in records {
        let RecordData::Ptr(target) = record.data else {
            continue;
        };
        if record.name.ends_with(&META) && record.name.label_count() == META.len() {
            if record.ttl == 0 || types.len() >= settings.max_types {
                continue;
            }
            if let Some(ty) = service_type(&target) {
                if !types.iter().any(|t| t.eq_ignore_ascii_case(&ty)) {
                    types.push(ty);
                }
            }
            continue;
        }
        let Some(ty) = service_type(&record.name) else {
            continue;
        };
        let Some(instance) = instance_of(&target, &record.name) else {
            continue;
        };
        let key = (ty.to_ascii_lowercase(), instance.to_lowercase());
        if reported.contains(&key) {
            continue;
        }
        if reported.len() >= settings.max_services {
            break;
        }
        let kind = if record.ttl == 0 {
            ObservationKind::MdnsServiceGone {
                service_type: ty,
                instance,
            }
        } else {
            let Some(service) = resolve(records, &target, ty, instance, settings) else {
                continue;
            };
            ObservationKind::MdnsService(service)
        };
        reported.push(key);
        out.push(kind);
    }
}

/// The instance part of `target` when `target` is `<instance>.<service_type>`. An instance
/// is one label, but senders that do not escape a `.` in it (python-zeroconf) split it in
/// several: they are joined with `.` again, as `mdns-sd` does.
fn instance_of(target: &Name<'_>, service_type: &Name<'_>) -> Option<String> {
    let type_labels = service_type.label_count();
    let count = target.label_count();
    let instance_labels = count.checked_sub(type_labels).filter(|n| *n > 0)?;
    let suffix: Vec<&[u8]> = service_type.labels().collect();
    if !target.ends_with(&suffix) {
        return None;
    }
    let mut instance = Vec::new();
    for (i, label) in target.labels().take(instance_labels).enumerate() {
        if i > 0 {
            instance.push(b'.');
        }
        instance.extend_from_slice(label);
    }
    let instance = String::from_utf8_lossy(&instance).into_owned();
    (instance.len() <= MAX_NAME).then_some(instance)
}

/// The service `instance` of `ty` from its SRV and TXT records in `records`.
fn resolve(
    records: &[&Record<'_>],
    fullname: &Name<'_>,
    service_type: String,
    instance: String,
    settings: &MdnsDecodeSettings,
) -> Option<MdnsService> {
    let of_instance = |r: &&&Record<'_>| r.ttl > 0 && r.name.eq_ignore_case(fullname);
    let port = records
        .iter()
        .filter(of_instance)
        .find_map(|r| match r.data {
            RecordData::Srv { port, .. } if r.rtype == rtype::SRV => Some(port),
            _ => None,
        })?;
    let txt = records
        .iter()
        .filter(of_instance)
        .find_map(|r| match r.data {
            RecordData::Txt(txt) => Some(txt),
            _ => None,
        })?;
    let mut entries: Vec<TxtEntry> = Vec::new();
    for attribute in txt.attributes() {
        let Ok(key) = std::str::from_utf8(attribute.key) else {
            continue;
        };
        let wanted = settings
            .txt_keys
            .iter()
            .any(|k| k.eq_ignore_ascii_case(key));
        // RFC 6763 §6.4: only the first occurrence of a key counts.
        if !wanted || entries.iter().any(|e| e.key.eq_ignore_ascii_case(key)) {
            continue;
        }
        entries.push(TxtEntry {
            key: key.to_owned(),
            value: attribute
                .value
                .map(|v| Text::from(&v[..v.len().min(settings.max_txt_value)])),
        });
    }
    Some(MdnsService {
        service_type,
        instance,
        port,
        txt: entries,
    })
}
