-- GET /: the app's trivial route (no token, no database), the ceiling.
dofile(os.getenv("BENCH_DIR") .. "/common.lua")

function request()
   return wrk.format("GET", "/")
end
