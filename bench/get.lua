-- GET BENCH_PATH, where each {actor} and {movie} is a random existing id.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local template = os.getenv("BENCH_PATH")
local actors = tonumber(os.getenv("BENCH_ACTORS"))
local movies = tonumber(os.getenv("BENCH_MOVIES"))

function request()
   local path = template:gsub("{actor}", function() return math.random(actors) end)
   path = path:gsub("{movie}", function() return math.random(movies) end)
   return wrk.format("GET", path, auth)
end
