-- wrk script: a plain GET of the URL's path (the baseline endpoint), counting the answers by status.
--
--   wrk -t2 -c16 -d15s --latency -s bench/plain.lua http://127.0.0.1:PORT/healthz
--
-- done() prints one line "BENCH_RESULT {json}" (bench/wrk_result.lua).

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local result = require("wrk_result")

setup, response, done = result.setup, result.response, result.done

function init(args)
  result.init()
end
