-- wrk script of `make bench-api` (tests/bench/api_bench.py): POST /v1/packs with a JSON
-- body, the Bearer keys of the file named by PACKLINE_BENCH_KEYS in turn (one a line),
-- and, when PACKLINE_BENCH_IDEMPOTENCY is 1, a new Idempotency-Key on every request.
-- At the end one line `RESULT {json}` for the bench to read.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  keys = {}
  for line in io.lines(os.getenv("PACKLINE_BENCH_KEYS")) do
    keys[#keys + 1] = line
  end
  run = os.getenv("PACKLINE_BENCH_RUN") or "run"
  idempotent = os.getenv("PACKLINE_BENCH_IDEMPOTENCY") == "1"
  body = '{"product": {"name": "Bench bottle", "description": "750 ml", "features": ["cold 24 h"]}}'
  sent = 0
  statuses = {}
end

function request()
  sent = sent + 1
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. keys[sent % #keys + 1]}
  if idempotent then
    headers["Idempotency-Key"] = run .. "-" .. tid .. "-" .. sent
  end
  return wrk.format("POST", "/v1/packs", headers, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[#counts + 1] = string.format('[%d, %d]', status, n)
    end
  end
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, "statuses": [%s]}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.timeout, table.concat(counts, ", ")))
end
