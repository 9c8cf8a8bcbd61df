"""Run a command under a unit's sandbox as systemd would build it, without systemd as PID 1.

python -m tests.deploy.sandbox --unit receiver --tree DIR --uid N --gid N -- COMMAND...

What is reproduced, from the unit's own settings: LoadCredential=/SetCredential=
($CREDENTIALS_DIRECTORY), a private mount namespace with everything read-only except the
StateDirectory=/LogsDirectory= (ProtectSystem=strict), ProtectHome=, /proc with
hidepid=invisible and subset=pid (ProtectProc=, ProcSubset=), PrivateNetwork=, UMask=,
User=/Group= (mail_api does not exist here: the caller picks the ids), an empty
CapabilityBoundingSet=, NoNewPrivileges=, and the seccomp filters of
MemoryDenyWriteExecute=, RestrictAddressFamilies= and SystemCallFilter= (the groups as this
machine's systemd-analyze expands them). The rest (PrivateDevices=, PrivateTmp=,
PrivateUsers=, RestrictNamespaces=, ...) is not reproduced.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.deploy.units import Unit, service

CLONE_NEWNS, CLONE_NEWNET = 0x00020000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
MOUNT_OPTIONS = {"ro": MS_RDONLY, "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC,
                 "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
                 "strictatime": MS_STRICTATIME}
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SCMP_ACT_KILL_PROCESS, SCMP_ACT_ALLOW = 0x80000000, 0x7FFF0000
SCMP_CMP_LT, SCMP_CMP_EQ, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 2, 4, 6, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 2, 4, 0o100000
API_FILESYSTEMS = ("/proc", "/sys", "/dev")
HOME_DIRECTORIES = ("/home", "/root", "/run/user")

libc = ctypes.CDLL(None, use_errno=True)


class ArgumentComparison(ctypes.Structure):
    """libseccomp's struct scmp_arg_cmp."""

    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def check(result: int, what: str) -> None:
    if result < 0:
        number = ctypes.get_errno()
        raise OSError(number, f"{what}: {os.strerror(number)}")


def encoded(value: str | None) -> bytes | None:
    return value.encode() if value is not None else None


def mount(source: str | None, target: str, fstype: str | None, flags: int,
          data: str | None = None) -> None:
    check(libc.mount(encoded(source), target.encode(), encoded(fstype), ctypes.c_ulong(flags),
                     encoded(data)), f"mount {target}")


def mounts() -> Iterator[tuple[str, int]]:
    """Every mount point of this namespace with its per-mount flags."""
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        point = fields[4].encode().decode("unicode_escape")  # \040 and friends
        flags = sum(MOUNT_OPTIONS.get(option, 0) for option in fields[5].split(","))
        yield point, flags


def is_under(path: str, parents: tuple[str, ...]) -> bool:
    return any(path == parent or path.startswith(parent + "/") for parent in parents)


def tree_path(tree: Path, path: str) -> Path:
    return tree / path.lstrip("/")


def yes(unit: Unit, key: str) -> bool:
    return unit.service(key) in ("yes", "true", "1", "on")


def prepare_credentials(unit: Unit, tree: Path, uid: int, gid: int) -> Path | None:
    """$CREDENTIALS_DIRECTORY: each LoadCredential= file, or its SetCredential= default."""
    defaults = dict(line.split(":", 1) for line in unit.values("Service", "SetCredential"))
    loads = [line.split(":", 1) for line in unit.values("Service", "LoadCredential")]
    if not loads and not defaults:
        return None
    directory = tree / "run/credentials" / unit.name
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for credential, source in loads:
        path = tree_path(tree, source)
        if path.exists():
            data = path.read_bytes()
        else:
            assert credential in defaults, f"{unit.name}: {source} missing, no default"
            data = defaults[credential].encode().decode("unicode_escape").encode()
        (directory / credential).write_bytes(data)
        os.chown(directory / credential, uid, gid)
        os.chmod(directory / credential, 0o400)
    os.chown(directory, uid, gid)
    os.chmod(directory, 0o500)
    return directory


def bring_up_loopback() -> None:
    """A fresh network namespace has its loopback down; systemd's PrivateNetwork= brings it up."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sh22x", b"lo", 0)  # struct ifreq: name, flags
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def build_namespace(unit: Unit, tree: Path) -> None:
    flags = CLONE_NEWNS | (CLONE_NEWNET if yes(unit, "PrivateNetwork") else 0)
    check(libc.unshare(flags), "unshare")
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    if yes(unit, "PrivateNetwork"):
        bring_up_loopback()
    if yes(unit, "ProtectHome"):
        # Empty, and read-only below. The one exception: this machine's interpreter lives
        # in /root (pyenv); the installed venv uses /usr/bin/python3, outside these paths.
        keep = sys.base_prefix if is_under(sys.base_prefix, HOME_DIRECTORIES) else None
        keep_fd = os.open(keep, os.O_PATH | os.O_DIRECTORY) if keep else None
        for home in HOME_DIRECTORIES:
            if os.path.isdir(home):
                mount("tmpfs", home, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        if keep is not None and keep_fd is not None:
            os.makedirs(keep)
            mount(f"/proc/self/fd/{keep_fd}", keep, None, MS_BIND | MS_REC)
            os.close(keep_fd)
    writable = [str(tree_path(tree, f"/var/lib/{unit.service('StateDirectory')}"))]
    if unit.service("LogsDirectory"):
        writable.append(str(tree_path(tree, f"/var/log/{unit.service('LogsDirectory')}")))
    for directory in writable:
        mount(directory, directory, None, MS_BIND | MS_REC)
    if unit.service("ProtectProc") or unit.service("ProcSubset"):
        options = [f"hidepid={unit.service('ProtectProc') or 'default'}",
                   f"subset={unit.service('ProcSubset') or 'all'}"]
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, ",".join(options))
    assert unit.service("ProtectSystem") == "strict", "only strict is reproduced"
    for point, flags in list(mounts()):
        if flags & MS_RDONLY or point in writable or is_under(point, API_FILESYSTEMS):
            continue
        mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | flags)


def drop_privileges(unit: Unit, uid: int, gid: int) -> None:
    if unit.service("CapabilityBoundingSet") == "":
        capability = 0
        while libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) == 0:
            capability += 1
        assert ctypes.get_errno() == errno.EINVAL, "could not empty the bounding set"
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if yes(unit, "NoNewPrivileges"):
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def expand_groups() -> dict[str, set[str]]:
    """systemd's system call groups, nested groups resolved, as this systemd knows them."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                             text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())

    def resolve(name: str) -> set[str]:
        if not name.startswith("@"):
            return {name}
        return set().union(*(resolve(member) for member in groups[name]))

    return {name: resolve(name) for name in groups}


