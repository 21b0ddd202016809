-- GET /movies/<id>/actors: the cast of a random movie (a page of 20 with the total).
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local movies = tonumber(os.getenv("BENCH_MOVIES"))

function request()
   return wrk.format("GET", "/movies/" .. math.random(movies) .. "/actors", auth)
end
