package cgi

import (
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

const (
	// GatewayInterface is the CGI version Dust speaks.
	GatewayInterface = "CGI/1.1"
	// ServerSoftware is the value of SERVER_SOFTWARE.
	ServerSoftware = "dust"
)

// Request describes one HTTP request in CGI terms.
type Request struct {
	Method            string
	ScriptName        string      // the matched route, "" for the root
	PathInfo          string      // the rest of the (decoded) path
	RawQuery          string      // the query, still percent-encoded
	Header            http.Header // request headers (Host may be in Host field instead)
	Host              string      // Host header value
	ContentLength     int64       // -1 if unknown (then CONTENT_LENGTH is omitted)
	RemoteAddr        string      // "ip:port"
	ServerName        string      // derived from Host if empty
	ServerPort        string      // derived from Host, then Scheme, if empty
	Proto             string      // "HTTP/1.1" if empty
	Scheme            string      // "http" if empty, used for X_FULL_URL
	MatchedRoute      string      // for X_MATCHED_ROUTE, e.g. "/app/..."; ScriptName (or "/") if empty
	PassAuthorization bool        // the app opted in to seeing HTTP_AUTHORIZATION
	AppEnv            []string    // "KEY=VALUE" configured for the app; wins over request data
}

// FromHTTP fills a Request from hr given the route prefix it matched
// (scriptName); PathInfo is the rest of the path.
//
// scriptName is matched on whole path segments. If the path does not lie
// under scriptName (a router bug, or a route that rewrote the path),
// ScriptName is left empty and PathInfo is the whole path, so that
// SCRIPT_NAME+PATH_INFO is always the path that was requested.
func FromHTTP(hr *http.Request, scriptName string) *Request {
	// RFC 3875 forbids a trailing '/' in SCRIPT_NAME: it belongs to PATH_INFO.
	scriptName = strings.TrimRight(scriptName, "/")
	path := hr.URL.Path
	r := &Request{
		Method:        hr.Method,
		RawQuery:      hr.URL.RawQuery,
		Header:        hr.Header.Clone(),
		Host:          hr.Host,
		ContentLength: hr.ContentLength,
		RemoteAddr:    hr.RemoteAddr,
		Proto:         hr.Proto,
		Scheme:        "http",
	}
	if hr.TLS != nil {
		r.Scheme = "https"
	}
	if r.Header == nil {
		r.Header = http.Header{}
	}
	if path == scriptName || strings.HasPrefix(path, scriptName+"/") {
		r.ScriptName = scriptName
		r.PathInfo = path[len(scriptName):]
	} else {
		r.PathInfo = path
	}
	host := hr.Host
	if host == "" {
		if a, ok := hr.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			host = a.String()
		}
	}
	r.ServerName, r.ServerPort = splitHost(host, r.Scheme)
	return r
}

// splitHost splits a Host value into name and port, defaulting the port by
// scheme since SERVER_PORT is mandatory in RFC 3875.
func splitHost(host, scheme string) (name, port string) {
	if h, p, err := net.SplitHostPort(host); err == nil {
		return h, p
	}
	// Bracketed IPv6 literal without a port.
	name = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if scheme == "https" {
		return name, "443"
	}
	return name, "80"
}

// Env returns the environment ("KEY=VALUE") in the order documented in the
// package comment.
func (r *Request) Env() []string {
	appKeys, appEnv := parseAppEnv(r.AppEnv)
	vars := make([]string, 0, 16+len(r.Header)+len(appEnv))
	add := func(k, v string) {
		if _, ok := appKeys[k]; ok {
			return
		}
		vars = append(vars, k+"="+escapeNUL(v))
	}

	scheme := r.Scheme
	if scheme == "" {
		scheme = "http"
	}
	hdr := r.headerVars()
	host := r.Host
	if host == "" {
		host = hdr.host
	}
	serverName, serverPort := r.ServerName, r.ServerPort
	if serverName == "" || serverPort == "" {
		n, p := splitHost(host, scheme)
		if serverName == "" {
			serverName = n
		}
		if serverPort == "" {
			serverPort = p
		}
	}
	proto := r.Proto
	if proto == "" {
		proto = "HTTP/1.1"
	}
	method := r.Method
	if method == "" {
		// Same convention as net/http: an empty method means GET.
		method = http.MethodGet
	}

	add("GATEWAY_INTERFACE", GatewayInterface)
	add("SERVER_SOFTWARE", ServerSoftware)
	add("SERVER_NAME", serverName)
	add("SERVER_PORT", serverPort)
	add("SERVER_PROTOCOL", proto)
	add("REQUEST_METHOD", method)
	add("SCRIPT_NAME", r.ScriptName)
	add("PATH_INFO", r.PathInfo)
	add("QUERY_STRING", r.RawQuery)
	if hdr.hasContentType {
		add("CONTENT_TYPE", hdr.contentType)
	}
	if r.ContentLength >= 0 {
		add("CONTENT_LENGTH", strconv.FormatInt(r.ContentLength, 10))
	}
	if ip, port, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		add("REMOTE_ADDR", ip)
		add("REMOTE_PORT", port)
	} else {
		// Unix sockets and tests give addresses without a port; pass what
		// we have rather than nothing.
		add("REMOTE_ADDR", r.RemoteAddr)
	}
	route := r.MatchedRoute
	if route == "" {
		route = r.ScriptName
		if route == "" {
			route = "/"
		}
	}
	add("X_MATCHED_ROUTE", route)
	add("X_FULL_URL", r.fullURL(scheme, host, serverName, serverPort))

	if host != "" {
		hdr.vars["HTTP_HOST"] = host
	}
	names := make([]string, 0, len(hdr.vars))
	for k := range hdr.vars {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		add(k, hdr.vars[k])
	}
	return append(vars, appEnv...)
}

