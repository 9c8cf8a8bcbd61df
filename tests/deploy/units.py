"""The shipped systemd unit files, parsed, and their paths mapped into a temporary tree."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

UNIT_DIR = Path(__file__).resolve().parents[2] / "systemd"
DAEMONS = ("receiver", "worker", "panel")
SERVICES = (*DAEMONS, "migrate")
UNIT_FILES = (*(f"mail-api-{name}.service" for name in SERVICES), "mail-api.target")

# The fixed deployment layout the units name, and the host directory standing in for each.
INSTALLED_BIN = "/opt/mail_api/venv/bin"
PROJECT_BIN = Path(sys.executable).parent
CONFIG_PATH = "/etc/mail_api/mail-api.toml"
STATE_DIR = "/var/lib/mail_api"
LOGS_DIR = "/var/log/mail_api"


@dataclass(frozen=True)
class Unit:
    """A unit file as systemd reads it: repeated keys keep every value, in order."""

    name: str
    sections: dict[str, dict[str, list[str]]]

    def values(self, section: str, key: str) -> list[str]:
        return self.sections.get(section, {}).get(key, [])

    def get(self, section: str, key: str) -> str | None:
        values = self.values(section, key)
        return values[-1] if values else None

    def service(self, key: str) -> str | None:
        return self.get("Service", key)

    def command(self, key: str = "ExecStart") -> list[str]:
        """The command line of an Exec*= setting, split the way systemd splits it."""
        line = self.service(key)
        assert line is not None, f"{self.name} has no {key}="
        # Neither prefixes (-, @, +, !) nor specifiers nor $VARIABLES: shlex splits these
        # lines exactly as systemd does.
        assert not re.search(r"^[-@+!:]|%", line), f"{self.name}: {key}= needs a real parser"
        return shlex.split(line)


def load(file_name: str) -> Unit:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in (UNIT_DIR / file_name).read_text(encoding="utf-8").splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"{file_name}: {line!r} before any section"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return Unit(file_name, sections)


def service(name: str) -> Unit:
    return load(f"mail-api-{name}.service")


def seconds(value: str) -> float:
    """A systemd time span such as "30s", "5min", "500ms" or "1min 30s", in seconds."""
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "": 1.0}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def map_command(argv: list[str], tree: Path) -> list[str]:
    """The unit's command line with its installed paths moved into `tree`.

    The executables are the project's own (the directory holding this interpreter); every
    other absolute path of the deployment layout lands at the same place under `tree`.
    """
    return [map_path(argument, tree) for argument in argv]


def map_path(argument: str, tree: Path) -> str:
    if argument.startswith(INSTALLED_BIN + "/"):
        return str(PROJECT_BIN / argument.removeprefix(INSTALLED_BIN + "/"))
    if argument.startswith(("/etc/mail_api/", STATE_DIR, LOGS_DIR)):
        return str(tree / argument.lstrip("/"))
    return argument


def install_root(root: Path) -> Path:
    """A root tree for `systemd-analyze --root=`: the units where the installer puts them.

    The host's own units (sysinit.target, network-online.target, ...) are copied alongside,
    and every executable a unit names is a copy of the real one (absolute symlinks would be
    resolved inside the root).
    """
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for file_name in UNIT_FILES:
        shutil.copy2(UNIT_DIR / file_name, system / file_name)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name in SERVICES:
        unit = service(name)
        for key in ("ExecStart", "ExecReload"):
            if unit.service(key) is None:
                continue
            executable = unit.command(key)[0]
            source = (PROJECT_BIN / Path(executable).name if executable.startswith(INSTALLED_BIN)
                      else Path(executable))
            target = root / executable.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return root
