"""Exec a command under a seccomp filter like systemd's `SystemCallFilter=@system-service`,
`SystemCallErrorNumber=EPERM` and `RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6`.

Run by `emulate.sh` with Debian's python3 and its `python3-seccomp`; the system calls of
`@system-service` are the ones `systemd-analyze syscall-filter` lists, groups expanded.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import seccomp  # type: ignore[import-not-found]

ALLOWED_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)


def expand(group: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of a systemd group such as `@system-service`."""
    seen = set() if seen is None else seen
    if group in seen:
        return set()
    seen.add(group)
    listed = subprocess.run(
        ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout.splitlines()[1:]
    names: set[str] = set()
    for line in (line.strip() for line in listed):
        if line.startswith("@"):
            names |= expand(line, seen)
        elif line and not line.startswith("#"):
            names.add(line)
    return names


def main() -> None:
    names = expand("@system-service") - {"socket"}
    sandbox = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
    unknown = 0
    for name in sorted(names):
        try:
            sandbox.add_rule(seccomp.ALLOW, name)
        except (ValueError, RuntimeError, OSError):
            unknown += 1  # not a system call of this architecture
    for family in ALLOWED_FAMILIES:
        sandbox.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, family))
    refused = seccomp.ERRNO(errno.EAFNOSUPPORT)
    for family in range(max(ALLOWED_FAMILIES)):
        if family not in ALLOWED_FAMILIES:
            sandbox.add_rule(refused, "socket", seccomp.Arg(0, seccomp.EQ, family))
    sandbox.add_rule(refused, "socket", seccomp.Arg(0, seccomp.GT, max(ALLOWED_FAMILIES)))
    sandbox.load()
    print(f"seccomp: {len(names) - unknown} system calls allowed", file=sys.stderr)
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
