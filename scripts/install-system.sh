#!/usr/bin/env bash
# Install MAIL_API on this Debian-like host, or stage it into a throwaway root (--root DIR):
# the mail_api user, /opt/mail_api with its own virtual environment, the systemd units and
# sysusers/tmpfiles entries, the nginx site, /etc/mail_api/mail-api.toml (only if absent),
# the schema migration (as mail_api), and mail-api.target enabled at boot. Running it again
# upgrades in place. docs/operations.md describes every step and the choices made here.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/install-system.sh [options]        (as root)

  --root DIR                  install into DIR instead of / (a staging or test root): users
                              go into DIR/etc/passwd, units are enabled offline, nothing is
                              started; the venv under DIR is bound to that path
  --source DIR                the MAIL_API source tree (default: this script's checkout)
  --wheelhouse DIR            install dependencies only from the wheels in DIR (pip
                              --no-index --find-links DIR), for hosts without an index;
                              DIR must also hold setuptools to build the project
  --python PATH               interpreter for the venv (default: /usr/bin/python3, 3.11+)
  --webhook-secret-file FILE  install FILE as the webhook-secret credential (0600)
  --smtp-password-file FILE   install FILE as the smtp-password credential (0600)
  --enable-nginx              link the nginx site into sites-enabled (and test + reload nginx)
  -h, --help                  this text
EOF
}

PROGRAM=install-system
die() {
  echo "$PROGRAM: error: $*" >&2
  if [ "${RESTART:-0}" -eq 1 ]; then
    echo "$PROGRAM: mail-api.target was stopped for the upgrade and is still stopped" >&2
  fi
  exit 1
}
say() { echo "$PROGRAM: $*"; }
skip() { echo "$PROGRAM: skipped: $*"; }

# The fixed layout (the units name these paths).
SERVICE_USER=mail_api
PREFIX=/opt/mail_api
VENV=$PREFIX/venv
CONF_DIR=/etc/mail_api
CONFIG=$CONF_DIR/mail-api.toml
CREDENTIALS=$CONF_DIR/credentials
TLS_DIR=$CONF_DIR/tls
UNIT_DIR=/etc/systemd/system
SYSUSERS=/usr/lib/sysusers.d/mail-api.conf
TMPFILES=/usr/lib/tmpfiles.d/mail-api.conf
NGINX_SITE=/etc/nginx/sites-available/mail-api.conf
NGINX_LINK=/etc/nginx/sites-enabled/mail-api.conf
WRAPPER=/usr/local/sbin/mailapi
UNITS=(mail-api-migrate.service mail-api-receiver.service mail-api-worker.service
       mail-api-panel.service mail-api.target)
PACKAGES=(mailapi receiver worker panel migrations)

ROOT=""
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELHOUSE=""
PYTHON=/usr/bin/python3
WEBHOOK_SECRET_FILE=""
SMTP_PASSWORD_FILE=""
ENABLE_NGINX=0

while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT=$2; shift 2 ;;
    --source) [ $# -ge 2 ] || die "--source needs a folder"; SOURCE=$2; shift 2 ;;
    --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a folder"; WHEELHOUSE=$2; shift 2 ;;
    --python) [ $# -ge 2 ] || die "--python needs a path"; PYTHON=$2; shift 2 ;;
    --webhook-secret-file) [ $# -ge 2 ] || die "$1 needs a file"; WEBHOOK_SECRET_FILE=$2; shift 2 ;;
    --smtp-password-file) [ $# -ge 2 ] || die "$1 needs a file"; SMTP_PASSWORD_FILE=$2; shift 2 ;;
    --enable-nginx) ENABLE_NGINX=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

# ---------------------------------------------------------------- preconditions
[ "$(id -u)" -eq 0 ] || die "must run as root (it creates the $SERVICE_USER user and writes \
under /etc, /opt and /usr/lib): sudo $0 $*"
if [ -n "$ROOT" ]; then
  mkdir -p "$ROOT"
  ROOT=$(cd "$ROOT" && pwd -P)
  [ "$ROOT" != / ] || ROOT=""
