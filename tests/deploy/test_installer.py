"""scripts/install-system.sh and uninstall-system.sh, run for real into a throwaway root."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailapi.config import load_config, secret_path

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install-system.sh"
UNINSTALL = REPO / "scripts" / "uninstall-system.sh"
UNITS = ("mail-api-migrate.service", "mail-api-receiver.service", "mail-api-worker.service",
         "mail-api-panel.service", "mail-api.target")
EXECUTABLES = ("mailapi", "mailapi-receiver", "mailapi-worker", "mailapi-panel")
SMTP_PASSWORD = "s3cret upstream pass"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the installer runs as root"),
    # Building the wheelhouse and a venv takes about 30 s on a quiet machine; a loaded one
    # (the whole suite on 2 cores) can double that.
    pytest.mark.timeout(300),
]


def run(*command: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=REPO)


def project_copy(destination: Path) -> Path:
    """pyproject.toml, README.md and the packages: what a wheel is built from."""
    destination.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, destination / name)
    for package in ("mailapi", "receiver", "worker", "panel", "migrations"):
        shutil.copytree(REPO / package, destination / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    return destination


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runtime dependencies at their locked versions, plus setuptools to build with.

    Built once from the index pip is configured with (as `make install` uses it); the
    installer then runs with --wheelhouse, i.e. --no-index: offline, and quick.
    """
    base = tmp_path_factory.mktemp("wheelhouse")
    wheels = base / "wheels"
    built = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                "--constraint", REPO / "requirements.lock", "--wheel-dir", wheels,
                project_copy(base / "src"), "setuptools")
    assert built.returncode == 0, built.stderr
    for wheel in wheels.glob("mail_api-*.whl"):
        wheel.unlink()  # the installer builds the project from --source itself
    return wheels


