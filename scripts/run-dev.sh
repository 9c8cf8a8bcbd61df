#!/usr/bin/env bash
# `make run`: migrate the development database, give it a random webhook secret, a sender
# domain and a panel admin on first use, then run the receiver, the worker and the control
# panel until Ctrl-C, which stops all three by PID.
set -euo pipefail
config=${1:-etc/dev/mail-api.toml}
bin=.venv/bin
panel_url=http://127.0.0.1:2580/
password_file=var/dev-admin-password
mkdir -p var/outbox var/log
"$bin/mailapi" --config "$config" db upgrade
if [ -z "$("$bin/mailapi" --config "$config" settings get webhook_secret)" ]; then
  "$bin/python" -c 'import secrets; print(secrets.token_hex(32))' \
    | "$bin/mailapi" --config "$config" settings set webhook_secret - >/dev/null
  echo "generated a random webhook secret (stored in var/mail-api.sqlite3)"
fi
if [ -z "$("$bin/mailapi" --config "$config" settings get allowed_sender_domain)" ]; then
  "$bin/mailapi" --config "$config" settings set allowed_sender_domain example.test >/dev/null
  echo "sender domain set to example.test (change: mailapi --config $config settings set allowed_sender_domain ...)"
fi

# The first run creates the development admin and shows its password this once; the file
# (mode 0600) keeps it for later runs, which only say where it is.
admins=$("$bin/mailapi" --config "$config" admin list)
if [[ $admins == "(no admins"* ]]; then
  (umask 077 && "$bin/python" -c 'import secrets; print(secrets.token_urlsafe(18))' \
    >"$password_file")
  "$bin/mailapi" --config "$config" admin create admin --password-file "$password_file" \
    >/dev/null
  login="Control panel $panel_url
  user name: admin
  password:  $(cat "$password_file")   (shown once; kept in $password_file, mode 0600)"
elif [ -f "$password_file" ]; then
  login="Control panel $panel_url  (user admin; the password is in $password_file)"
else
  login="Control panel $panel_url  (log in with an existing admin; reset a password with
  $bin/mailapi --config $config admin password NAME)"
fi

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

"$bin/mailapi-receiver" --config "$config" & pids+=($!)
"$bin/mailapi-worker" --config "$config" & pids+=($!)
"$bin/mailapi-panel" --config "$config" & pids+=($!)

# Print the summary once the panel answers, so it is not lost among the start-up lines.
for _ in $(seq 100); do
  "$bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' \
    "${panel_url}healthz" 2>/dev/null && break
  sleep 0.2
done

cat <<MSG

MAIL_API is running (receiver http://127.0.0.1:2555, worker writing to var/outbox/).
$login

Send a signed test webhook from another terminal:

  $bin/mailapi --config $config webhook send --to you@example.org

then look at var/outbox/*.eml, var/log/delivery.log and the panel. Ctrl-C stops all three.

MSG
wait -n "${pids[@]}"
