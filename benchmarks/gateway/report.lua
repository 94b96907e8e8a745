-- wrk script for bench_gateway.py: the request comes from the environment, the report is one JSON line.
--   WRK_METHOD     GET or POST (default GET)
--   WRK_BODY_FILE  file whose bytes are the request body (optional)
--   WRK_HEADERS    extra headers, "Name: value" separated by newlines (optional)
-- Every response's status is counted (so a row whose answers are not the expected ones is caught), and done()
-- prints a line starting with "BENCH_JSON " that bench_gateway.py parses.

wrk.method = os.getenv("WRK_METHOD") or "GET"
local body_file = os.getenv("WRK_BODY_FILE")
if body_file and body_file ~= "" then
  local f = assert(io.open(body_file, "rb"))
  wrk.body = f:read("*a")
  f:close()
end
for line in string.gmatch(os.getenv("WRK_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then wrk.headers[name] = value end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local function fmt(value)
  return string.format("%.1f", value)
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local seen = thread:get("statuses")
    for status, n in pairs(seen) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d":%d', status, n))
  end
  local e = summary.errors
  io.write("BENCH_JSON {",
    '"requests":', summary.requests, ",",
    '"duration_us":', summary.duration, ",",
    '"bytes":', summary.bytes, ",",
    '"errors":{"connect":', e.connect, ',"read":', e.read, ',"write":', e.write,
      ',"timeout":', e.timeout, ',"status":', e.status, "},",
    '"statuses":{', table.concat(parts, ","), "},",
    '"latency_us":{"mean":', fmt(latency.mean), ',"max":', fmt(latency.max),
      ',"p50":', fmt(latency:percentile(50)), ',"p90":', fmt(latency:percentile(90)),
      ',"p99":', fmt(latency:percentile(99)), ',"p999":', fmt(latency:percentile(99.9)), "}",
    "}\n")
end
