#!/usr/bin/env bash
# The test suite under a real Windows CPython (Wine; .ci/windows/setup.sh makes it, and is
# run first). ./run-tests runs this beside the Linux suite; alone:
#
#   .ci/windows/run-tests.sh                      # the non-client suite, every test file
#   FILES="test_cache.py test_cli.py" .ci/windows/run-tests.sh -k netrc -x
#
# Arguments go to pytest. FILES chooses test files (default: pyproject's testpaths),
# MARKERS the marker expression (default "not clients": the client tests build virtualenvs
# of packaging tools, which is not what this run is for), JOBS how many files run at once
# (default 2). Each file runs in its own pytest, as Wine's processes are slow to start
# but a whole suite in one process is slow to finish. The checkout is copied first (tracked
# and untracked files that git does not ignore), so Wine never writes into it.
# Exit status 0 when every selected test passed; the last line is the plain count.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT=$(cd "$HERE/../.." && pwd)
STATE=${WINDOWS_PYTHON_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/artifactregistry-gauth-windows}
export WINEPREFIX=$STATE/prefix WINEDEBUG=-all
WINESERVER=/usr/lib/wine/wineserver
WORK=$STATE/work
RESULTS=$STATE/results
MARKERS=${MARKERS-not clients}
JOBS=${JOBS:-2}

winpy=$("$HERE/setup.sh" | tail -1)

# One wineserver for the whole run, started apart from our pipes: else every pytest pays
# for Wine's start, and the services it starts keep our output pipe open until they end.
"$WINESERVER" -k >/dev/null 2>&1 </dev/null || true  # a leftover of this prefix
"$WINESERVER" -p >/dev/null 2>&1 </dev/null
/usr/lib/wine/wine64 wineboot >/dev/null 2>&1 </dev/null || true
trap '"$WINESERVER" -k >/dev/null 2>&1 || true' EXIT

rm -rf "$WORK" "$RESULTS"
mkdir -p "$WORK" "$RESULTS"
if git -C "$PROJECT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$PROJECT" ls-files -z --cached --others --exclude-standard |
        (cd "$PROJECT" && tar --null --ignore-failed-read -T - -cf -) | tar -xf - -C "$WORK"
else
    tar -C "$PROJECT" --exclude=.venv --exclude=.nox --exclude=.git -cf - . | tar -xf - -C "$WORK"
fi
winpath() { printf 'Z:%s' "${1//\//\\}"; }

# Editable: keyring finds the backend through the entry point, the tests import the copy.
(cd "$WORK" && "$winpy" -m pip install --quiet --disable-pip-version-check --no-deps \
    --no-build-isolation --no-warn-script-location -e "$(winpath "$WORK")" >"$RESULTS/install.log" 2>&1) ||
    { cat "$RESULTS/install.log" >&2; exit 1; }

if [ -n "${FILES:-}" ]; then
    read -r -a files <<<"$FILES"
else
    mapfile -t files < <(cd "$WORK" && python3 -c '
import re
text = open("pyproject.toml").read()
print("\n".join(re.findall(r"\"(test_\w+\.py)\"", text.split("testpaths", 1)[1].split("]", 1)[0])))')
fi

run_file() {
    local file=$1 name=${1%.py} start=$SECONDS status=0
    (cd "$WORK" && timeout 1500 "$winpy" -m pytest -p no:cacheprovider -q -rfEx \
        ${MARKERS:+-m "$MARKERS"} --junitxml="$(winpath "$RESULTS/$name.xml")" "${@:2}" "$file" \
        </dev/null >"$RESULTS/$name.log" 2>&1) || status=$?
    [ "$status" -eq 5 ] && status=0  # every test of the file deselected
    printf 'windows: %-30s %4ss  %s\n' "$file" "$((SECONDS - start))" "$(tail -1 "$RESULTS/$name.log")"
    return "$status"
}
export -f run_file winpath
export WORK RESULTS MARKERS winpy

echo "windows: pytest under $("$winpy" -c 'import sys; print(sys.platform, sys.version.split()[0])') (Wine), ${#files[@]} files, $JOBS at a time"
printf '%s\0' "${files[@]}" | xargs -0 -P "$JOBS" -I{} bash -c 'run_file "$@"' _ {} "$@" || true

python3 - "$RESULTS" "${files[@]}" <<'EOF'
import glob
import os
import sys
import xml.etree.ElementTree as ET

counts = dict.fromkeys(("passed", "failed", "skipped", "xfailed"), 0)
failures = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.xml"))):
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if problem is not None:
            counts["failed"] += 1
            first = (problem.get("message") or "").splitlines()[:1]
            failures.append(f"FAILED {name}: {first[0][:200] if first else ''}")
        elif skipped is not None:
            counts["xfailed" if skipped.get("type") == "pytest.xfail" else "skipped"] += 1
        else:
            counts["passed"] += 1
for file in sys.argv[2:]:  # a pytest that was killed (timeout 1500 s) leaves no report
    if not os.path.exists(os.path.join(sys.argv[1], file[: -len(".py")] + ".xml")):
        failures.append(f"{file}: no report (see {file[: -len('.py')]}.log)")
        counts["failed"] += 1
print("\n".join(f"windows: {line}" for line in failures))
print(f"windows: logs in {sys.argv[1]}; {counts['xfailed']} xfailed (Wine gaps)")
# The plain closing line, last.
print(f"windows: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
sys.exit(1 if counts["failed"] else 0)
EOF
