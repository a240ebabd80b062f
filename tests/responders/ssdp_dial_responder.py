#!/usr/bin/python3
"""A lab DUT's SSDP + UPnP + DIAL server, standard library only.

Answers M-SEARCH on 239.255.255.250:1900 (joined on the DUT's lab address) with a LOCATION on
its own address, serves the UPnP device description with an Application-URL header, and the
Netflix DIAL application resource with its state and additionalData (an ESN). Every M-SEARCH
and HTTP request is logged to stdout, so tests can count what the agent did.

--location-ip makes it lie: LOCATION and Application-URL name another host (the agent must
not follow). --no-ssdp serves HTTP only (a bystander that must see no request).

Prints READY once both sockets are bound. Runs until SIGTERM.
"""

import argparse
import http.server
import ipaddress
import random
import signal
import socket
import struct
import sys
import threading
import time
from xml.sax.saxutils import escape

GROUP = "239.255.255.250"
PORT = 1900
ST_DIAL = "urn:dial-multiscreen-org:service:dial:1"
DEVICE_DIAL = "urn:dial-multiscreen-org:device:dial:1"
LAB = ipaddress.IPv4Network("198.18.0.0/15")


def log(text):
    print(text, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ip", required=True, help="the DUT's own IPv4 address")
    p.add_argument("--http-port", type=int, default=49152)
    p.add_argument("--location-ip", help="host put in LOCATION (default: --ip)")
    p.add_argument("--no-ssdp", action="store_true")
    p.add_argument("--friendly-name", default="Lab TV")
    p.add_argument("--manufacturer", default="Acme")
    p.add_argument("--model-name", default="Acme Cast")
    p.add_argument("--model-number", default="AC-1")
    p.add_argument("--serial", default="SN-0001")
    p.add_argument("--udn", default="uuid:00000000-0000-4000-8000-000000000001")
    p.add_argument("--netflix-state", default="running")
    p.add_argument("--esn", default="NFLAB-ESN-0001")
    args = p.parse_args()
    for ip in (args.ip, args.location_ip or args.ip):
        if ipaddress.IPv4Address(ip) not in LAB:
            p.error(f"{ip} is not a lab address (198.18.0.0/15)")
    return args


def description(args):
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<root xmlns="urn:schemas-upnp-org:device-1-0">
  <specVersion><major>1</major><minor>0</minor></specVersion>
  <device>
    <deviceType>{DEVICE_DIAL}</deviceType>
    <friendlyName>{escape(args.friendly_name)}</friendlyName>
    <manufacturer>{escape(args.manufacturer)}</manufacturer>
    <modelName>{escape(args.model_name)}</modelName>
    <modelNumber>{escape(args.model_number)}</modelNumber>
    <serialNumber>{escape(args.serial)}</serialNumber>
    <UDN>{escape(args.udn)}</UDN>
    <serviceList><service>
      <serviceType>{ST_DIAL}</serviceType>
      <serviceId>urn:dial-multiscreen-org:serviceId:dial</serviceId>
    </service></serviceList>
  </device>
</root>
""".encode()


def netflix(args):
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<service xmlns="urn:dial-multiscreen-org:schemas:dial" dialVer="2.1">
  <name>Netflix</name>
  <options allowStop="true"/>
  <state>{escape(args.netflix_state)}</state>
  <link rel="run" href="run"/>
  <additionalData><esn>{escape(args.esn)}</esn><version>lab-1</version></additionalData>
</service>
""".encode()


def make_handler(args):
    base = f"http://{args.location_ip or args.ip}:{args.http_port}"

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "LabDIAL/1.0"

        def do_GET(self):
            log(f"GET {self.path} from {self.client_address[0]}")
            if self.path == "/dd.xml":
                self.reply(200, description(args), {"Application-URL": f"{base}/apps/"})
            elif self.path == "/apps/Netflix":
                self.reply(200, netflix(args), {})
            else:
                self.reply(404, b"", {})

        def reply(self, status, body, headers):
            self.send_response(status)
            self.send_header("Content-Type", 'text/xml; charset="utf-8"')
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    return Handler


def ssdp_loop(args, sock, stop):
    location = f"http://{args.location_ip or args.ip}:{args.http_port}/dd.xml"
    targets = {
        "upnp:rootdevice": f"{args.udn}::upnp:rootdevice",
        args.udn: args.udn,
        DEVICE_DIAL: f"{args.udn}::{DEVICE_DIAL}",
        ST_DIAL: f"{args.udn}::{ST_DIAL}",
    }
    while not stop.is_set():
        try:
            data, src = sock.recvfrom(8192)
        except socket.timeout:
            continue
        text = data.decode("utf-8", "replace")
        lines = text.split("\r\n")
        if not lines[0].upper().startswith("M-SEARCH"):
            continue
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().upper()] = value.strip()
        st = headers.get("ST", "")
        log(f"MSEARCH from {src[0]}:{src[1]} st={st}")
        if headers.get("MAN", "").strip('"') != "ssdp:discover":
            continue
        wanted = targets if st == "ssdp:all" else {k: v for k, v in targets.items() if k == st}
        try:
            mx = max(1, min(int(headers.get("MX", "1")), 5))
        except ValueError:
            mx = 1
        time.sleep(random.uniform(0, min(mx, 1) / 2))
        for target, usn in wanted.items():
            reply = (
                "HTTP/1.1 200 OK\r\n"
                "CACHE-CONTROL: max-age=1800\r\n"
                "EXT:\r\n"
                f"LOCATION: {location}\r\n"
                "SERVER: Linux/6.1 UPnP/1.0 LabDIAL/1.0\r\n"
                f"ST: {target}\r\n"
                f"USN: {usn}\r\n"
                "\r\n"
            )
            sock.sendto(reply.encode(), src)


def main():
    args = parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = http.server.ThreadingHTTPServer((args.ip, args.http_port), make_handler(args))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threads = []
    if not args.no_ssdp:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("", PORT))
        mreq = struct.pack("4s4s", socket.inet_aton(GROUP), socket.inet_aton(args.ip))
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(args.ip))
        sock.settimeout(0.2)
        t = threading.Thread(target=ssdp_loop, args=(args, sock, stop), daemon=True)
        t.start()
        threads.append(t)
    log(f"READY http://{args.ip}:{args.http_port}/dd.xml ssdp={'off' if args.no_ssdp else 'on'}")
    stop.wait()
    server.shutdown()
    for t in threads:
        t.join(timeout=2)
    log("STOPPED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
