-- wrk script for bench/stack.py: POST /api/v1/bookings through the stack's nginx, several users.
--
--   wrk -t2 -c16 -d20s --latency -s bench/stack.lua http://127.0.0.1:PORT -- BASE_EPOCH SPAN_DAYS IDS TOKENS
--
-- IDS and TOKENS are comma-separated. Thread t books its own block of SPAN_DAYS days from BASE_EPOCH:
-- request n books resource n % #ids at 15-minute slot floor(n / #ids) of that block, as user n % #tokens,
-- so no two requests ever ask for the same resource and time. done() prints "BENCH_RESULT {json}"
-- (bench/wrk_result.lua).

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local result = require("wrk_result")

setup, response, done = result.setup, result.response, result.done

local counter = 0
local ids = {}
local tokens = {}
local base = 0

function init(args)
  base = tonumber(args[1]) + tid * tonumber(args[2]) * 86400
  ids = result.split(args[3])
  tokens = result.split(args[4])
  result.init()
end

function request()
  local n = counter
  counter = counter + 1
  local headers = {["Content-Type"] = "application/json",
                   ["Authorization"] = "Bearer " .. tokens[(n % #tokens) + 1]}
  return wrk.format("POST", "/api/v1/bookings", headers, result.booking(ids, base, n, "stack bench"))
end
