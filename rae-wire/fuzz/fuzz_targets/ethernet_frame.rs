//! Whole captured frames through `parse_frame`, in both UDP checksum modes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rae_wire::{parse_frame, parse_frame_with, DropCounters, Message, UdpChecksum};

fuzz_target!(|data: &[u8]| {
    let mut counters = DropCounters::new();
    for mode in [UdpChecksum::Verify, UdpChecksum::Skip] {
        let result = if mode == UdpChecksum::Verify {
            parse_frame(data)
        } else {
            parse_frame_with(data, mode)
        };
        match result {
            // Touch what a consumer would: text helpers and the decoded FQDN.
            Ok(frame) => {
                if let Message::Dhcp { dhcp, .. } = frame.message {
                    let _ = dhcp.hostname.map(|t| (t.as_str(), t.to_string()));
                    let _ = dhcp.vendor_class.map(|t| t.as_str());
                    let _ = dhcp.client_id.map(|c| c.as_mac());
                    let _ = dhcp.client_fqdn.map(|f| f.dotted_name());
                }
            }
            Err(reason) => {
                counters.record(reason);
                let _ = reason.to_string();
            }
        }
    }
    let _ = counters.iter().count();
});
