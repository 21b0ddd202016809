-- Shared by every benchmark script (each loads it with dofile): the bearer
-- token, a per-thread random seed, a count of the responses that are not 2xx
-- (by status), and one result line that bench.py reads.
--
-- wrk runs each thread in its own Lua state; setup() and done() run in another
-- one, which collects the threads' counts through thread:get().

local threads = {}

auth = {Authorization = "Bearer " .. (os.getenv("BENCH_TOKEN") or "")}
json_auth = {Authorization = auth.Authorization, ["Content-Type"] = "application/json"}

function setup(thread)
   table.insert(threads, thread)
   thread:set("thread_number", #threads)
end

function init(args)
   math.randomseed(os.time() * 1000 + thread_number)
   statuses = {}  -- status -> count, for every status >= 300
end

function response(status, headers, body)
   if status >= 300 then
      statuses[status] = (statuses[status] or 0) + 1
   end
end

function done(summary, latency, requests)
   local non2xx, counts = 0, {}
   for _, thread in ipairs(threads) do
      for status, count in pairs(thread:get("statuses")) do
         non2xx = non2xx + count
         counts[status] = (counts[status] or 0) + count
      end
   end
   local seen = {}
   for status, count in pairs(counts) do
      table.insert(seen, status .. ":" .. count)
   end
   table.sort(seen)
   local e = summary.errors
   io.write(string.format(
      "BENCH_RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d non2xx=%d socket_errors=%d statuses=%s\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), non2xx,
      e.connect + e.read + e.write + e.timeout, #seen > 0 and table.concat(seen, ",") or "-"))
end