fi
SOURCE=$(cd "$SOURCE" 2>/dev/null && pwd -P) || die "source folder not found"
for needed in pyproject.toml requirements.lock README.md etc/mail-api.toml.example \
              etc/nginx/mail-api.conf systemd/mail-api.sysusers.conf \
              systemd/mail-api.tmpfiles.conf "${UNITS[@]/#/systemd/}" "${PACKAGES[@]}"; do
  [ -e "$SOURCE/$needed" ] || die "$SOURCE is not a MAIL_API source tree ($needed missing)"
done
[ -z "$WHEELHOUSE" ] || WHEELHOUSE=$(cd "$WHEELHOUSE" 2>/dev/null && pwd -P) \
  || die "wheelhouse folder not found"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: apt-get install python3 python3-venv"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is older than 3.11; MAIL_API needs Python 3.11 or newer"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null \
  || die "$PYTHON cannot create virtual environments: apt-get install python3-venv"
for secret_file in "$WEBHOOK_SECRET_FILE" "$SMTP_PASSWORD_FILE"; do
  [ -z "$secret_file" ] && continue
  [ -r "$secret_file" ] || die "cannot read $secret_file"
  # The processes accept exactly one non-empty line (a trailing newline is allowed).
  { [ "$(wc -l <"$secret_file")" -le 1 ] && head -n 1 "$secret_file" | grep -q . \
      && ! grep -q $'\r' "$secret_file"; } \
    || die "$secret_file must hold exactly one non-empty line (an empty secret is no secret)"
done

LIVE_SYSTEMD=0
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then LIVE_SYSTEMD=1; fi
# Everything installed is world-readable unless made private below, whatever the caller's
# umask: the venv must be readable by mail_api.
umask 022
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
say "installing from $SOURCE into ${ROOT:-/}"

# ---------------------------------------------------------------- stop a running suite
RESTART=0
if [ "$LIVE_SYSTEMD" -eq 1 ] && systemctl is-active --quiet mail-api.target; then
  say "stopping mail-api.target for the upgrade (started again at the end)"
  systemctl stop mail-api.target
  RESTART=1
fi

# ---------------------------------------------------------------- user and directories
install -D -m 0644 -o root -g root "$SOURCE/systemd/mail-api.sysusers.conf" "$ROOT$SYSUSERS"
install -D -m 0644 -o root -g root "$SOURCE/systemd/mail-api.tmpfiles.conf" "$ROOT$TMPFILES"
sysusers() {
  if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT/etc"
    systemd-sysusers --root="$ROOT" "$ROOT$SYSUSERS"
  else
    systemd-sysusers "$SYSUSERS"
  fi
}
if command -v systemd-sysusers >/dev/null && sysusers; then
  :
elif [ -n "$ROOT" ]; then
  die "--root needs a working systemd-sysusers to create $SERVICE_USER in $ROOT/etc/passwd \
(apt-get install systemd, or systemd-standalone-sysusers)"
elif ! getent passwd "$SERVICE_USER" >/dev/null; then
  say "systemd-sysusers is missing or failed: creating $SERVICE_USER with useradd"
  useradd --system --user-group --home-dir /var/lib/mail_api --no-create-home \
    --shell /usr/sbin/nologin --comment "MAIL_API mail relay" "$SERVICE_USER"
fi
if [ -n "$ROOT" ]; then
  SERVICE_UID=$(awk -F: -v u="$SERVICE_USER" '$1 == u {print $3}' "$ROOT/etc/passwd")
  SERVICE_GID=$(awk -F: -v u="$SERVICE_USER" '$1 == u {print $4}' "$ROOT/etc/passwd")
else
  SERVICE_UID=$(id -u "$SERVICE_USER")
  SERVICE_GID=$(id -g "$SERVICE_USER")
fi
if [ -z "$SERVICE_UID" ] || [ -z "$SERVICE_GID" ]; then
  die "user $SERVICE_USER was not created"
fi

if command -v systemd-tmpfiles >/dev/null; then
  if [ -n "$ROOT" ]; then
    systemd-tmpfiles --create --root="$ROOT" "$(basename "$TMPFILES")"
  else
    systemd-tmpfiles --create "$TMPFILES"
  fi
