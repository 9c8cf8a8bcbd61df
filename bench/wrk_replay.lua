-- wrk script: replay pre-built, pre-signed raw HTTP requests from a file, each once, in order.
-- Usage: wrk -t1 -cN -dT -s wrk_replay.lua URL -- REQUESTS_FILE
-- The file holds whole requests separated by NUL bytes (HTTP requests never contain one).
-- done() prints one JSON line; "wraps" > 0 means the file ran out and requests repeated.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  requests_list = {}
  local pos = 1
  while true do
    local s = string.find(data, "\0", pos, true)
    if not s then break end
    requests_list[#requests_list + 1] = string.sub(data, pos, s - 1)
    pos = s + 1
  end
  index = 0
  wraps = 0
end

function request()
  index = index + 1
  if index > #requests_list then
    index = 1
    wraps = wraps + 1
  end
  return requests_list[index]
end

function done(summary, latency, requests)
  local wrapped = 0
  for _, thread in ipairs(threads) do
    wrapped = wrapped + (thread:get("wraps") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "errors_connect": %d, ' ..
    '"errors_read": %d, "errors_write": %d, "errors_status": %d, "errors_timeout": %d, ' ..
    '"latency_p50_us": %d, "latency_p90_us": %d, "latency_p99_us": %d, ' ..
    '"latency_max_us": %d, "latency_mean_us": %.1f, "wraps": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean, wrapped))
end
