#!/bin/sh
# Runs the example images under dustrun and checks what they produce.
# usage: run_examples.sh DUSTRUN EXAMPLES_DIR WORK_DIR
run=$1 ex=$2 w=$3
fail=0 n=0
mkdir -p "$w"

# expect NAME CONDITION...: each condition is "grep PATTERN FILE" style,
# evaluated by the shell; prints the report on failure.
ok() { n=$((n + 1)); }
bad() { n=$((n + 1)); fail=$((fail + 1)); echo "FAIL $1"; [ -f "$w/rep" ] && cat "$w/rep"; }
check() { name=$1; shift; if "$@"; then ok; else bad "$name"; fi; }
rep() { grep -q -- "$1" "$w/rep"; }

go() { "$run" -r "$w/rep" "$@" >"$w/out" 2>"$w/err"; }

go "$ex/hello/hello.elf"
printf 'Content-Type: text/plain\r\n\r\nHello, world!\n' > "$w/want"
check "hello output" cmp -s "$w/out" "$w/want"
check "hello: normal exit, exactly one VM exit" rep "reason=normal status=0 exits=1 "

head -c 3000000 /dev/urandom > "$w/body"
go -b "$w/body" -i 1000 -e REQUEST_METHOD=POST -e PATH_INFO=/a/b -e QUERY_STRING=x=1 \
	-e CONTENT_LENGTH=3000000 -e HTTP_X_FOO=bar -e SERVER_NAME=s -e HTTP_HOST=h "$ex/echo/echo.elf"
printf 'Content-Type: text/plain\r\n\r\nmethod=POST\npath=/a/b\nquery=x=1\ncontent_length=3000000\nheader HTTP_X_FOO=bar\nheader HTTP_HOST=h\nbody:\n' > "$w/want"
cat "$w/body" >> "$w/want"
check "echo output (3 MB body, 1000 bytes inline)" cmp -s "$w/out" "$w/want"
check "echo exit" rep "reason=normal status=0"
go -e REQUEST_METHOD=GET "$ex/echo/echo.elf"
check "echo without body: one VM exit" rep "reason=normal status=0 exits=1 "

for size in 0 1 64 65536 65537 1000000; do
	head -c $size "$w/body" > "$w/b"
	go -b "$w/b" "$ex/sha256/sha256.elf"
	want=$(sha256sum < "$w/b" | cut -d' ' -f1)
	check "sha256 of $size bytes" grep -qx "$want" "$w/out"
done

go "$ex/exitcode/exitcode.elf"
check "exitcode" rep "reason=normal status=3 exits=1 "
check "exitcode output" grep -q "exiting with status 3" "$w/out"

go "$ex/crash/crash.elf";     check "crash faults" rep "reason=fault .*signal 11"
check "crash: unflushed output is not delivered" test ! -s "$w/out"
go "$ex/illegal/illegal.elf"; check "illegal faults" rep "reason=fault .*signal 4"
go -t 1 "$ex/loop/loop.elf";  check "loop times out" rep "reason=timeout"
go -m 16 "$ex/oom/oom.elf";   check "oom ends with OOM" rep "reason=oom status=137 exits=1 "
check "oom message" grep -q "out of memory" "$w/err"
go -o 1000000 "$ex/flood/flood.elf"; check "flood hits output limit" rep "reason=outlimit"
go -l 100000 "$ex/logflood/logflood.elf"; check "logflood hits log limit" rep "reason=errlimit"
go "$ex/badptr/badptr.elf";   check "badptr rejected" rep "reason=badcall .*0xfffffffff000"
go -e QUERY_STRING=q1 "$ex/secret/secret.elf"
check "secret clean" grep -q "^memory=clean" "$w/out"
check "secret regs clean" grep -q "^regs=clean" "$w/out"
check "secret exit" rep "reason=normal status=0"

seq -f 'line %.0f' 1 20000 > "$w/lines"
go -b "$w/lines" -i 5000 -e LINES=20000 "$w/selftest.elf"
check "selftest passes" grep -q "selftest: [0-9]* checks, 0 failures, 20000 lines" "$w/out"
check "selftest: write() keeps order with printf" grep -q "^order:ABC$" "$w/out"
check "selftest: atexit" grep -q "^atexit ran$" "$w/out"
check "selftest: log" grep -q "selftest log line" "$w/err"
check "selftest exit" rep "reason=normal status=0"
[ -s "$w/err" ] && grep FAIL "$w/err"
go -e MODE=assert "$w/selftest.elf"
check "assert aborts" rep "reason=abort status=134 exits=1 "
check "assert message" grep -q "Assertion \`argc == 12345' failed" "$w/err"
go -e MODE=abort "$w/selftest.elf"
check "abort" rep "reason=abort status=134 exits=1 "
check "abort keeps buffered output" grep -q "Content-Type" "$w/out"

echo "run_examples: $n checks, $fail failures"
[ $fail = 0 ]
