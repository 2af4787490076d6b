// Package cgi is Dust's single implementation of the CGI/1.1 (RFC 3875)
// contract, in the dialect WAGI uses, shared by every machine kind, the
// `dust run` CLI and the HTTP gateway.
//
// # Into the machine
//
// [Request.Env] encodes a request as "KEY=VALUE" meta-variables and
// [Request.Args] as argv; the body is given on stdin, exactly
// CONTENT_LENGTH bytes. Decisions beyond RFC 3875:
//
//   - Order: Env is deterministic. Meta-variables come first in a fixed
//     order (GATEWAY_INTERFACE, SERVER_SOFTWARE, SERVER_NAME, SERVER_PORT,
//     SERVER_PROTOCOL, REQUEST_METHOD, SCRIPT_NAME, PATH_INFO, QUERY_STRING,
//     CONTENT_TYPE, CONTENT_LENGTH, REMOTE_ADDR, REMOTE_PORT,
//     X_MATCHED_ROUTE, X_FULL_URL), then the HTTP_* variables sorted by
//     name, then the app's own environment in its configured order. Every
//     key appears once.
//   - The app's configured environment always wins: a request-derived
//     variable whose key the app also sets is left out, even a
//     meta-variable. An app that sets e.g. SCRIPT_NAME gets its own value;
//     this lets an app pin values but also lets it break its own CGI
//     handling, which is its owner's call, not the client's.
//   - Header variables are HTTP_ plus the name upper-cased with '-' turned
//     into '_'. Names with any byte outside [A-Za-z0-9-] are dropped. That
//     includes '_': like Apache 2.4 and nginx we refuse them, because
//     "X_Forwarded_For" and "X-Forwarded-For" would map to the same variable
//     and let a client smuggle a value the app believes came from a proxy.
//   - Repeated headers are joined with ", ", except Cookie, joined with "; "
//     as RFC 6265 requires (HTTP/2 clients send each cookie separately).
//   - Proxy is always dropped (httpoxy, CVE-2016-5385). Proxy-Authorization
//     is always dropped: it holds credentials meant for a proxy, and the
//     gateway is the last hop. Authorization is withheld unless the app
//     opted in with [Request.PassAuthorization].
//   - Content-Type becomes CONTENT_TYPE. CONTENT_LENGTH comes only from
//     [Request.ContentLength], never from a Content-Length header, because
//     only the gateway knows how many bytes it will put on stdin.
//   - NUL bytes cannot travel in execve or WASI strings, so a NUL in any
//     request-derived value or argument is written as "%00".
//   - argv is WAGI's: the request path (SCRIPT_NAME+PATH_INFO, "/" if
//     empty), then each '&'-separated query item, empty items included,
//     decoded as form data ("%XX" and '+' as space). An item that is not
//     valid percent-encoding is passed undecoded.
//
// # Out of the machine
//
// A [Parser] reads the machine's stdout: a header block, a blank line (CRLF
// or LF), then the body, which is streamed and never accumulated. Every
// failure wraps [ErrBadOutput], for which the gateway answers 502 Bad
// Gateway if [Parser.HeaderDone] is still false. Decisions:
//
//   - Status must be three digits in 200..599, optionally followed by a
//     space and a reason phrase, which is discarded. 1xx is refused because
//     a CGI response is a single final response; passing 101 or 103 on
//     would confuse the gateway's own HTTP server.
//   - Location without Status gives 302 Found, whether the URL is absolute
//     or local ("/path"). RFC 3875 asks the server to re-dispatch a local
//     redirect internally; we answer 302 instead because every request
//     costs a brand-new machine, an internal loop between apps would be
//     invisible and unbounded, and clients resolve "/path" fine.
//   - At least one of Content-Type, Location and Status is required.
//   - Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, TE,
//     Upgrade and Trailer are dropped silently: framing and connection
//     management belong to the gateway's HTTP server, and CGI has no
//     trailers. X-Request-Id, Date and Server are dropped too: the gateway
//     sets them and an app must not be able to make them lie.
//   - Content-Length is kept if it is a non-negative decimal integer
//     (repeats must agree), otherwise the output is rejected; the gateway's
//     HTTP server then enforces it against the body.
//   - Status, Location and Content-Length may appear only once.
//   - Header lines must be "Name: value" with a token name and a value free
//     of control characters other than tab. obs-fold continuation lines are
//     rejected, as RFC 9112 permits.
//   - Every other header passes through, repeats kept in order.
package cgi
