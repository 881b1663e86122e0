-- wrk script of bench/rest.py (run with -t1: one Lua state drives every connection).
--
--   wrk ... -s bench/rest_wrk.lua URL -- vote PATH TOKENS_FILE
--       PUT PATH with a Bearer token, voters (one token a line) taken in turn and each one
--       alternating {"value":1} / {"value":-1}: every request moves a vote, as long as each
--       voter has at most one request in flight (use more voters than connections).
--   wrk ... -s bench/rest_wrk.lua URL -- get PATH [ETAG]
--       GET PATH, with If-None-Match: ETAG when one is given.
--
-- Every request is built once in init(); response() counts statuses (wrk itself counts only
-- those above 399), and done() prints one line: "rest-wrk {json}" with the status counts and
-- wrk's own figures (requests, duration, latency percentiles in microseconds, socket errors).

statuses = {}
local requests, turn = {}, 0

function init(args)
   local mode, path, extra = args[1], args[2], args[3]
   if mode == "vote" then
      local bodies = { '{"value":1}', '{"value":-1}' }
      for token in io.lines(extra) do
         for _, body in ipairs(bodies) do
            local headers = {
               ["Authorization"] = "Bearer " .. token,
               ["Content-Type"] = "application/json",
            }
            requests[#requests + 1] = wrk.format("PUT", path, headers, body)
         end
      end
      -- Order: voter 1 +1, voter 2 +1, ..., voter n +1, voter 1 -1, ..., voter n -1.
      local n, ordered = #requests / 2, {}
      for i = 1, n do ordered[i] = requests[2 * i - 1] end
      for i = 1, n do ordered[n + i] = requests[2 * i] end
      requests = ordered
   elseif mode == "get" then
      local headers = {}
      if extra and extra ~= "" then headers["If-None-Match"] = extra end
      requests[1] = wrk.format("GET", path, headers)
   else
      error("mode must be vote or get, not " .. tostring(mode))
   end
end

function request()
   turn = turn % #requests + 1
   return requests[turn]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

function done(summary, latency, reqs)
   local counts = {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses") or {}) do
         counts[status] = (counts[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(counts) do
      parts[#parts + 1] = string.format('"%d":%d', status, count)
   end
   local e = summary.errors
   io.write(string.format(
      'rest-wrk {"statuses":{%s},"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
         .. '"max_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}}\n',
      table.concat(parts, ","), summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), latency.max,
      e.connect, e.read, e.write, e.timeout, e.status))
end
