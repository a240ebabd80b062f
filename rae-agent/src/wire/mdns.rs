//! mDNS (DNS over UDP 5353) messages: just enough of RFC 1035 / 6762 to read PTR, SRV, TXT, A and AAAA records.
