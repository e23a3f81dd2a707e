-- wrk script: POST /api/v1/bookings with non-conflicting 15-minute bookings.
--
--   wrk -t2 -c16 -d15s --latency -s bench/book.lua http://127.0.0.1:PORT -- TOKEN BASE_EPOCH SPAN_DAYS ID1,ID2,...
--
-- Every thread books its own block of SPAN_DAYS days starting at BASE_EPOCH (UTC, on the 15-minute grid):
-- thread t, request n books resource n % #ids at slot floor(n / #ids) of block t, so no two requests
-- (in this run, or in another run with a different BASE_EPOCH) ever ask for the same resource and time.
-- done() prints one line "BENCH_RESULT {json}" that bench/run.py reads (bench/wrk_result.lua).

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local result = require("wrk_result")

setup, response, done = result.setup, result.response, result.done

local counter = 0
local ids = {}
local base = 0
local headers = {}

function init(args)
  base = tonumber(args[2]) + tid * tonumber(args[3]) * 86400
  ids = result.split(args[4])
  headers["Authorization"] = "Bearer " .. args[1]
  headers["Content-Type"] = "application/json"
  result.init()
end

function request()
  local n = counter
  counter = counter + 1
  return wrk.format("POST", "/api/v1/bookings", headers, result.booking(ids, base, n, "bench"))
end
