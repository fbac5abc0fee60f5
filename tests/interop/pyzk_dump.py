#!/usr/bin/env python3
"""Interop check: read a ZK terminal (the essl-sim simulator) with pyzk and dump it as JSON.

Connects with pyzk (PyPI `pyzk`, module `zk`; ommit_ping=True, TCP unless --udp), reads device
info, counters, users, attendance and the clock, disconnects, and prints ONE JSON document on
stdout. Values are taken verbatim from pyzk's objects (no fixing up): e.g. pyzk reports the uid of
a 16-byte attendance record as a *string* when the user is unknown, and that is what is printed.
Anything pyzk itself prints goes to stderr. Any failure: message on stderr, exit status 1.

    python pyzk_dump.py --addr 127.0.0.1:4370 [--udp] [--comm-key K] [--timeout S]
                        [--set-time YYYY-MM-DDTHH:MM:SS]
    python pyzk_dump.py --addr ... --live N    # live_capture: print N realtime punches, one JSON line each

Only loopback addresses are accepted: this is a test tool for a local simulator.
"""
import argparse
import contextlib
import ipaddress
import json
import sys
from datetime import datetime

from zk import ZK

TIME_FMT = "%Y-%m-%dT%H:%M:%S"


def parse_addr(text):
    """'127.0.0.1:4370' -> ('127.0.0.1', 4370); refuses anything that is not loopback."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        if not ipaddress.IPv4Address(host).is_loopback:
            raise ValueError
        port = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError("only IPv4 loopback HOST:PORT is allowed, got %r" % text)
    return host, port


def parse_time(text):
    try:
        return datetime.strptime(text, TIME_FMT)
    except ValueError:
        raise argparse.ArgumentTypeError("expected YYYY-MM-DDTHH:MM:SS, got %r" % text)


def common_args(parser):
    parser.add_argument("--addr", type=parse_addr, required=True, help="127.0.0.1:PORT")
    parser.add_argument("--udp", action="store_true", help="use UDP (pyzk force_udp=True)")
    parser.add_argument("--comm-key", type=int, default=0, help="comm key / password (default 0)")
    parser.add_argument("--timeout", type=float, default=10.0, help="socket timeout, seconds")


def describe(exc, args):
    """Error text for stderr. pyzk ignores the result of its TCP connect(), so a refused
    connection only shows up as 'Broken pipe' on the first send: say so."""
    text = "%s: %s" % (type(exc).__name__, exc)
    if not args.udp and ("Errno 32" in text or "Errno 107" in text):
        text += " (TCP connect to %s:%d failed, probably refused)" % args.addr
    return text


def make_zk(args):
    host, port = args.addr
    return ZK(host, port=port, timeout=args.timeout, password=args.comm_key,
              force_udp=args.udp, ommit_ping=True)


def dump(args):
    conn = make_zk(args).connect()
    doc = {"device": {
        "serial_number": conn.get_serialnumber(),
        "device_name": conn.get_device_name(),
        "platform": conn.get_platform(),
        "firmware": conn.get_firmware_version(),
        "mac": conn.get_mac(),
    }}
    conn.read_sizes()
    sizes = {"users": conn.users, "fingers": conn.fingers, "records": conn.records}
    doc["users"] = [{"uid": u.uid, "user_id": u.user_id, "name": u.name, "privilege": u.privilege,
                     "password": u.password, "card": u.card, "group_id": u.group_id}
                    for u in conn.get_users()]
    doc["attendance"] = [{"uid": a.uid, "user_id": a.user_id,
                          "timestamp": a.timestamp.strftime(TIME_FMT),
                          "status": a.status, "punch": a.punch}
                         for a in conn.get_attendance()]
    if args.set_time is not None:
        conn.set_time(args.set_time)
    doc["time"] = conn.get_time().strftime(TIME_FMT)
    doc["sizes"] = sizes
    conn.disconnect()
    return doc


def live(args):
    """Prints the first args.live realtime punches as JSON lines (flushed), then ends the capture."""
    conn = make_zk(args).connect()
    seen = 0
    for att in conn.live_capture(new_timeout=1):
        if att is None:
            continue
        line = json.dumps({"uid": att.uid, "user_id": att.user_id,
                           "timestamp": att.timestamp.strftime(TIME_FMT),
                           "status": att.status, "punch": att.punch})
        sys.__stdout__.write(line + "\n")
        sys.__stdout__.flush()
        seen += 1
        if seen >= args.live:
            conn.end_live_capture = True
    conn.disconnect()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(parser)
    parser.add_argument("--set-time", type=parse_time, help="call set_time(T) before get_time()")
    parser.add_argument("--live", type=int, help="live_capture: print N realtime punches and exit")
    args = parser.parse_args()
    if args.live:
        try:
            with contextlib.redirect_stdout(sys.stderr):
                live(args)
        except Exception as e:
            print("pyzk_dump: error: %s" % describe(e, args), file=sys.stderr)
            return 1
        return 0
    try:
        with contextlib.redirect_stdout(sys.stderr):  # pyzk prints warnings to stdout
            doc = dump(args)
    except Exception as e:
        print("pyzk_dump: error: %s" % describe(e, args), file=sys.stderr)
        return 1
    json.dump(doc, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
