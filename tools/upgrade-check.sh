#!/usr/bin/env bash
# `make upgrade-check`: the newest releases pyproject.toml allows (UPGRADE_BOUNDS=lift: with the upper
# bounds removed) in a scratch venv, compared with requirements.lock; then `bwp compat` (which upstream
# functions changed, per library) and the whole test suite there (UPGRADE_TESTS=compat: only the compat
# fingerprint tests). Never touches .venv or the lock.
# Exit status: that of the test suite (1 also when bwp compat finds an untested or changed library).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
UV=${UV:?UV: path of the uv binary (the Makefile sets it)}
DIR=.upgrade
BOUNDS=${UPGRADE_BOUNDS:-keep}
rm -rf "$DIR" && mkdir -p "$DIR"
started=$(date +%s)

# 1. what to resolve: pyproject.toml's ranges, or the same with every upper bound removed
"$PYTHON" - "$BOUNDS" > "$DIR/requirements.in" <<'PY'
import re, sys, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = list(project["dependencies"]) + [d for e in ("test", "lint") for d in project["optional-dependencies"][e]]
for dep in deps:
    if sys.argv[1] == "lift":
        name, rest = re.match(r"\s*([A-Za-z0-9._-]+)\s*(.*)", dep).groups()
        dep = name + ",".join(p for p in rest.split(",") if p.strip() and not p.strip().startswith("<"))
    print(dep)
PY
echo "== resolving the newest releases ($BOUNDS upper bounds) into $DIR/requirements.txt"
"$UV" pip compile -q "$DIR/requirements.in" --upgrade --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
  -o "$DIR/requirements.txt" || { echo "upgrade-check: resolution failed"; exit 2; }

# 2. what would change against the lock
"$PYTHON" - <<'PY'
import re
def pins(path):
    out = {}
    for line in open(path):
        m = re.match(r"^([A-Za-z0-9._-]+)==([^\s\\;]+)", line)
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out
old, new = pins("requirements.lock"), pins(".upgrade/requirements.txt")
changed = [(k, old.get(k, "-"), new.get(k, "-")) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
print(f"== {len(changed)} package(s) differ from requirements.lock")
for k, a, b in changed:
    print(f"   {k:<32} {a:>14} -> {b}")
PY

# 3. a scratch venv with those releases and bwp (editable, this checkout)
"$PYTHON" -m venv "$DIR/venv"
VIRTUAL_ENV="$DIR/venv" "$UV" pip sync -q "$DIR/requirements.txt" || { echo "upgrade-check: install failed"; exit 2; }
VIRTUAL_ENV="$DIR/venv" "$UV" pip install -q --no-deps -e . || exit 2

# 4. which upstream functions changed, per library
echo "== bwp compat (the compatibility modules against the installed releases)"
"$DIR/venv/bin/bwp" compat; compat_rc=$?

# 5. the fingerprint tests, then (UPGRADE_TESTS=all, the default) the whole suite, in the scratch venv
echo "== compat fingerprint tests"
"$DIR/venv/bin/python" -m pytest -q -ra -p no:cacheprovider tests -k "compat" -m "not integration"; suite_rc=$?
if [ "${UPGRADE_TESTS:-all}" = all ]; then
  echo "== the whole test suite"
  BWP_UPGRADE_CHECK=1 "$DIR/venv/bin/python" -m pytest -q -ra -p no:cacheprovider; suite_rc=$?
fi
echo "== upgrade-check: suite exit $suite_rc, bwp compat exit $compat_rc, $(( $(date +%s) - started )) s"
echo "   to take the upgrade: docs/architecture.md, Taking an upgrade (review, fingerprints, bounds, make lock)"
[ "$suite_rc" = 0 ] && [ "$compat_rc" = 0 ]
