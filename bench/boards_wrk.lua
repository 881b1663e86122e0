-- wrk script of bench/boards.py's HTTP part (run with -t1: one Lua state drives every connection).
--
--   wrk ... -s bench/boards_wrk.lua URL -- VOTES_FILE
--       VOTES_FILE has one request a line, "METHOD<TAB>PATH<TAB>TOKEN<TAB>BODY" (BODY may be
--       empty: a DELETE). Each line is sent once, in order. Connections that ask for a request
--       after the last one get GET /healthz ("fillers"). When every vote has been answered (a
--       vote's answer names its "feature_id") the thread stops and prints "boards-wrk answered"
--       (flushed): wrk itself only ends at -d or on SIGINT, which the caller sends then.
--
-- done() prints one line as bench/rest_wrk.lua does: "rest-wrk {json}" (status counts, wrk's
-- figures) plus "sent" (vote requests sent), "answered" (votes answered) and "fillers".

statuses = {}
sent, answered, fillers = 0, 0, 0
local requests, turn, filler = {}, 0, nil

function init(args)
   for line in io.lines(args[1]) do
      local method, path, token, body = line:match("^(%u+)\t([^\t]+)\t([^\t]+)\t(.*)$")
      if not method then error("bad line in " .. args[1] .. ": " .. line) end
      local headers = { ["Authorization"] = "Bearer " .. token }
      if body == "" then
         body = nil
      else
         headers["Content-Type"] = "application/json"
      end
      requests[#requests + 1] = wrk.format(method, path, headers, body)
   end
   filler = wrk.format("GET", "/healthz")
end

local verified = false

function request()
   -- wrk calls request() once before any connection, to count the requests it returns
   -- (script_verify_request): that call gets a filler, not a vote.
   if not verified then
      verified = true
      return filler
   end
   turn = turn + 1
   if turn > #requests then
      fillers = fillers + 1
      return filler
   end
   sent = turn
   return requests[turn]
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
   if body and body:find('"feature_id"', 1, true) then
      answered = answered + 1
      if answered == #requests then
         wrk.thread:stop()
         io.write("boards-wrk answered\n")
         io.stdout:flush()
      end
   end
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

function done(summary, latency, reqs)
   local counts, total_sent, total_answered, total_fillers = {}, 0, 0, 0
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses") or {}) do
         counts[status] = (counts[status] or 0) + count
      end
      total_sent = total_sent + (thread:get("sent") or 0)
      total_answered = total_answered + (thread:get("answered") or 0)
      total_fillers = total_fillers + (thread:get("fillers") or 0)
   end
   local parts = {}
   for status, count in pairs(counts) do
      parts[#parts + 1] = string.format('"%d":%d', status, count)
   end
   local e = summary.errors
   io.write(string.format(
      'rest-wrk {"statuses":{%s},"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,'
         .. '"max_us":%d,"sent":%d,"answered":%d,"fillers":%d,'
         .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d,"status":%d}}\n',
      table.concat(parts, ","), summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(99), latency.max, total_sent, total_answered,
      total_fillers,
      e.connect, e.read, e.write, e.timeout, e.status))
end
