-- POST /actors: a new actor (bench.py deletes them after the run).
dofile(os.getenv("BENCH_DIR") .. "/common.lua")
local body = '{"name": "Bench Newcomer", "age": 40, "gender": "Female"}'

function request()
   return wrk.format("POST", "/actors", json_auth, body)
end
