-- cgi: the request side of CGI for Lua scripts run by lua-host.
local cgi = {}

local function unescape(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- form parses application/x-www-form-urlencoded text into a table; a
-- key given more than once keeps its last value.
function cgi.form(s)
  local t = {}
  for pair in (s or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    t[unescape(k)] = unescape(v)
  end
  return t
end

-- request gathers what a script usually wants: the method, the query and,
-- for a form POST, the body's fields.
function cgi.request()
  local r = {
    method = os.getenv("REQUEST_METHOD") or "GET",
    path = os.getenv("PATH_INFO") or "",
    query = cgi.form(os.getenv("QUERY_STRING")),
    body = "",
  }
  if r.method == "POST" then
    r.body = io.read("a") or ""
    local ct = os.getenv("CONTENT_TYPE") or ""
    if ct:find("application/x-www-form-urlencoded", 1, true) == 1 then
      r.form = cgi.form(r.body)
    end
  end
  return r
end

return cgi