def staging_root() -> Path:
    # mail_api runs the migration inside the root, so the root must be searchable by it,
    # which pytest's 0700 base folder is not.
    root = Path(tempfile.mkdtemp(prefix="mail-api-root-"))
    root.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def installed(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = staging_root()
    password = tmp_path_factory.mktemp("secrets") / "smtp-password"
    password.write_text(SMTP_PASSWORD + "\n", encoding="utf-8")
    result = run(INSTALL, "--root", root, "--source", REPO, "--wheelhouse", wheelhouse,
                 "--smtp-password-file", password)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "migrated from empty to" in result.stdout
    yield root
    shutil.rmtree(root, ignore_errors=True)


def service_ids(root: Path) -> tuple[int, int]:
    for line in (root / "etc/passwd").read_text().splitlines():
        name, _, uid, gid, _, home, shell = line.split(":")
        if name == "mail_api":
            assert (home, shell) == ("/var/lib/mail_api", "/usr/sbin/nologin")
            assert int(uid) < 1000  # a system user
            return int(uid), int(gid)
    raise AssertionError(f"no mail_api in {root}/etc/passwd")


def has(path: Path, mode: int, uid: int = 0, gid: int = 0) -> bool:
    info = path.lstat()
    found = (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid)
    assert found == (mode, uid, gid), f"{path}: {found[0]:o} {found[1]}:{found[2]}"
    return True


def as_service(root: Path, *command: str | Path) -> subprocess.CompletedProcess[str]:
    uid, gid = service_ids(root)
    return run("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *command)


def check_database(root: Path) -> subprocess.CompletedProcess[str]:
    """`mailapi db check` from the installed venv, as mail_api, on the root's database."""
    config = root / "check.toml"  # inside the root: mail_api can read it there
    config.write_text(f'[database]\npath = "{root}/var/lib/mail_api/mail-api.sqlite3"\n')
    config.chmod(0o644)
    return as_service(root, root / "opt/mail_api/venv/bin/mailapi", "--config", config,
                      "db", "check")


def test_every_file_lands_with_its_owner_and_mode(installed: Path) -> None:
    root = installed
    uid, gid = service_ids(root)
    assert f"mail_api:x:{gid}:" in (root / "etc/group").read_text()
    for unit in UNITS:
        path = root / "etc/systemd/system" / unit
        assert has(path, 0o644) and path.read_text() == (REPO / "systemd" / unit).read_text()
    wants = root / "etc/systemd/system/multi-user.target.wants/mail-api.target"
    assert os.readlink(wants) == "/etc/systemd/system/mail-api.target"
    for installed_as, shipped in (("usr/lib/sysusers.d/mail-api.conf", "mail-api.sysusers.conf"),
                                  ("usr/lib/tmpfiles.d/mail-api.conf", "mail-api.tmpfiles.conf")):
        path = root / installed_as
        assert has(path, 0o644) and path.read_text() == (REPO / "systemd" / shipped).read_text()
    # tmpfiles.d folders, then what the installer put in them.
    assert has(root / "var/lib/mail_api", 0o700, uid, gid)
    assert has(root / "var/log/mail_api", 0o750, uid, gid)
    assert has(root / "etc/mail_api", 0o750, 0, gid)
    assert has(root / "etc/mail_api/credentials", 0o700)
    assert has(root / "etc/mail_api/tls", 0o700)
    config = root / "etc/mail_api/mail-api.toml"
    assert has(config, 0o640, 0, gid)
    example = (REPO / "etc/mail-api.toml.example").read_text()
    assert config.read_text().startswith(example)
    assert 'smtp_password_file = "credential:smtp-password"' in config.read_text()
    assert "webhook_secret_file" not in config.read_text().removeprefix(example)
    password = root / "etc/mail_api/credentials/smtp-password"
    assert has(password, 0o600) and password.read_text() == SMTP_PASSWORD + "\n"
    # No secret was given for the webhook: no (empty) file stands in for one.
    assert not (root / "etc/mail_api/credentials/webhook-secret").exists()
    assert has(root / "var/lib/mail_api/mail-api.sqlite3", 0o600, uid, gid)
    site = root / "etc/nginx/sites-available/mail-api.conf"
    assert has(site, 0o644) and site.read_text() == (REPO / "etc/nginx/mail-api.conf").read_text()
    assert not (root / "etc/nginx/sites-enabled/mail-api.conf").exists()  # not enabled
    wrapper = root / "usr/local/sbin/mailapi"
    assert has(wrapper, 0o755) and "runuser -u mail_api" in wrapper.read_text()
    assert run("sh", "-n", wrapper).returncode == 0
    assert has(root / "opt/mail_api", 0o755)
    for name in ("README.md", "docs/operations.md", "etc/mail-api.toml.example",
                 "etc/nginx/mail-api.conf"):
        assert has(root / "opt/mail_api" / name, 0o644)
    for executable in EXECUTABLES:
        assert has(root / "opt/mail_api/venv/bin" / executable, 0o755)
    for path in (root / "opt/mail_api").rglob("*"):  # root's, and nobody else can write
        info = path.lstat()
        assert info.st_uid == 0 and (stat.S_ISLNK(info.st_mode)
                                     or not info.st_mode & 0o022), path


def test_every_credential_a_unit_loads_exists_or_has_a_default(installed: Path) -> None:
    for unit in UNITS:
        text = (installed / "etc/systemd/system" / unit).read_text()
        for line in text.splitlines():
            if line.startswith("LoadCredential="):
                name, source = line.removeprefix("LoadCredential=").split(":", 1)
                assert (installed / source.lstrip("/")).exists() or (
                    f"SetCredential={name}:" in text), (unit, line)


def test_the_venv_holds_the_runtime_dependencies_at_their_locked_versions(
        installed: Path) -> None:
    listing = run(installed / "opt/mail_api/venv/bin/python", "-m", "pip", "list",
                  "--format=json", "--disable-pip-version-check")
    assert listing.returncode == 0, listing.stderr
    versions = {p["name"].lower(): p["version"] for p in json.loads(listing.stdout)}
    locked = dict(line.lower().split("==") for line in
                  (REPO / "requirements.lock").read_text().split() if "==" in line)
    assert versions.pop("mail-api") == "0.1.0"
    for tool in ("pytest", "mypy", "ruff", "playwright", "hypothesis", "httpx"):
        assert tool not in versions  # test tools stay out of production
    for name in ("starlette", "hypercorn", "sqlalchemy", "alembic", "aiosmtplib"):
        assert versions[name] == locked[name]
    for name, version in versions.items():
        if name in locked:
            assert version == locked[name], name


def test_the_migration_ran_as_mail_api_and_the_venv_runs_for_it(
        installed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check = check_database(installed)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "integrity: ok" in check.stdout and "status:    ok" in check.stdout
    credentials = installed / "etc/mail_api/credentials"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    # The installed config is the example plus [secrets], and it loads.
    config = load_config(installed / "etc/mail_api/mail-api.toml")
    assert config.secrets.smtp_password_file is not None
    assert (secret_path(config.secrets.smtp_password_file, "smtp_password")
            == credentials / "smtp-password")
    assert str(config.database.path) == "/var/lib/mail_api/mail-api.sqlite3"


def test_second_run_upgrades_in_place_then_uninstall_keeps_data_and_purge_removes_it(
        installed: Path, wheelhouse: Path) -> None:
    root = installed
    config = root / "etc/mail_api/mail-api.toml"
    site = root / "etc/nginx/sites-available/mail-api.conf"
    with config.open("a") as handle:
        handle.write("# the operator's own line\n")
    site.write_text(site.read_text().replace("mail-api.example.com", "relay.example.org"))
    again = run(INSTALL, "--root", root, "--source", REPO, "--wheelhouse", wheelhouse,
                "--enable-nginx")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already at revision" in again.stdout
    assert config.read_text().endswith("# the operator's own line\n")  # never overwritten
    assert "relay.example.org" in site.read_text()
    assert os.readlink(root / "etc/nginx/sites-enabled/mail-api.conf") == (
        "/etc/nginx/sites-available/mail-api.conf")
    uid, gid = service_ids(root)
    assert has(root / "var/lib/mail_api/mail-api.sqlite3", 0o600, uid, gid)

    removed = run(UNINSTALL, "--root", root)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    for gone in ("opt/mail_api", "usr/local/sbin/mailapi", "usr/lib/sysusers.d/mail-api.conf",
                 "usr/lib/tmpfiles.d/mail-api.conf", "etc/nginx/sites-available/mail-api.conf",
                 "etc/nginx/sites-enabled/mail-api.conf",
                 "etc/systemd/system/multi-user.target.wants/mail-api.target",
                 *(f"etc/systemd/system/{unit}" for unit in UNITS)):
        assert not os.path.lexists(root / gone), gone
    for kept in ("var/lib/mail_api/mail-api.sqlite3", "var/log/mail_api",
                 "etc/mail_api/mail-api.toml", "etc/mail_api/credentials/smtp-password"):
        assert (root / kept).exists(), kept
    assert service_ids(root) == (uid, gid)

    purged = run(UNINSTALL, "--root", root, "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    for gone in ("var/lib/mail_api", "var/log/mail_api", "etc/mail_api"):
        assert not (root / gone).exists(), gone
    assert "mail_api" not in (root / "etc/passwd").read_text()
    assert "mail_api" not in (root / "etc/group").read_text()


def test_refusals_are_clear_and_change_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    empty = tmp_path / "empty"
    empty.write_text("")
    refused = run(INSTALL, "--root", root, "--smtp-password-file", empty)
    assert refused.returncode == 1
    assert "must hold exactly one non-empty line" in refused.stderr
    assert list(root.iterdir()) == []
    unknown = run(INSTALL, "--frobnicate")
    assert unknown.returncode == 1 and "unknown option: --frobnicate" in unknown.stderr
    as_nobody = run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                    "bash", INSTALL, "--root", root)
    assert as_nobody.returncode == 1 and "must run as root" in as_nobody.stderr