// fullURL rebuilds the URL the client asked for, as WAGI's X_FULL_URL.
func (r *Request) fullURL(scheme, host, serverName, serverPort string) string {
	if host == "" {
		host = net.JoinHostPort(serverName, serverPort)
	}
	p := r.path()
	// EscapedPath re-encodes what FromHTTP decoded, so the URL is one a
	// client could send again.
	u := url.URL{Path: p}
	s := scheme + "://" + host + u.EscapedPath()
	if r.RawQuery != "" {
		s += "?" + r.RawQuery
	}
	return s
}

func (r *Request) path() string {
	p := r.ScriptName + r.PathInfo
	if !strings.HasPrefix(p, "/") {
		p = "/" + p
	}
	return p
}

// Args returns argv as WAGI does: the path, then each query item decoded.
func (r *Request) Args() []string {
	args := []string{escapeNUL(r.path())}
	if r.RawQuery == "" {
		return args
	}
	for item := range strings.SplitSeq(r.RawQuery, "&") {
		if d, err := url.QueryUnescape(item); err == nil {
			item = d
		}
		args = append(args, escapeNUL(item))
	}
	return args
}

// escapeNUL writes NUL as "%00" because execve and WASI pass strings
// NUL-terminated: a raw NUL would silently truncate the value, or make the
// machine refuse to start.
func escapeNUL(s string) string {
	if strings.IndexByte(s, 0) < 0 {
		return s
	}
	return strings.ReplaceAll(s, "\x00", "%00")
}

// parseAppEnv returns the set of keys the app configures and the entries
// to emit, deduplicated with the last value winning (as os/exec does) at
// the position of the first occurrence. Entries without '=', with an empty
// key or with a NUL cannot be represented in an environment and are
// dropped; validating them is the app config loader's job.
func parseAppEnv(env []string) (map[string]struct{}, []string) {
	if len(env) == 0 {
		return nil, nil
	}
	keys := make(map[string]struct{}, len(env))
	index := make(map[string]int, len(env))
	out := make([]string, 0, len(env))
	for _, kv := range env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.IndexByte(kv, 0) >= 0 {
			continue
		}
		if i, dup := index[k]; dup {
			out[i] = kv
			continue
		}
		keys[k] = struct{}{}
		index[k] = len(out)
		out = append(out, kv)
	}
	return keys, out
}

type headerVars struct {
	vars           map[string]string // HTTP_* name → joined value
	host           string            // first Host value, if any
	contentType    string
	hasContentType bool
}

// headerVars maps request headers to variables. It works on the computed
// variable name, not on the map key, so hand-built headers with
// non-canonical keys ("proxy", "PROXY") cannot slip past the filters.
func (r *Request) headerVars() headerVars {
	hv := headerVars{vars: make(map[string]string, len(r.Header))}
	// Map iteration order is random; sort so that keys differing only in
	// case are joined in a stable order.
	keys := make([]string, 0, len(r.Header))
	for k, v := range r.Header {
		if len(v) > 0 {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	joined := make(map[string][]string, len(keys))
	for _, k := range keys {
		name, ok := headerVarName(k)
		if !ok {
			continue
		}
		vals := r.Header[k]
		switch name {
		case "HTTP_PROXY", "HTTP_PROXY_AUTHORIZATION", "HTTP_CONTENT_LENGTH":
			continue
		case "HTTP_AUTHORIZATION":
			if !r.PassAuthorization {
				continue
			}
		case "HTTP_CONTENT_TYPE":
			if !hv.hasContentType {
				hv.contentType, hv.hasContentType = vals[0], true
			}
			continue
		case "HTTP_HOST":
			if hv.host == "" {
				hv.host = vals[0]
			}
			continue
		}
		joined[name] = append(joined[name], vals...)
	}
	for name, vals := range joined {
		sep := ", "
		if name == "HTTP_COOKIE" {
			sep = "; "
		}
		hv.vars[name] = strings.Join(vals, sep)
	}
	return hv
}

// headerVarName converts a header name to its HTTP_* variable. It works on
// bytes rather than strings.ToUpper because Unicode case mapping would turn
// e.g. "ſ" (U+017F) into 'S' and let a non-ASCII name impersonate another.
func headerVarName(h string) (string, bool) {
	if h == "" {
		return "", false
	}
	b := make([]byte, 0, len("HTTP_")+len(h))
	b = append(b, "HTTP_"...)
	for i := 0; i < len(h); i++ {
		c := h[i]
		switch {
		case 'a' <= c && c <= 'z':
			c -= 'a' - 'A'
		case 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-':
			c = '_'
		default:
			return "", false
		}
		b = append(b, c)
	}
	return string(b), true
}
