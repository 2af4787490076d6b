package cgi

// Argv returns the argv of an app with fixed arguments: argv[0] is the
// request path, then fixed, then, only when queryItems (WAGI's convention,
// an app's explicit opt-in), each query item decoded as Args gives them.
// Without the opt-in nothing in the URL becomes an argument, so a client
// cannot hand an interpreter options such as -e CODE.
func (r *Request) Argv(fixed []string, queryItems bool) []string {
	var args []string
	if queryItems {
		args = r.Args()
	} else {
		args = []string{escapeNUL(r.path())}
	}
	if len(fixed) == 0 {
		return args
	}
	out := make([]string, 0, len(args)+len(fixed))
	out = append(out, args[0])
	out = append(out, fixed...)
	return append(out, args[1:]...)
}
