#!/usr/bin/env python3
"""Benchmark: how long pyzk takes to download the attendance log from a ZK terminal (essl-sim).

Each run opens a fresh pyzk connection (ommit_ping=True), calls get_attendance() and disconnects,
then prints `run=<i> records=<n> seconds=<wall> cpu=<process cpu>` (times cover the whole run,
connect to disconnect; cpu is this Python process only). Finally prints `median_seconds=<x>`.
Anything pyzk itself prints goes to stderr. Any failure: message on stderr, exit status 1.

    python pyzk_read_bench.py --addr 127.0.0.1:4370 --runs 5 [--udp] [--comm-key K] [--timeout S]

Only loopback addresses are accepted (see pyzk_dump.py, which this reuses).
"""
import argparse
import contextlib
import statistics
import sys
import time

sys.dont_write_bytecode = True  # no __pycache__ next to the scripts
from pyzk_dump import common_args, describe, make_zk  # noqa: E402


def one_run(args):
    wall0, cpu0 = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(sys.stderr):  # pyzk prints warnings to stdout
        conn = make_zk(args).connect()
        records = conn.get_attendance()
        conn.disconnect()
    return len(records), time.perf_counter() - wall0, time.process_time() - cpu0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    common_args(parser)
    parser.add_argument("--runs", type=int, default=5, help="number of runs (default 5)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    walls = []
    for i in range(1, args.runs + 1):
        try:
            n, wall, cpu = one_run(args)
        except Exception as e:
            print("pyzk_read_bench: run %d failed: %s" % (i, describe(e, args)), file=sys.stderr)
            return 1
        walls.append(wall)
        print("run=%d records=%d seconds=%.6f cpu=%.6f" % (i, n, wall, cpu), flush=True)
    print("median_seconds=%.6f" % statistics.median(walls))
    return 0


if __name__ == "__main__":
    sys.exit(main())
