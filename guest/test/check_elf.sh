#!/bin/sh
# Checks with readelf that each image has the layout the monitor demands:
# three PT_LOADs (text, rodata, data) from 0x100000 on separate pages, none
# both writable and executable, no INTERP/DYNAMIC/TLS, and the Dust note.
fail=0
for f in "$@"; do
	out=$(readelf -lnW "$f") || { echo "FAIL $f: readelf"; fail=1; continue; }
	err=$(printf '%s\n' "$out" | awk '
		function hex(s,   i, v, c) {
			v = 0; s = tolower(s); sub(/^0x/, "", s)
			for (i = 1; i <= length(s); i++) {
				c = index("0123456789abcdef", substr(s, i, 1)) - 1
				v = v * 16 + c
			}
			return v
		}
		$1 == "LOAD" {
			n++; va = hex($3); mem = hex($6); flags = ""
			for (i = 7; i < NF; i++) flags = flags $i
			if (n == 1 && va != 1048576) print "first PT_LOAD not at 0x100000"
			if (va % 4096) print "PT_LOAD not page aligned"
			if (va < end) print "PT_LOADs share a page"
			end = int((va + mem + 4095) / 4096) * 4096
			if (index(flags, "W") && index(flags, "E")) print "W+X segment"
			if (n == 1 && flags != "RE") print "text segment flags " flags
			if (n == 2 && flags != "R") print "rodata segment flags " flags
			if (n == 3 && flags != "RW") print "data segment flags " flags
		}
		$1 == "INTERP" || $1 == "DYNAMIC" || $1 == "TLS" { print $1 " segment present" }
		$1 == "NOTE" { notes++ }
		/Dust +0x00000008.*0x31545344/ { dust++ }
		/description data: 01 00 00 00 00 00 00 00/ { desc++ }
		END {
			if (n != 3) print "expected 3 PT_LOAD, got " n
			if (notes != 1) print "expected 1 PT_NOTE, got " notes
			if (dust != 1 || desc != 1) print "Dust ABI note missing or wrong"
		}')
	if [ -n "$err" ]; then
		echo "FAIL $f: $err"
		fail=1
	fi
done
[ $fail = 0 ] && echo "check_elf: $# images OK"
exit $fail
