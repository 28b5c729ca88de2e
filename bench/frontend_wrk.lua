-- wrk's script for bench/frontend.py: POSTs the prepared multipart bodies in turn, each a
-- garment of its own (a response-cache miss) until they run out.
-- wrk -t1 -c CLIENTS -d SECONDS -s bench/frontend_wrk.lua URL -- FOLDER COUNT BOUNDARY
local bodies, count, sent = {}, 0, 0

function init(args)
  count = tonumber(args[2])
  for i = 1, count do
    local file = assert(io.open(args[1] .. "/" .. i .. ".body", "rb"))
    bodies[i] = file:read("*a")
    file:close()
  end
  wrk.headers["Content-Type"] = "multipart/form-data; boundary=" .. args[3]
end

function request()
  sent = sent + 1
  return wrk.format("POST", "/v1/tryon", nil, bodies[(sent - 1) % count + 1])
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, "bodies": %d}\n',
    summary.requests, summary.duration, errors.status, errors.connect + errors.read + errors.write + errors.timeout,
    count))
end
