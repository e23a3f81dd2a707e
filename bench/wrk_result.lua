-- What bench/book.lua, bench/plain.lua and bench/stack.lua share: the bookings' bodies
-- (M.split, M.booking), counting answers by status in every wrk thread and printing one line
-- "BENCH_RESULT {json}" at the end, which bench/run.py and bench/stack.py read:
--
--   {"requests", "duration_us", "bytes", "non2xx", "statuses": {"<status>": count, ...},
--    "errors": {"connect", "read", "write", "status", "timeout"},
--    "latency_us": {"mean", "p50", "p90", "p99", "max"}}
--
-- "statuses" counts every answer, 2xx included; errors.status is wrk's own count of answers with a
-- status of 400 or more, the other errors are socket errors. A script loads this module from its
-- own directory, whatever the working directory:
--
--   package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
--   local result = require("wrk_result")
--   setup, response, done = result.setup, result.response, result.done
--
-- and calls result.init() from its init(). wrk runs setup() and done() in its main Lua state and
-- init() and response() in each thread's own state, so the counts are globals of a thread's state,
-- which done() reads back with thread:get().

local M = {}

local threads = {}

-- The comma-separated values of a script argument, as a list.
function M.split(csv)
  local out = {}
  for value in string.gmatch(csv, "[^,]+") do
    table.insert(out, value)
  end
  return out
end

local function stamp(epoch)
  return os.date("!%Y-%m-%dT%H:%M:%SZ", epoch)
end

-- The JSON body of a thread's request n (from 0): resource n % #ids at 15-minute slot floor(n / #ids)
-- counted from base (a UTC epoch on the 15-minute grid), so no two requests of a thread whose block
-- of days starts at base ever ask for the same resource and time.
function M.booking(ids, base, n, title)
  local start = base + math.floor(n / #ids) * 900
  return '{"resource_id":"' .. ids[(n % #ids) + 1] .. '","start":"' .. stamp(start) ..
    '","end":"' .. stamp(start + 900) .. '","title":"' .. title .. '"}'
end

-- wrk's setup(thread): remember the thread and give it its number, the global "tid" (0, 1, ...).
function M.setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

-- Call from the script's init(args): the thread's counts start at zero.
function M.init()
  statuses = {}
end

-- wrk's response(status, headers, body): count the answer.
function M.response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- Every thread's counts added up, and how many were not 2xx.
function M.statuses()
  local merged, non2xx = {}, 0
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses") or {}) do
      merged[code] = (merged[code] or 0) + count
      if code < 200 or code > 299 then
        non2xx = non2xx + count
      end
    end
  end
  return merged, non2xx
end

-- wrk's done(summary, latency, requests): print the BENCH_RESULT line.
function M.done(summary, latency, requests)
  local merged, non2xx = M.statuses()
  local seen = {}
  for code, count in pairs(merged) do
    seen[#seen + 1] = string.format('"%d":%d', code, count)
  end
  table.sort(seen)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"non2xx":%d,"statuses":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"p50":%d,"p90":%d,"p99":%d,"max":%d}}\n',
    summary.requests, summary.duration, summary.bytes, non2xx, table.concat(seen, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end

return M
