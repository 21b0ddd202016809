-- GET /actors?q=<term>: a search that matches a few actors.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local path = "/actors?q=" .. os.getenv("BENCH_QUERY")

function request()
   return wrk.format("GET", path, auth)
end
