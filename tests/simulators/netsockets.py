"""Which internet sockets a process holds and where they are bound, from the kernel's own tables.

``getsockname`` asks the socket; ``/proc/<pid>/net/{tcp,tcp6,udp,udp6}`` joined with ``/proc/<pid>/fd``
asks the kernel about every socket of a process, the ones a library opened behind our back included.
That is what "the simulator never listens on anything but loopback" is checked against.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

TABLES = ("tcp", "tcp6", "udp", "udp6")
TCP_LISTEN = "0A"


@dataclass(frozen=True)
class InetSocket:
    table: str  # tcp, tcp6, udp, udp6
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    state: str  # the kernel's hex state: 0A is LISTEN for TCP, 07 is an unconnected UDP socket
    inode: int

    @property
    def loopback(self) -> bool:
        address = self.address
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            return address.ipv4_mapped.is_loopback
        return address.is_loopback

    @property
    def listening(self) -> bool:
        return self.table.startswith("udp") or self.state == TCP_LISTEN


def _address(hex_text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The kernel prints each 32-bit word of the address in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_text)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def socket_inodes(pid: int | str = "self") -> set[int]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def inet_sockets(pid: int | str = "self", inodes: set[int] | None = None) -> list[InetSocket]:
    """Every TCP/UDP socket of ``pid`` (or only those with the given inodes)."""
    wanted = socket_inodes(pid) if inodes is None else inodes
    found = []
    for table in TABLES:
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            inode = int(fields[9])
            if inode not in wanted:
                continue
            host, port = fields[1].split(":")
            found.append(InetSocket(table, _address(host), int(port, 16), fields[3], inode))
    return found


def inode_of(fileno: int) -> int:
    return os.fstat(fileno).st_ino
