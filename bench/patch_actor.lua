-- PATCH /actors/<id>: a new age for a random existing actor.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local actors = tonumber(os.getenv("BENCH_ACTORS"))

function request()
   local body = string.format('{"age": %d}', math.random(18, 90))
   return wrk.format("PATCH", "/actors/" .. math.random(actors), json_auth, body)
end
