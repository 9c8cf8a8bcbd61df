#!/usr/bin/env bash
# Remove what scripts/install-system.sh installed: stop and disable mail-api.target, remove
# the units, /opt/mail_api, the sysusers/tmpfiles entries, the nginx site and the mailapi
# command. The database, the logs, /etc/mail_api (config, credentials, TLS) and the
# mail_api user stay unless --purge is given.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/uninstall-system.sh [--root DIR] [--purge]        (as root)

  --root DIR   uninstall from a staging root made with install-system.sh --root DIR
  --purge      also delete /var/lib/mail_api (the database), /var/log/mail_api,
               /etc/mail_api (config, credentials, TLS files) and the mail_api user
  -h, --help   this text
EOF
}

PROGRAM=uninstall-system
die() { echo "$PROGRAM: error: $*" >&2; exit 1; }
say() { echo "$PROGRAM: $*"; }

SERVICE_USER=mail_api
UNITS=(mail-api-migrate.service mail-api-receiver.service mail-api-worker.service
       mail-api-panel.service mail-api.target)
UNIT_DIR=/etc/systemd/system
NGINX_SITE=/etc/nginx/sites-available/mail-api.conf
NGINX_LINK=/etc/nginx/sites-enabled/mail-api.conf
REMOVED=(/opt/mail_api /usr/local/sbin/mailapi /usr/lib/sysusers.d/mail-api.conf
         /usr/lib/tmpfiles.d/mail-api.conf "$NGINX_SITE")
DATA=(/var/lib/mail_api /var/log/mail_api /etc/mail_api)

ROOT=""
PURGE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --root) [ $# -ge 2 ] || die "--root needs a folder"; ROOT=$2; shift 2 ;;
    --purge) PURGE=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done
[ "$(id -u)" -eq 0 ] || die "must run as root: sudo $0 $*"
if [ -n "$ROOT" ]; then
  ROOT=$(cd "$ROOT" 2>/dev/null && pwd -P) || die "--root folder not found"
  [ "$ROOT" != / ] || ROOT=""
fi
LIVE_SYSTEMD=0
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then LIVE_SYSTEMD=1; fi

# ---------------------------------------------------------------- stop, disable, remove units
installed_units=()
for unit in "${UNITS[@]}"; do
  [ -e "$ROOT$UNIT_DIR/$unit" ] && installed_units+=("$unit")
done
if [ ${#installed_units[@]} -gt 0 ]; then
  if [ "$LIVE_SYSTEMD" -eq 1 ]; then
    say "stopping and disabling mail-api.target"
    systemctl disable --now --quiet "${installed_units[@]}" || true
    systemctl stop "${installed_units[@]}" || true
  else
    systemctl --root="${ROOT:-/}" disable --quiet "${installed_units[@]}"
    say "disabled mail-api.target offline (systemctl --root=${ROOT:-/})"
  fi
  for unit in "${installed_units[@]}"; do rm -f "$ROOT$UNIT_DIR/$unit"; done
  # Drop-ins an operator added with `systemctl edit` belong to the units too.
  for unit in "${installed_units[@]}"; do rm -rf "$ROOT$UNIT_DIR/$unit.d"; done
  rmdir "$ROOT$UNIT_DIR/mail-api.target.wants" 2>/dev/null || true
  if [ "$LIVE_SYSTEMD" -eq 1 ]; then
    systemctl daemon-reload
    systemctl reset-failed "${installed_units[@]}" 2>/dev/null || true
  fi
  say "removed the units from $UNIT_DIR"
fi

# ---------------------------------------------------------------- nginx, software
if [ -L "$ROOT$NGINX_LINK" ] || [ -e "$ROOT$NGINX_LINK" ]; then
  rm -f "$ROOT$NGINX_LINK"
  say "disabled the nginx site ($NGINX_LINK)"
  if [ "$LIVE_SYSTEMD" -eq 1 ] && systemctl is-active --quiet nginx; then
    systemctl reload nginx
  fi
fi
for path in "${REMOVED[@]}"; do
  if [ -e "$ROOT$path" ]; then
    rm -rf -- "$ROOT$path"
    say "removed $path"
  fi
done

# ---------------------------------------------------------------- data
if [ "$PURGE" -eq 0 ]; then
  for path in "${DATA[@]}"; do
    [ -e "$ROOT$path" ] && say "kept $path (--purge deletes it)"
  done
  say "kept the $SERVICE_USER user (--purge deletes it)"
  exit 0
fi
for path in "${DATA[@]}"; do
  if [ -e "$ROOT$path" ]; then
    rm -rf -- "$ROOT$path"
    say "deleted $path"
  fi
done
# The user goes last: nothing it owned in the known places is left.
user_args=()
[ -z "$ROOT" ] || user_args=(--root "$ROOT")
passwd_file="$ROOT/etc/passwd"
group_file="$ROOT/etc/group"
if grep -q "^$SERVICE_USER:" "$passwd_file" 2>/dev/null; then
  userdel "${user_args[@]}" "$SERVICE_USER"
  say "deleted the $SERVICE_USER user"
fi
if grep -q "^$SERVICE_USER:" "$group_file" 2>/dev/null; then
  groupdel "${user_args[@]}" "$SERVICE_USER"
  say "deleted the $SERVICE_USER group"
fi