def allowed_system_calls(unit: Unit) -> set[str]:
    """SystemCallFilter= lines applied in order: an allow-list, then ~ removals."""
    groups = expand_groups()
    allowed: set[str] = set()
    for line in unit.values("Service", "SystemCallFilter"):
        removing = line.startswith("~")
        names = set().union(*(groups[item] if item.startswith("@") else {item}
                              for item in line.lstrip("~").split()))
        if removing:
            allowed -= names
        else:
            allowed |= names | (groups["@default"] if not allowed else set())
    return allowed


class Filter:
    """One libseccomp filter; each loaded filter applies on top of the earlier ones."""

    seccomp = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2",
                          use_errno=True)

    def __init__(self, default_action: int) -> None:
        self.seccomp.seccomp_init.restype = ctypes.c_void_p
        self.context = ctypes.c_void_p(self.seccomp.seccomp_init(ctypes.c_uint32(default_action)))
        assert self.context.value, "seccomp_init failed"

    def add(self, action: int, name: str, *comparisons: tuple[int, int, int, int]) -> None:
        number = self.seccomp.seccomp_syscall_resolve_name(name.encode())
        if number == -1:
            return  # unknown to this libseccomp: systemd skips it too
        array = (ArgumentComparison * max(1, len(comparisons)))(
            *(ArgumentComparison(*comparison) for comparison in comparisons))
        result = self.seccomp.seccomp_rule_add_array(
            self.context, ctypes.c_uint32(action), number, len(comparisons), array)
        if result < 0 and result != -errno.EDOM:  # EDOM: not a call on this architecture
            raise OSError(-result, f"seccomp rule for {name}")

    def load(self) -> None:
        check(self.seccomp.seccomp_load(self.context), "seccomp_load")
        self.seccomp.seccomp_release(self.context)


def errno_action(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


def load_filters(unit: Unit, system_calls: set[str]) -> None:
    if yes(unit, "MemoryDenyWriteExecute"):
        # The rules systemd installs: no mapping both writable and executable, no
        # executable permission added later, no executable SysV shared memory.
        memory = Filter(SCMP_ACT_ALLOW)
        both = PROT_WRITE | PROT_EXEC
        memory.add(errno_action(errno.EPERM), "mmap", (2, SCMP_CMP_MASKED_EQ, both, both))
        for name in ("mprotect", "pkey_mprotect"):
            memory.add(errno_action(errno.EPERM), name,
                       (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        memory.add(errno_action(errno.EPERM), "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        memory.load()
    families = unit.service("RestrictAddressFamilies")
    if families:
        allowed = sorted(int(getattr(socket, family)) for family in families.split())
        refuse = errno_action(errno.EAFNOSUPPORT)
        sockets = Filter(SCMP_ACT_ALLOW)
        sockets.add(refuse, "socket", (0, SCMP_CMP_LT, allowed[0], 0))
        sockets.add(refuse, "socket", (0, SCMP_CMP_GT, allowed[-1], 0))
        for family in range(allowed[0] + 1, allowed[-1]):
            if family not in allowed:
                sockets.add(refuse, "socket", (0, SCMP_CMP_EQ, family, 0))
        sockets.load()
    if system_calls:
        # Last: the allow-list does not include seccomp() itself.
        calls = Filter(SCMP_ACT_KILL_PROCESS)
        for name in sorted(system_calls):
            calls.add(SCMP_ACT_ALLOW, name)
        calls.load()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.deploy.sandbox")
    parser.add_argument("--unit", required=True, help="receiver, worker, panel or migrate")
    parser.add_argument("--tree", required=True, type=Path, help="the temporary root")
    parser.add_argument("--uid", required=True, type=int, help="stands in for mail_api")
    parser.add_argument("--gid", required=True, type=int)
    parser.add_argument("command", nargs="+")
    arguments = parser.parse_args()
    unit = service(arguments.unit)
    system_calls = (allowed_system_calls(unit) if unit.values("Service", "SystemCallFilter")
                    else set())
    credentials = prepare_credentials(unit, arguments.tree, arguments.uid, arguments.gid)
    if credentials is not None:
        os.environ["CREDENTIALS_DIRECTORY"] = str(credentials)
    build_namespace(unit, arguments.tree)
    os.umask(int(unit.service("UMask") or "0022", 8))
    os.chdir("/")  # WorkingDirectory= unset
    drop_privileges(unit, arguments.uid, arguments.gid)
    load_filters(unit, system_calls)
    os.execv(arguments.command[0], arguments.command)  # noqa: S606 - as systemd execs it


if __name__ == "__main__":
    main()
