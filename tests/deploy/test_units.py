"""systemd accepts the units, their exposure stays low, sysusers/tmpfiles build the layout."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import EXPOSURE_PROPERTY
from tests.deploy.units import DAEMONS, SERVICES, UNIT_DIR, UNIT_FILES, install_root, load, seconds
from worker.main import SHUTDOWN_GRACE_SECONDS

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd's tools are missing (make test installs them)")
MAX_EXPOSURE = 3.0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return install_root(tmp_path_factory.mktemp("root"))


def analyze(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *arguments], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("unit", UNIT_FILES)
def test_verify_accepts_the_unit(root: Path, unit: str) -> None:
    # --recursive-errors=no: any warning about this unit (an unknown key, a value that does
    # not parse, a missing executable) makes the exit status non-zero.
    result = analyze("verify", "--man=no", "--recursive-errors=no", f"--root={root}", unit)
    assert result.returncode == 0, result.stderr
    assert "mail-api" not in result.stderr, result.stderr


def test_verify_catches_a_broken_unit(root: Path) -> None:
    """The check above has teeth: a misspelt key and a bad time span are refused."""
    text = (UNIT_DIR / "mail-api-worker.service").read_text(encoding="utf-8")
    broken = text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes").replace(
        "WatchdogSec=30s", "WatchdogSec=thirty")
    (root / "etc/systemd/system/mail-api-broken.service").write_text(broken, encoding="utf-8")
    try:
        result = analyze("verify", "--man=no", "--recursive-errors=no", f"--root={root}",
                         "mail-api-broken.service")
    finally:
        (root / "etc/systemd/system/mail-api-broken.service").unlink()
    assert result.returncode != 0
    assert "Unknown key" in result.stderr and "thirty" in result.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_security_exposure(root: Path, name: str,
                           record_property: pytest.RecordProperty) -> None:
    unit = f"mail-api-{name}.service"
    # --threshold is in tenths: exit non-zero above an exposure of 3.0.
    result = analyze("security", "--offline=yes", f"--root={root}",
                     f"--threshold={int(MAX_EXPOSURE * 10)}", "--no-pager", unit)
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", result.stdout)
    assert found, result.stdout + result.stderr
    exposure = float(found.group(1))
    record_property(EXPOSURE_PROPERTY, (unit, exposure))
    print(f"{unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE
    assert result.returncode == 0, result.stderr


def test_the_suite_hangs_together() -> None:
    target = load("mail-api.target")
    wanted = " ".join(target.values("Unit", "Wants")).split()
    assert sorted(wanted) == sorted(f"mail-api-{name}.service" for name in SERVICES)
    assert target.get("Install", "WantedBy") == "multi-user.target"
    for name in SERVICES:
        unit = load(f"mail-api-{name}.service")
        assert unit.get("Unit", "PartOf") == "mail-api.target"
        assert unit.get("Install", "WantedBy") == "mail-api.target"
        assert unit.service("User") == unit.service("Group") == "mail_api"
        assert unit.service("StateDirectory") == "mail_api"
        assert unit.service("UMask") == "0077"
    for name in DAEMONS:
        unit = load(f"mail-api-{name}.service")
        assert unit.get("Unit", "Requires") == "mail-api-migrate.service"
        assert "mail-api-migrate.service" in (unit.get("Unit", "After") or "").split()
        assert unit.service("Type") == "notify"
        assert unit.service("RestartPreventExitStatus") == "78"
        # The worker finishes deliveries in flight for its grace period before it exits.
        assert seconds(unit.service("TimeoutStopSec") or "") > SHUTDOWN_GRACE_SECONDS
    migrate = load("mail-api-migrate.service")
    assert migrate.service("Type") == "oneshot"
    assert migrate.service("RemainAfterExit") == "yes"


def passwd_entry(root: Path, database: str, name: str) -> list[str]:
    for line in (root / "etc" / database).read_text(encoding="utf-8").splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} not in {root}/etc/{database}")


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-tmpfiles needs root to set owners")
def test_sysusers_and_tmpfiles_build_the_layout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    result = subprocess.run(["systemd-sysusers", f"--root={root}",
                             str(UNIT_DIR / "mail-api.sysusers.conf")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    user = passwd_entry(root, "passwd", "mail_api")
    group = passwd_entry(root, "group", "mail_api")
    uid, gid = int(user[2]), int(user[3])
    assert uid < 1000 and gid == int(group[2]), "a system user with its own group"
    assert user[4:] == ["MAIL_API mail relay", "/var/lib/mail_api", "/usr/sbin/nologin"]

    # tmpfiles resolves mail_api in the root's /etc/passwd written just above.
    result = subprocess.run(["systemd-tmpfiles", "--create", f"--root={root}",
                             str(UNIT_DIR / "mail-api.tmpfiles.conf")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    expected = {"var/lib/mail_api": (uid, gid, 0o700), "var/log/mail_api": (uid, gid, 0o750),
                "etc/mail_api": (0, gid, 0o750), "etc/mail_api/credentials": (0, 0, 0o700)}
    for path, (owner, group_id, mode) in expected.items():
        status = (root / path).stat()
        assert stat.S_ISDIR(status.st_mode), path
        assert (status.st_uid, status.st_gid, stat.S_IMODE(status.st_mode)) == (
            owner, group_id, mode), path


def test_units_and_tmpfiles_agree_on_modes() -> None:
    """StateDirectory=/LogsDirectory= re-apply their modes at start: the same as tmpfiles."""
    modes = {}
    for line in (UNIT_DIR / "mail-api.tmpfiles.conf").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            _, path, mode, *_ = line.split()
            modes[path] = mode
    for name in SERVICES:
        unit = load(f"mail-api-{name}.service")
        assert unit.service("StateDirectoryMode") == modes["/var/lib/mail_api"]
        if unit.service("LogsDirectory") is not None:
            assert unit.service("LogsDirectoryMode") == modes["/var/log/mail_api"]
