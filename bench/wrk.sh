#!/bin/sh
# Load runs with wrk against hello: Dust hvt through the gateway, a plain Go
# net/http handler, and Go's net/http/cgi starting the same C program as a
# static Linux process per request. Same machine, same run, one after the
# other. Usage: bench/wrk.sh [seconds] [connections]
set -eu
cd "$(dirname "$0")/.."
secs=${1:-10}; conns=${2:-16}
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install wrk)"; exit 1; }
make -s build examples
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
gcc -O2 -static -o "$tmp/hello" examples/hello/hello.c
go build -o "$tmp/baselines" ./bench/baselines
"$tmp/baselines" -plain 127.0.0.1:9080 -cgi 127.0.0.1:9081 -cgi-bin "$tmp/hello" &
bin/dust serve --demo --data "$tmp/data" --listen 127.0.0.1:9082 --admin 127.0.0.1:9083 --log-format json 2>/dev/null >/dev/null &
for i in $(seq 50); do curl -sf http://127.0.0.1:9082/hello >/dev/null && curl -sf http://127.0.0.1:9080/ >/dev/null && break; sleep 0.1; done
for t in "plain-go http://127.0.0.1:9080/" "cgi-process http://127.0.0.1:9081/" "dust-hvt http://127.0.0.1:9082/hello" "dust-wasm http://127.0.0.1:9082/wasm/hello"; do
	set -- $t
	curl -sf "$2" >/dev/null || { echo "$1: not served, skipped"; continue; }
	echo "== $1 ($2), ${secs}s, $conns connections"
	wrk -t 2 -c "$conns" -d "${secs}s" --latency "$2" | grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors"
done
