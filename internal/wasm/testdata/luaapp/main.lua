-- A CGI script for the Lua interpreter built by examples/lua/build.sh,
-- run with argv = {"lua", "/app/main.lua"} and this directory mounted
-- read-only at /app.
local greet = dofile("/app/greet.lua")
local q = os.getenv("QUERY_STRING") or ""

io.write("Content-Type: text/plain\r\n\r\n")
if q == "error" then
	error("asked to fail")
end
io.write(greet(q), " via ", os.getenv("REQUEST_METHOD") or "?", "\n")
if q == "exit" then
	-- os.exit from a few Lua calls down: C's exit() from deep in the
	-- interpreter's stack.
	local function down(n)
		if n == 0 then os.exit(0) end
		down(n - 1)
		io.write("unreachable\n")
	end
	down(50)
end
