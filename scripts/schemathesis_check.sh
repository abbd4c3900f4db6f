#!/usr/bin/env bash
# Schemathesis against a live server: it reads /v1/openapi.json, generates
# requests for every operation (valid and invalid), and fails on any 5xx and on
# any response whose status, content type, headers or body the document does not
# allow. Run by .ci/run; by hand: `cargo build && bash scripts/schemathesis_check.sh`.
#
# Environment: OPSYNC_BIN (default target/debug/opsync), ST_MAX_EXAMPLES (per
# operation, default 100), ST_SEED (replay a run's seed).
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${OPSYNC_BIN:-target/debug/opsync}"
version="4.32.5"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/opsync-schemathesis-$version"
if [ ! -x "$venv/bin/schemathesis" ]; then
    echo "installing schemathesis $version into $venv"
    python3 -m venv "$venv" 2>/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    }
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

dir="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
# Long-polls capped at 1 s, so generated `wait` values do not hold the run up.
printf '[realtime]\nmax_wait_secs = 1\n' >"$dir/opsync.toml"
"$bin" --data-dir "$dir" --config "$dir/opsync.toml" --listen 127.0.0.1:0 serve >"$dir/serve.log" 2>&1 &
pid=$!
url=""
for _ in $(seq 1 50); do
    url="$(grep -o 'opsync is listening on http://[0-9.:]*' "$dir/serve.log" | awk '{print $NF}' || true)"
    [ -n "$url" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
done
[ -n "$url" ] || { cat "$dir/serve.log" >&2; echo "the server did not start" >&2; exit 1; }

user_token="$("$bin" --data-dir "$dir" token issue --user schemathesis)"
admin_token="$("$bin" --data-dir "$dir" token issue --user schemathesis-admin --admin)"
checks="not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance"
run() {
    (cd "$dir" && "$venv/bin/schemathesis" run "$url/v1/openapi.json" --checks "$checks" \
        --max-examples "${ST_MAX_EXAMPLES:-100}" --workers 1 ${ST_SEED:+--seed "$ST_SEED"} "$@")
}
echo "every operation, with a user's token"
run -H "Authorization: Bearer $user_token"
echo "the admin operations, with an admin token"
run -H "Authorization: Bearer $admin_token" --include-tag admin
if grep -q ' ERROR ' "$dir/serve.log"; then
    grep ' ERROR ' "$dir/serve.log" | head -20 >&2
    echo "the server logged errors during the run" >&2
    exit 1
fi
