#!/usr/bin/python3
"""A lab DUT's mDNS responder: python3-zeroconf announcing one DNS-SD service.

Runs inside a DUT's network namespace with Debian's /usr/bin/python3 (which has the
zeroconf module), bound to the DUT's lab address only. Prints READY once the service is
registered (announced) and unregisters it (goodbye packets) on SIGTERM or SIGINT.

Usage: mdns_responder.py --ip 198.18.N.X --type _googlecast._tcp.local. \
    --instance "Lab TV" --host lab-tv --port 8009 --txt md=Chromecast --txt fn="Lab TV" \
    [--also _airplay._tcp.local.:"Lab TV":7000]

--txt applies to the main service; each --also registers another service (no TXT) on the
same host.
"""

import argparse
import ipaddress
import signal
import socket
import sys
import threading

from zeroconf import IPVersion, ServiceInfo, Zeroconf


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ip", required=True, help="the DUT's own IPv4 address")
    p.add_argument("--type", required=True, help="service type, e.g. _googlecast._tcp.local.")
    p.add_argument("--instance", required=True)
    p.add_argument("--host", required=True, help="host name without .local.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--txt", action="append", default=[], help="key=value or bare key")
    p.add_argument("--also", action="append", default=[], help="TYPE:INSTANCE:PORT")
    args = p.parse_args()
    if not ipaddress.IPv4Address(args.ip) in ipaddress.IPv4Network("198.18.0.0/15"):
        p.error(f"{args.ip} is not a lab address (198.18.0.0/15)")
    return args


def txt_properties(items):
    props = {}
    for item in items:
        key, sep, value = item.partition("=")
        props[key] = value if sep else None
    return props


def main():
    args = parse_args()
    def service(type_, instance, port, properties):
        return ServiceInfo(
            type_=type_,
            name=f"{instance}.{type_}",
            addresses=[socket.inet_aton(args.ip)],
            port=port,
            properties=properties,
            server=f"{args.host}.local.",
        )

    infos = [service(args.type, args.instance, args.port, txt_properties(args.txt))]
    for also in args.also:
        type_, instance, port = also.split(":")
        infos.append(service(type_, instance, int(port), {}))
    zc = Zeroconf(interfaces=[args.ip], ip_version=IPVersion.V4Only)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        for info in infos:
            zc.register_service(info)
        names = ", ".join(info.name for info in infos)
        print(f"READY {names} on {args.host}.local. {args.ip}", flush=True)
        stop.wait()
        zc.unregister_all_services()
    finally:
        zc.close()
    print("STOPPED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
