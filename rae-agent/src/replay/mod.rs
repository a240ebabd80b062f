//! `rae-agent --pcap FILE`: replays a capture through the same parsers and registry core, without root.
