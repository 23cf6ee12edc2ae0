#!/usr/bin/env bash
# The API reference (`make api-docs`): pdoc renders the public API, the members of `splitshield.__all__` and their
# docstrings (Google-style Args/Returns, reST literals), into static HTML. Any warning pdoc prints (an unresolvable
# `__all__` name, a docstring it cannot parse, an import error) fails the build.
#
#   bash scripts/api-docs.sh [OUT]     # OUT defaults to build/api-docs (open OUT/index.html)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
OUT=${1:-build/api-docs}
ERR=$(mktemp "${TMPDIR:-/tmp}/api-docs.XXXXXX")
trap 'rm -f "$ERR"' EXIT

rm -rf "$OUT"
if ! "$PYTHON" -m pdoc --docformat google splitshield --output-directory "$OUT" 2>"$ERR"; then
    cat "$ERR" >&2
    echo "api-docs: FAILED: pdoc exited with an error (above)" >&2
    exit 1
fi
if [ -s "$ERR" ]; then
    cat "$ERR" >&2
    echo "api-docs: FAILED: pdoc printed warnings (above); fix the docstrings or __all__" >&2
    exit 1
fi
echo "api-docs: $OUT/index.html ($(ls "$OUT" | wc -l) files)"