else  # the same four lines as systemd/mail-api.tmpfiles.conf
  say "systemd-tmpfiles not found: creating the folders with install -d"
  install -d -m 0700 -o "$SERVICE_UID" -g "$SERVICE_GID" "$ROOT/var/lib/mail_api"
  install -d -m 0750 -o "$SERVICE_UID" -g "$SERVICE_GID" "$ROOT/var/log/mail_api"
  install -d -m 0750 -o root -g "$SERVICE_GID" "$ROOT$CONF_DIR"
  install -d -m 0700 -o root -g root "$ROOT$CREDENTIALS"
fi
install -d -m 0700 -o root -g root "$ROOT$TLS_DIR"

# ---------------------------------------------------------------- the virtual environment
install -d -m 0755 -o root -g root "$ROOT$PREFIX"
if ! "$ROOT$VENV/bin/python" -c 'import sys' 2>/dev/null; then
  # Absent, or its interpreter is gone (a Python upgrade): build it afresh.
  say "creating $VENV with $PYTHON"
  "$PYTHON" -m venv --clear "$ROOT$VENV"
fi
# Build from a copy, so the source tree gets no build/ or *.egg-info.
mkdir "$WORK/src"
cp -R "$SOURCE/pyproject.toml" "$SOURCE/README.md" "${PACKAGES[@]/#/$SOURCE/}" "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
# The lock pins the test tools too; as constraints (-c) it pins versions without installing
# anything: pip installs the project's runtime dependencies only, each at its locked version.
pip_options=(--disable-pip-version-check --no-input --quiet)
if [ -n "$WHEELHOUSE" ]; then pip_options+=(--no-index --find-links "$WHEELHOUSE"); fi
say "installing MAIL_API and its runtime dependencies into $VENV"
"$ROOT$VENV/bin/python" -m pip install "${pip_options[@]}" --upgrade \
  --upgrade-strategy only-if-needed --constraint "$SOURCE/requirements.lock" "$WORK/src" \
  || die "pip could not install MAIL_API into $ROOT$VENV (see pip's message above)"
for executable in mailapi mailapi-receiver mailapi-worker mailapi-panel; do
  [ -x "$ROOT$VENV/bin/$executable" ] || die "$VENV/bin/$executable was not installed"
done

