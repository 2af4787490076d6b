-- Loaded by main.lua from the same read-only directory.
return function(who)
	return "lua says: " .. who:upper()
end
