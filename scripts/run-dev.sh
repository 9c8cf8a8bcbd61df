#!/usr/bin/env bash
# `make run`: migrate the development database, give it a random webhook secret and a sender
# domain on first use, then run the receiver and the worker until Ctrl-C.
set -euo pipefail
config=${1:-etc/dev/mail-api.toml}
bin=.venv/bin
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

pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop INT TERM EXIT

"$bin/mailapi-receiver" --config "$config" & pids+=($!)
"$bin/mailapi-worker" --config "$config" & pids+=($!)

cat <<MSG

MAIL_API is running (receiver http://127.0.0.1:2555, worker writing to var/outbox/).
Send a signed test webhook from another terminal:

  $bin/mailapi --config $config webhook send --to you@example.org

then look at var/outbox/*.eml and var/log/delivery.log. Ctrl-C stops both processes.

MSG
wait -n "${pids[@]}"
