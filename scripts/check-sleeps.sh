#!/usr/bin/env bash
# Checks that no test orders events with a sleep (RULES: wait on the event — a signal, a
# bounded poll, paused time). Every `sleep(`/`sleep_until(` in test code — crates/*/tests,
# services/*/tests, src/testing.rs, the `#[cfg(test)]` part of each src file, and the Python
# tests — must carry a marker comment on its line or one of the 3 lines above:
#   // sleep: <why: the behaviour under test, virtual time, or a bounded poll's interval>
#   #  sleep: <why>                                                        (Python)
# An unmarked sleep fails CI with its file and line.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SLEEP='(^|[^[:alnum:]_])sleep(_until)?[[:space:]]*[(]'
MARKER='(//|#)[[:space:]]*sleep:'

# Lines of test code that call a sleep, as file:line.
sleeps() {
    grep -rnE --include='*.rs' --include='*.py' "$SLEEP" \
        crates/*/tests services/*/tests tests/python tests/*.py crates/*/src/testing.rs \
        services/*/src/testing.rs 2>/dev/null | cut -d: -f1,2 || true
    # Unit tests: from a file's first `#[cfg(test)]` on.
    { grep -rlE --include='*.rs' "$SLEEP" crates/*/src services/*/src || true; } | while read -r file; do
        [[ $file == */testing.rs ]] && continue
        awk -v re="$SLEEP" '/^[[:space:]]*#\[cfg\(test\)\]/ { t = 1 }
            t && $0 ~ re { print FILENAME ":" FNR }' "$file"
    done
}

found="$(sleeps | sort -t: -k1,1 -k2,2n -u)"
status=0
count=0
while IFS=: read -r file line; do
    count=$((count + 1))
    from=$((line > 3 ? line - 3 : 1))
    if ! sed -n "${from},${line}p" "$file" | grep -qE "$MARKER"; then
        echo "error: $file:$line: a sleep without a \`// sleep: <why>\` comment:" >&2
        sed -n "${line}p" "$file" | sed 's/^[[:space:]]*/  /' >&2
        status=1
    fi
done <<<"$found"

if [[ $status -ne 0 ]]; then
    echo "Tests wait on the event (a signal, a bounded poll, paused time), not a sleep; a sleep" >&2
    echo "that is the behaviour under test, or a bounded poll's interval, says so: // sleep: <why>" >&2
else
    echo "$count sleeps in tests, each marked with why"
fi
exit "$status"
