package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/dust-run/dust/internal/gateway"
)

// The admin commands' flags. Each value remembers whether it was given at
// all: a redeploy sends only what the user typed, so that everything else
// is inherited from the current version rather than reset to defaults.
// And each refuses a bad value with a message naming the flag and what it
// accepts, in the user's terms, not Go's.

// cmdFlags is a command's flag set with its help text.
type cmdFlags struct {
	*flag.FlagSet
	name     string // "deploy"
	synopsis string // "NAME IMAGE [flags]"
	about    string
	example  string
	bad      string // the message for the first bad flag value
}

func newCmdFlags(name, synopsis, about, example string) *cmdFlags {
	f := &cmdFlags{FlagSet: flag.NewFlagSet("dust "+name, flag.ContinueOnError), name: name, synopsis: synopsis, about: about, example: example}
	// The flag package's own messages and usage dump would bury the one
	// line that says what is wrong; parse prints instead.
	f.SetOutput(io.Discard)
	return f
}

func (f *cmdFlags) fail(name, value, want string) error {
	if f.bad == "" {
		f.bad = fmt.Sprintf("--%s %q: %s", name, value, want)
	}
	return errors.New(want)
}

// help writes the synopsis, the flags with their defaults, and an example.
func (f *cmdFlags) help(w io.Writer) {
	fmt.Fprintf(w, "usage: dust %s %s\n\n%s\n", f.name, f.synopsis, f.about)
	n := 0
	f.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nflags:\n")
		f.VisitAll(func(fl *flag.Flag) {
			arg, usage := flag.UnquoteUsage(fl)
			head := "  --" + fl.Name
			if arg != "" {
				head += " " + strings.ToUpper(arg)
			}
			fmt.Fprintf(w, "%s\n      %s\n", head, usage)
		})
	}
	if f.example != "" {
		fmt.Fprintf(w, "\nexample:\n%s\n", f.example)
	}
}

// parse parses args, flags and positional arguments in any order. On
// -h it prints the help to stdout and reports exitOK; on an error it
// prints one line naming the flag and what it accepts.
func (f *cmdFlags) parse(args []string, stdout, stderr io.Writer) (pos []string, code int, ok bool) {
	for rest := args; ; {
		if err := f.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.help(stdout)
				return nil, exitOK, false
			}
			msg := f.bad
			if msg == "" {
				msg = flagError(err)
			}
			fmt.Fprintf(stderr, "dust %s: %s (see 'dust %s -h')\n", f.name, msg, f.name)
			return nil, exitUsage, false
		}
		if f.NArg() == 0 {
			return pos, 0, true
		}
		pos = append(pos, f.Arg(0))
		rest = f.Args()[1:]
	}
}

// flagError rewords the flag package's errors that no Value produced.
func flagError(err error) string {
	s := err.Error()
	if n, ok := strings.CutPrefix(s, "flag provided but not defined: "); ok {
		return "unknown flag " + n
	}
	if n, ok := strings.CutPrefix(s, "flag needs an argument: "); ok {
		return "-" + strings.TrimLeft(n, "-") + " needs a value"
	}
	return s
}

// usageErr reports a bad command line that is not a single flag.
func (f *cmdFlags) usageErr(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "dust %s: %s\nusage: dust %s %s (see 'dust %s -h')\n", f.name, fmt.Sprintf(format, args...), f.name, f.synopsis, f.name)
	return exitUsage
}

type strValue struct {
	v     string
	given bool
}

func (s *strValue) String() string     { return s.v }
func (s *strValue) Set(v string) error { s.v, s.given = v, true; return nil }

func (f *cmdFlags) str(name, arg, usage string) *strValue {
	v := &strValue{}
	f.Var(v, name, "`"+arg+"`: "+usage)
	return v
}

type durValue struct {
	f     *cmdFlags
	name  string
	v     time.Duration
	given bool
}

func (d *durValue) String() string {
	if d == nil || !d.given {
		return ""
	}
	return d.v.String()
}
func (d *durValue) Set(v string) error {
	if v == "0" {
		d.v, d.given = 0, true
		return nil
	}
	x, err := time.ParseDuration(v)
	if err != nil || x < 0 {
		return d.f.fail(d.name, v, "want a duration such as 2s or 500ms")
	}
	d.v, d.given = x, true
	return nil
}

func (f *cmdFlags) duration(name, usage string) *durValue {
	v := &durValue{f: f, name: name}
	f.Var(v, name, "`DURATION` "+usage)
	return v
}

type sizeValue struct {
	f     *cmdFlags
	name  string
	v     int64
	given bool
}

func (s *sizeValue) String() string {
	if s == nil || !s.given {
		return ""
	}
	return gateway.FormatSize(s.v)
}
func (s *sizeValue) Set(v string) error {
	n, err := gateway.ParseSize(v)
	if err != nil {
		return s.f.fail(s.name, v, "want a size such as 16MiB, 512KiB or 1GiB")
	}
	s.v, s.given = n, true
	return nil
}

func (f *cmdFlags) size(name, usage string) *sizeValue {
	v := &sizeValue{f: f, name: name}
	f.Var(v, name, "`SIZE` "+usage)
	return v
}

type intValue struct {
	f     *cmdFlags
	name  string
	min   int
	want  string
	v     int
	given bool
}

func (i *intValue) String() string {
	if i == nil || !i.given {
		return ""
	}
	return strconv.Itoa(i.v)
}
func (i *intValue) Set(v string) error {
	n, err := strconv.Atoi(v)
	if err != nil || n < i.min {
		return i.f.fail(i.name, v, i.want)
	}
	i.v, i.given = n, true
	return nil
}

func (f *cmdFlags) integer(name string, min int, want, usage string) *intValue {
	v := &intValue{f: f, name: name, min: min, want: want}
	f.Var(v, name, "`N` "+usage)
	return v
}

type boolValue struct {
	f     *cmdFlags
	name  string
	v     bool
	given bool
}

func (b *boolValue) String() string {
	if b == nil {
		return ""
	}
	return strconv.FormatBool(b.v)
}
func (b *boolValue) IsBoolFlag() bool { return true }
func (b *boolValue) Set(v string) error {
	x, err := strconv.ParseBool(v)
	if err != nil {
		return b.f.fail(b.name, v, "want true or false")
	}
	b.v, b.given = x, true
	return nil
}

func (f *cmdFlags) boolean(name, usage string) *boolValue {
	v := &boolValue{f: f, name: name}
	f.Var(v, name, usage)
	return v
}

// kvList is a repeatable KEY=VALUE (or, with keysOnly, KEY) flag.
type kvList struct {
	f        *cmdFlags
	name     string
	keysOnly bool
	v        []string
}

func (l *kvList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(l.v, ",")
}
func (l *kvList) Set(v string) error {
	key, _, hasEq := strings.Cut(v, "=")
	switch {
	case l.keysOnly && (hasEq || !validKey(v)):
		return l.f.fail(l.name, v, "want a variable name such as GREETING")
	case !l.keysOnly && (!hasEq || !validKey(key)):
		return l.f.fail(l.name, v, "want KEY=VALUE with KEY like GREETING (letters, digits, _)")
	}
	l.v = append(l.v, v)
	return nil
}

func (f *cmdFlags) kvs(name string, keysOnly bool, usage string) *kvList {
	v := &kvList{f: f, name: name, keysOnly: keysOnly}
	arg := "`KEY=VALUE` "
	if keysOnly {
		arg = "`KEY` "
	}
	f.Var(v, name, arg+usage)
	return v
}

func validKey(k string) bool {
	if k == "" {
		return false
	}
	for i, c := range k {
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c == '_':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
