-- wrk script for `make bench`: every request carries an API key (rotated over BENCH_KEYS, a file
-- of one key per line), the method and path come from BENCH_METHOD and BENCH_PATH, and `done`
-- prints one JSON line with the counts and the latency percentiles (microseconds). With
-- BENCH_COUNT_HEADER set, it also counts the responses that carry that header (any case).
local method = os.getenv("BENCH_METHOD") or "GET"
local path = os.getenv("BENCH_PATH") or "/v1/things"
local keys = {}
local file = os.getenv("BENCH_KEYS")
if file then
  for line in io.lines(file) do
    if #line > 0 then keys[#keys + 1] = line end
  end
end
local body = nil
if method == "POST" then body = '{"prompt":"bench"}' end
local i = 0
local threads = {}
counted = 0

function setup(thread)
  threads[#threads + 1] = thread
end

local count_header = os.getenv("BENCH_COUNT_HEADER")
if count_header then
  count_header = string.lower(count_header)
  -- Defined only when asked for: with a `response` function wrk parses every answer's headers.
  function response(status, headers, body)
    for name, _ in pairs(headers) do
      if string.lower(name) == count_header then
        counted = counted + 1
        return
      end
    end
  end
end

function request()
  i = i + 1
  local headers = {}
  if #keys > 0 then headers["x-api-key"] = keys[(i % #keys) + 1] end
  if body then headers["content-type"] = "application/json" end
  return wrk.format(method, path, headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local n = 0
  for _, t in ipairs(threads) do n = n + (t:get("counted") or 0) end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"counted":%d,"duration_us":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, n, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
