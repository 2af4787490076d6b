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
	bad      string            // the message for the first bad flag value
	short    map[string]string // long name -> its one-letter alias
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
	aliases := map[string]bool{}
	for _, s := range f.short {
		aliases[s] = true
	}
	n := 0
	f.VisitAll(func(*flag.Flag) { n++ })
	if n > 0 {
		fmt.Fprint(w, "\nflags:\n")
		f.VisitAll(func(fl *flag.Flag) {
			if aliases[fl.Name] {
				return // shown with its long name
			}
			arg, usage := flag.UnquoteUsage(fl)
			head := "  --" + fl.Name
			if len(fl.Name) == 1 {
				head = "  -" + fl.Name // -f, -v: short flags, as tar and curl spell them
			}
			if s, ok := f.short[fl.Name]; ok {
				head = "  -" + s + ", --" + fl.Name
			}
			if arg != "" {
				head += " " + strings.ToUpper(arg)
				// The usage names its argument first ("SIZE: ..."): the
				// head has said it.
				usage = strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(usage, arg), ":"))
			}
			fmt.Fprintf(w, "%s\n      %s\n", head, usage)
		})
	}
	if f.example != "" {
		fmt.Fprintf(w, "\nexample:\n%s\n", f.example)
	}
}

// alias makes -short another name for the flag --long.
func (f *cmdFlags) alias(short, long string) {
	fl := f.Lookup(long)
	f.Var(fl.Value, short, fl.Usage)
	if f.short == nil {
		f.short = map[string]string{}
	}
	f.short[long] = short
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

// value is a flag of type T that remembers whether it was given (an
// absent deploy flag means "keep the current setting") and says what it
// wants, naming the flag, when the text does not parse.
type value[T any] struct {
	f      *cmdFlags
	name   string
	want   string
	parse  func(string) (T, bool)
	format func(T) string
	v      T
	raw    string // as typed, for messages about a value the flag accepted
	given  bool
}

func (x *value[T]) String() string {
	if x == nil || x.format == nil || !x.given {
		return ""
	}
	return x.format(x.v)
}

func (x *value[T]) Set(v string) error {
	n, ok := x.parse(v)
	if !ok {
		return x.f.fail(x.name, v, x.want)
	}
	x.v, x.raw, x.given = n, v, true
	return nil
}

func addValue[T any](f *cmdFlags, name, want, usage string, parse func(string) (T, bool), format func(T) string) *value[T] {
	v := &value[T]{f: f, name: name, want: want, parse: parse, format: format}
	f.Var(v, name, usage)
	return v
}

func (f *cmdFlags) duration(name, usage string) *value[time.Duration] {
	return addValue(f, name, "want a duration such as 2s or 500ms", "`DURATION` "+usage, func(v string) (time.Duration, bool) {
		if v == "0" {
			return 0, true
		}
		x, err := time.ParseDuration(v)
		return x, err == nil && x >= 0
	}, time.Duration.String)
}

func (f *cmdFlags) size(name, usage string) *value[int64] {
	return addValue(f, name, "want a size such as 16MiB, 512KiB or 1GiB", "`SIZE` "+usage, func(v string) (int64, bool) {
		n, err := gateway.ParseSize(v)
		return n, err == nil
	}, gateway.FormatSize)
}

func (f *cmdFlags) integer(name string, min int, want, usage string) *value[int] {
	return addValue(f, name, want, "`N` "+usage, func(v string) (int, bool) {
		n, err := strconv.Atoi(v)
		return n, err == nil && n >= min
	}, strconv.Itoa)
}

// boolFlag is value[bool] that the flag package accepts without an
// argument (--json, not --json=true).
type boolFlag struct{ value[bool] }

func (b *boolFlag) IsBoolFlag() bool { return true }

func (b *boolFlag) String() string {
	if b == nil {
		return ""
	}
	return strconv.FormatBool(b.v)
}

func (f *cmdFlags) boolean(name, usage string) *boolFlag {
	b := &boolFlag{value[bool]{f: f, name: name, want: "want true or false", parse: func(v string) (bool, bool) {
		x, err := strconv.ParseBool(v)
		return x, err == nil
	}}}
	f.Var(b, name, usage)
	return b
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

// strList is a repeatable flag of free text (--arg X --arg Y), kept in
// order; any text is a value, an empty one and one starting with "-" too.
type strList struct {
	v     []string
	given bool
}

func (l *strList) String() string {
	if l == nil {
		return ""
	}
	return strings.Join(l.v, " ")
}

func (l *strList) Set(v string) error {
	l.v, l.given = append(l.v, v), true
	return nil
}

func (f *cmdFlags) strs(name, arg, usage string) *strList {
	l := &strList{}
	f.Var(l, name, "`"+arg+"`: "+usage)
	return l
}
