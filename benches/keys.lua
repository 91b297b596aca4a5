-- wrk script of benches/entry_split.sh and benches/hop_bound.sh: POST {"hello":"world"} to
-- /api/echo/key-1 .. key-3000, each connection from a random key on.
local i = 0
wrk.method = "POST"; wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"hello":"world"}'
function init(args) i = math.random(3000) end
function request() i = i % 3000 + 1; return wrk.format(nil, "/api/echo/key-" .. i) end
