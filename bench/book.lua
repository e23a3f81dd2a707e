-- wrk script: POST /api/v1/bookings with non-conflicting 15-minute bookings.
--
--   wrk -t2 -c16 -d15s --latency -s bench/book.lua http://127.0.0.1:PORT -- TOKEN BASE_EPOCH SPAN_DAYS ID1,ID2,...
--
-- Every thread books its own block of SPAN_DAYS days starting at BASE_EPOCH (UTC, on the 15-minute grid):
-- thread t, request n books resource n % #ids at slot floor(n / #ids) of block t, so no two requests
-- (in this run, or in another run with a different BASE_EPOCH) ever ask for the same resource and time.
-- done() prints one line "BENCH_RESULT {json}" that bench/run.py reads.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

local ids = {}
local base = 0
local headers = {}

function init(args)
  local token = args[1]
  local span = tonumber(args[3]) * 86400
  base = tonumber(args[2]) + tid * span
  for id in string.gmatch(args[4], "[^,]+") do
    table.insert(ids, id)
  end
  headers["Authorization"] = "Bearer " .. token
  headers["Content-Type"] = "application/json"
  non2xx = 0
  statuses = {}
end

local function stamp(epoch)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", epoch)
end

function request()
  local n = counter
  counter = counter + 1
  local start = base + math.floor(n / #ids) * 900
  local body = '{"resource_id":"' .. ids[(n % #ids) + 1] .. '","start":"' .. stamp(start) ..
    '","end":"' .. stamp(start + 900) .. '","title":"bench"}'
  return wrk.format("POST", "/api/v1/bookings", headers, body)
end

function response(status, hdrs, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    statuses[status] = (statuses[status] or 0) + 1
  end
end

function done(summary, latency, requests)
  local bad = 0
  local merged = {}
  for _, thread in ipairs(threads) do
    bad = bad + (thread:get("non2xx") or 0)
    for code, count in pairs(thread:get("statuses") or {}) do
      merged[code] = (merged[code] or 0) + count
    end
  end
  local seen = {}
  for code, count in pairs(merged) do
    seen[#seen + 1] = string.format('"%d":%d', code, count)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"statuses":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, bad, table.concat(seen, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
