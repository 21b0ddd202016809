-- GET /actors: the first page (20 actors) with the total.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")

function request()
   return wrk.format("GET", "/actors", auth)
end
