-- GET /actors/<id>: a random existing actor.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local actors = tonumber(os.getenv("BENCH_ACTORS"))

function request()
   return wrk.format("GET", "/actors/" .. math.random(actors), auth)
end
