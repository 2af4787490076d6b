-- A word-count service in Lua, run per request by lua-host from the app's
-- read-only files (/app). GET /?text=...&top=N or POST a form with the
-- same fields (or any other body, counted as text).
local cgi = require("cgi")

local req = cgi.request()
local fields = req.form or req.query
local text = fields.text or (req.form == nil and req.body) or ""
local top = math.tointeger(tonumber(fields.top or "3")) or 3

local counts, total = {}, 0
for w in text:lower():gmatch("%a+") do
  counts[w] = (counts[w] or 0) + 1
  total = total + 1
end
local words = {}
for w, n in pairs(counts) do words[#words + 1] = { w = w, n = n } end
table.sort(words, function(a, b) return a.n > b.n or (a.n == b.n and a.w < b.w) end)

-- /tmp is this request's own: empty at the start, writable.
local path = "/tmp/words.txt"
local before = io.open(path, "r")
if before then before:close() end
local f = assert(io.open(path, "w"))
for _, e in ipairs(words) do f:write(e.w, " ", e.n, "\n") end
f:close()
local lines = 0
for _ in io.lines(path) do lines = lines + 1 end

-- /app is read-only.
local ok, err = io.open("/app/main.lua", "a")
if ok then ok:close() end

io.write("Content-Type: text/plain; charset=utf-8\r\n\r\n")
io.write("lua=", _VERSION, "\n")
io.write("method=", req.method, "\n")
io.write("words=", total, "\n")
io.write("distinct=", #words, "\n")
local shown = {}
for i = 1, math.min(top, #words) do shown[i] = words[i].w .. ":" .. words[i].n end
io.write("top=", table.concat(shown, " "), "\n")
io.write("date=", os.date("!%Y-%m-%d", tonumber(fields.ts) or os.time()), "\n")
io.write("tmp=", before and "present" or "absent", ", ", lines, " lines\n")
io.write("app_write=", ok and "allowed" or err, "\n")
