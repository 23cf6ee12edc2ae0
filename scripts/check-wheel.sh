#!/usr/bin/env bash
# The wheel check (CI, `make wheel-check`): build an sdist and a wheel from this checkout with `python -m build`
# (the wheel is built from the sdist, so a file missing from the sdist fails here), install the wheel with its
# dependencies from the registry into a fresh virtual environment (no system site-packages, no checkout on the
# path), and run the installed package from a folder outside the checkout: `splitshield --help`, its version and
# example (a), CI-sized. Also checks py.typed is shipped in both and tests/ is not in the wheel.
#
#   bash scripts/check-wheel.sh            # BUILD_PYTHON: the interpreter with `build` (default .venv/bin/python)
#                                          # VENV_PYTHON: the interpreter of the fresh venv (default python3)
# Any failure ends with one line: "check-wheel: FAILED at step: <step>".
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BUILD_PYTHON=${BUILD_PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
VENV_PYTHON=${VENV_PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/splitshield-wheel.XXXXXX")
LOG=$TMP/step.log
STEP="start"
start=$SECONDS
on_exit() {
    local status=$?
    if [ "$status" -ne 0 ]; then
        if [ -s "$LOG" ]; then tail -n 40 "$LOG" >&2; fi
        echo "check-wheel: FAILED at step: $STEP (exit $status)" >&2
    fi
    rm -rf "$TMP"
}
trap on_exit EXIT

step() { STEP=$1; : >"$LOG"; echo "check-wheel: [$((SECONDS - start)) s] $STEP" >&2; }
quiet() { "$@" >"$LOG" 2>&1; }  # output shown only if the command fails

step "read the source version (src/splitshield/_version.py)"
version=$("$BUILD_PYTHON" -c 'import re, sys
print(re.search(r"__version__ = \"([^\"]+)\"", open(sys.argv[1]).read())[1])' src/splitshield/_version.py)

step "python -m build (sdist, then the wheel from the sdist)"
quiet "$BUILD_PYTHON" -m build --outdir "$TMP/dist" "$ROOT"
sdist=$(ls "$TMP"/dist/splitshield-"$version".tar.gz)
wheel=$(ls "$TMP"/dist/splitshield-"$version"-py3-none-any.whl)

step "sdist contents: src/splitshield/py.typed"
tar -tzf "$sdist" >"$TMP/sdist.txt"
grep -qx "splitshield-$version/src/splitshield/py.typed" "$TMP/sdist.txt"

step "wheel contents: splitshield/py.typed, no tests/"
"$BUILD_PYTHON" -c 'import sys, zipfile; print("\n".join(zipfile.ZipFile(sys.argv[1]).namelist()))' "$wheel" \
    >"$TMP/wheel.txt"
grep -qx "splitshield/py.typed" "$TMP/wheel.txt"
if grep -q "^tests/" "$TMP/wheel.txt"; then grep "^tests/" "$TMP/wheel.txt" | head -n 5 >&2; false; fi

step "fresh venv ($VENV_PYTHON -m venv, no system site-packages)"
quiet "$VENV_PYTHON" -m venv "$TMP/venv"
quiet "$TMP/venv/bin/python" -m pip install --upgrade pip

step "pip install the wheel -c constraints.txt (dependencies from the registry)"
quiet "$TMP/venv/bin/python" -m pip install -c "$ROOT/constraints.txt" "$wheel"

# From here on: outside the checkout, nothing of it on the path, so only the installed package can be imported.
cp examples/cem_in_your_loop.py "$TMP/"
cd "$TMP"
unset PYTHONPATH
export PATH="$TMP/venv/bin:$PATH"

step "splitshield --help"
splitshield --help >/dev/null

step "the installed package and its version ($version)"
got=$(python -c 'import splitshield, sys; assert splitshield.__file__.startswith(sys.prefix), splitshield.__file__
print(splitshield.__version__)')
[ "$got" = "$version" ]

step "example (a): cem_in_your_loop.py, CI-sized"
python cem_in_your_loop.py --epochs 4 --batch-size 32 --attack-epochs 2 --train-size 256 --test-size 128

STEP="done"
echo "check-wheel: OK: splitshield $version, $(basename "$sdist") and $(basename "$wheel") ($((SECONDS - start)) s)" >&2