# Reference copies: the units' Documentation=, and the shipped examples to compare an
# operator's files against after an upgrade.
install -D -m 0644 "$SOURCE/README.md" "$ROOT$PREFIX/README.md"
for doc in "$SOURCE"/docs/*.md; do install -D -m 0644 "$doc" "$ROOT$PREFIX/docs/$(basename "$doc")"; done
install -D -m 0644 "$SOURCE/etc/mail-api.toml.example" "$ROOT$PREFIX/etc/mail-api.toml.example"
install -D -m 0644 "$SOURCE/etc/nginx/mail-api.conf" "$ROOT$PREFIX/etc/nginx/mail-api.conf"

# The admin command for this host: as mail_api (so the -wal/-shm files and backups it
# creates belong to the service), on the installed config. The CLI parses [secrets] but
# never reads them, so the credentials folder only has to be named.
install -d -m 0755 "$ROOT$(dirname "$WRAPPER")"
cat >"$WORK/wrapper" <<EOF
#!/bin/sh
# MAIL_API admin command, installed by scripts/install-system.sh: \`mailapi status\`,
# \`mailapi settings show\`, \`mailapi db backup DEST\`, ... (docs/operations.md).
# Runs $VENV/bin/mailapi as $SERVICE_USER on $CONFIG.
set -eu
if [ "\$(id -u)" -ne 0 ]; then
  echo "mailapi: run as root (sudo mailapi ...); it switches to $SERVICE_USER itself" >&2
  exit 1
fi
cd /
exec runuser -u $SERVICE_USER -- env CREDENTIALS_DIRECTORY=$CREDENTIALS \\
  $VENV/bin/mailapi --config $CONFIG "\$@"
EOF
install -m 0755 -o root -g root "$WORK/wrapper" "$ROOT$WRAPPER"

# ---------------------------------------------------------------- units and nginx site
for unit in "${UNITS[@]}"; do
  install -D -m 0644 -o root -g root "$SOURCE/systemd/$unit" "$ROOT$UNIT_DIR/$unit"
done
# The site holds the operator's server_name and certificate paths: never overwritten.
if [ ! -e "$ROOT$NGINX_SITE" ]; then
  install -D -m 0644 -o root -g root "$SOURCE/etc/nginx/mail-api.conf" "$ROOT$NGINX_SITE"
  say "installed the nginx site $NGINX_SITE (not enabled; see docs/operations.md)"
elif ! cmp -s "$SOURCE/etc/nginx/mail-api.conf" "$ROOT$NGINX_SITE"; then
  say "kept your $NGINX_SITE; the shipped version is $PREFIX/etc/nginx/mail-api.conf"
fi

# ---------------------------------------------------------------- configuration, secrets
install_secret() {  # FILE NAME
  install -m 0600 -o root -g root "$1" "$ROOT$CREDENTIALS/$2"
  say "installed credential $2 ($CREDENTIALS/$2, root 0600)"
}
[ -z "$WEBHOOK_SECRET_FILE" ] || install_secret "$WEBHOOK_SECRET_FILE" webhook-secret
[ -z "$SMTP_PASSWORD_FILE" ] || install_secret "$SMTP_PASSWORD_FILE" smtp-password

if [ ! -e "$ROOT$CONFIG" ]; then
  cp "$SOURCE/etc/mail-api.toml.example" "$WORK/config"
  secrets=()
  [ ! -e "$ROOT$CREDENTIALS/webhook-secret" ] \
    || secrets+=('webhook_secret_file = "credential:webhook-secret"')
  [ ! -e "$ROOT$CREDENTIALS/smtp-password" ] \
    || secrets+=('smtp_password_file = "credential:smtp-password"')
  if [ ${#secrets[@]} -gt 0 ] && ! grep -q '^\[secrets\]' "$WORK/config"; then
    {
      printf '\n[secrets]\n'
      printf '# Added by install-system.sh: systemd passes these files (LoadCredential=).\n'
      printf '%s\n' "${secrets[@]}"
    } >>"$WORK/config"
  fi
  install -m 0640 -o root -g "$SERVICE_GID" "$WORK/config" "$ROOT$CONFIG"
  say "installed $CONFIG from etc/mail-api.toml.example"
else
  say "kept your $CONFIG; the shipped example is $PREFIX/etc/mail-api.toml.example"
fi

# Every credential a unit loads must exist, unless the unit gives a SetCredential= default;
# every credential the config names must exist, or the daemons refuse to start.
declare -A defaulted=()
for unit in "${UNITS[@]}"; do
  while IFS= read -r line; do
    id=${line#LoadCredential=}; id=${id%%:*}
    path=${line#LoadCredential=*:}
    if [ -e "$ROOT$path" ]; then
      continue
    elif grep -q "^SetCredential=$id:" "$ROOT$UNIT_DIR/$unit"; then
      defaulted[$id]=$path
    else
      die "$unit loads credential $id from $path, which does not exist"
    fi
  done < <(grep '^LoadCredential=' "$ROOT$UNIT_DIR/$unit" || true)
done
for id in "${!defaulted[@]}"; do
  say "credential $id: no ${defaulted[$id]} (optional; the units' empty default stands in)"
done
while IFS= read -r name; do
  [ -e "$ROOT$CREDENTIALS/$name" ] || say "warning: $CONFIG names credential:$name but \
$CREDENTIALS/$name does not exist: the daemons will refuse to start until it does"
done < <(grep -v '^[[:space:]]*#' "$ROOT$CONFIG" | grep -o 'credential:[A-Za-z0-9_.-]*' \
           | cut -d: -f2 | sort -u || true)

# ---------------------------------------------------------------- migration
# As mail_api with the units' UMask=0077, so the database and its -wal/-shm files belong
# to the service user and to no one else.
if [ -z "$ROOT" ]; then
  (umask 077 && cd / && runuser -u "$SERVICE_USER" -- env CREDENTIALS_DIRECTORY="$CREDENTIALS" \
     "$VENV/bin/mailapi" --config "$CONFIG" db upgrade) \
    || die "the migration failed (see above); fix it and run the installer again"
else
  # The config's paths are the live system's: migrate the database under ROOT through a
  # throwaway config that names only it.
  chmod 0755 "$WORK"
  "$ROOT$VENV/bin/python" - "$ROOT$CONFIG" "$ROOT" "$WORK/migrate.toml" <<'EOF'
import json, pathlib, sys, tomllib
config, root, out = sys.argv[1:]
database = tomllib.loads(pathlib.Path(config).read_text())["database"]
path = pathlib.Path(database["path"])
path = pathlib.Path(root + str(path)) if path.is_absolute() else pathlib.Path(config).parent / path
lines = [f"path = {json.dumps(str(path))}"]
if "busy_timeout_ms" in database:
    lines.append(f"busy_timeout_ms = {int(database['busy_timeout_ms'])}")
pathlib.Path(out).write_text("[database]\n" + "\n".join(lines) + "\n")
EOF
  chmod 0644 "$WORK/migrate.toml"
  as_service=(setpriv --reuid="$SERVICE_UID" --regid="$SERVICE_GID" --clear-groups --)
  (cd / && "${as_service[@]}" test -x "$ROOT$VENV/bin/mailapi") \
    || die "$SERVICE_USER (uid $SERVICE_UID) cannot reach $ROOT$VENV: make $ROOT and the \
folders above it searchable (chmod o+x) to run the migration in a staging root"
  (umask 077 && cd / && "${as_service[@]}" "$ROOT$VENV/bin/mailapi" \
     --config "$WORK/migrate.toml" db upgrade) \
    || die "the migration failed (see above)"
fi

# ---------------------------------------------------------------- enable, nginx, restart
if [ "$LIVE_SYSTEMD" -eq 1 ]; then
  systemctl daemon-reload
  systemctl enable --quiet mail-api.target
  say "enabled mail-api.target"
else
  # Without a running systemd (a staging root, a container) enabling is only symlinks.
  systemctl --root="${ROOT:-/}" enable --quiet mail-api.target
  say "enabled mail-api.target offline (systemctl --root=${ROOT:-/}); nothing was started"
fi

if [ "$ENABLE_NGINX" -eq 1 ]; then
  if [ -n "$ROOT" ]; then
    install -d -m 0755 "$ROOT$(dirname "$NGINX_LINK")"
    ln -sfn "$NGINX_SITE" "$ROOT$NGINX_LINK"
    skip "nginx -t and reload (staging root); linked $NGINX_LINK"
  else
    command -v nginx >/dev/null || die "--enable-nginx: nginx is not installed (apt-get install nginx)"
    while IFS= read -r file; do
      [ -e "$file" ] || die "--enable-nginx: $file (named in $NGINX_SITE) does not exist; \
put the certificate and key there first"
    done < <(awk '$1 ~ /^ssl_certificate(_key)?$/ {sub(";", "", $2); print $2}' "$NGINX_SITE")
    install -d -m 0755 "$(dirname "$NGINX_LINK")"
    ln -sfn "$NGINX_SITE" "$NGINX_LINK"
    if ! nginx -t; then
      rm -f "$NGINX_LINK"
      die "nginx -t refused the configuration; the site was not enabled"
    fi
    if [ "$LIVE_SYSTEMD" -eq 1 ] && systemctl is-active --quiet nginx; then
      systemctl reload nginx
    fi
    say "enabled the nginx site ($NGINX_LINK)"
  fi
fi

if [ "$RESTART" -eq 1 ]; then
  systemctl start mail-api.target
  say "started mail-api.target again (the migrate unit ran first)"
fi

say "done. Next (docs/operations.md): set the sender domain, SMTP upstream and webhook secret"
say "  (mailapi settings set ...), create the first admin (mailapi admin create NAME"
say "  --password-stdin), then: systemctl start mail-api.target"
