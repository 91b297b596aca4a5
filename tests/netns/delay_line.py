#!/usr/bin/env python3
"""A delay line for one network namespace, where the kernel has no sch_netem (`tc qdisc ...
netem`): what netem's `delay D loss L` does on a node's egress, done in user space.

Run inside the namespace, as root:
    python3 tests/netns/delay_line.py TUN SUBNET SOURCE DELAY_MS LOSS_PERCENT

It makes a TUN device named TUN and routes, by policy, every packet the namespace sends to
SUBNET (say 10.77.5.0/24) into it, with SOURCE (the namespace's own address there) as the
source address. Each packet read from the device is dropped with probability LOSS_PERCENT/100,
or held DELAY_MS and then sent on unchanged through a raw socket. That socket's packets carry a
firewall mark whose rule sends them out by the namespace's ordinary routes (its `eth0`), not
back into the device. The kernel's TCP and UDP stacks on both ends are untouched: only the wire
is slower and loses packets.

It prints `ready` once the routes are in place. On SIGTERM it removes its rules and exits; the
device and its route go with the process.
"""

import fcntl
import heapq
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MARK = 0x4D45
TABLE = "4397"
RULES = [
    # The delay line's own packets leave by the ordinary routes...
    ["fwmark", hex(MARK), "lookup", "main", "priority", "4396"],
    # ...everything else for SUBNET goes into the delay line.
    ["to", None, "lookup", TABLE, "priority", "4397"],
]


def ip(*args, check=True):
    subprocess.run(["ip", *args], check=check, stdout=subprocess.DEVNULL)


def main():
    name, subnet, source = sys.argv[1], sys.argv[2], sys.argv[3]
    delay = float(sys.argv[4]) / 1000.0
    loss = float(sys.argv[5]) / 100.0
    rules = [[subnet if a is None else a for a in rule] for rule in RULES]

    tun = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tun, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    out.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)

    def stop(*_):
        for rule in rules:
            ip("rule", "del", *rule, check=False)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    # Packets leave by a route other than the one they came back by: no reverse-path check.
    for conf in ("all", "default", "eth0"):
        subprocess.run(
            ["sysctl", "-qw", f"net.ipv4.conf.{conf}.rp_filter=0"], check=True
        )
    ip("link", "set", name, "up")
    ip("route", "add", subnet, "dev", name, "src", source, "table", TABLE)
    for rule in rules:
        ip("rule", "add", *rule)
    print("ready", flush=True)

    held = []  # (when to send, sequence number, packet): a heap, in sending order
    sequence = 0
    while True:
        wait = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([tun], [], [], wait)
        if readable:
            packet = os.read(tun, 65536)
            if random.random() >= loss and packet and packet[0] >> 4 == 4:
                heapq.heappush(held, (time.monotonic() + delay, sequence, packet))
                sequence += 1
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, packet = heapq.heappop(held)
            try:
                out.sendto(packet, (socket.inet_ntoa(packet[16:20]), 0))
            except OSError:
                pass  # as a wire would, lose what cannot be sent


if __name__ == "__main__":
    main()
