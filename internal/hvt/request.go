package hvt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// ErrRequestTooLarge reports argv, environment and inline body that do not
// fit the request area of guest memory.
var ErrRequestTooLarge = errors.New("request does not fit the machine's request area")

// placedRequest says where encodeRequest put things (guest addresses).
type placedRequest struct {
	argc, argv, envp   uint64
	bodyAddr, bodySize uint64
}

// encodeRequest lays out argv, envp, their strings and the inline body in
// area, which is guest memory [requestBase, requestEnd): pointer arrays
// first, then NUL-terminated strings, then the body, 8-byte aligned.
func encodeRequest(area []byte, args, env []string, body []byte) (placedRequest, error) {
	var p placedRequest
	strBytes := 0
	for _, s := range append(args[:len(args):len(args)], env...) {
		if strings.IndexByte(s, 0) >= 0 {
			return p, fmt.Errorf("%w: argument or environment entry %.40q contains a NUL byte", ErrRequestTooLarge, s)
		}
		strBytes += len(s) + 1
	}
	ptrBytes := 8 * (len(args) + 1 + len(env) + 1)
	need := ptrBytes + int(alignUp(uint64(strBytes), 8)) + len(body)
	if need > len(area) {
		return p, fmt.Errorf("%w: %d bytes needed, %d available", ErrRequestTooLarge, need, len(area))
	}
	le := binary.LittleEndian
	ptr := 0
	str := ptrBytes
	put := func(list []string) {
		for _, s := range list {
			le.PutUint64(area[ptr:], requestBase+uint64(str))
			ptr += 8
			str += copy(area[str:], s)
			area[str] = 0
			str++
		}
		le.PutUint64(area[ptr:], 0)
		ptr += 8
	}
	p.argc = uint64(len(args))
	p.argv = requestBase
	put(args)
	p.envp = requestBase + uint64(8*(len(args)+1))
	put(env)
	b := int(alignUp(uint64(str), 8))
	copy(area[b:], body)
	p.bodyAddr = requestBase + uint64(b)
	p.bodySize = uint64(len(body))
	return p, nil
}
