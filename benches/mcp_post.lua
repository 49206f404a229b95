-- wrk script for benches/load.sh: every request is the same Streamable HTTP POST of a
-- JSON-RPC tools/call. Only static fields are set, so wrk formats the request once per
-- thread and the load generator spends its time on the wire, not in Lua.
--
-- BENCH_BODY and BENCH_SESSION are required; BENCH_AUTHORIZATION is sent only when set
-- (the direct runs, where no proxy injects the token).

local function required(name)
    local value = os.getenv(name)
    if value == nil or value == "" then
        error(name .. " is not set; run this through benches/load.sh")
    end
    return value
end

wrk.method = "POST"
wrk.body = required("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["Mcp-Session-Id"] = required("BENCH_SESSION")

local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization ~= nil and authorization ~= "" then
    wrk.headers["Authorization"] = authorization
end
