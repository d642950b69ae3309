"""Run a command and report every TCP address this network namespace listened on meanwhile.

    python listening.py OUT.json -- COMMAND...

Polls /proc/net/tcp and tcp6 (per namespace) every 20 ms while COMMAND runs; writes
{"returncode": ..., "listening": ["127.0.0.1", ...]} to OUT.json.
"""

import json
import socket
import subprocess
import sys
import time


def _addr(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


def listening() -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                found.add(_addr(fields[1].split(":")[0]))
    return found


out, command = sys.argv[1], sys.argv[sys.argv.index("--") + 1 :]
proc = subprocess.Popen(command)
seen: set[str] = set()
while proc.poll() is None:
    seen |= listening()
    time.sleep(0.02)
with open(out, "w") as f:
    json.dump({"returncode": proc.returncode, "listening": sorted(seen)}, f)
