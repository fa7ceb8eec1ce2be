#!/usr/bin/env bash
# The peer model servers of benchmarks/serve_overhead.py, each in its own virtual environment
# (.bench-venvs/litserve, .bench-venvs/bentoml, git-ignored) so that their dependencies never move
# the project's pinned packages.  Both get the project's numpy, Pillow, onnxruntime and torch
# releases: the tb preprocessing (models.transforms.to_model_input, imported with PYTHONPATH=<repo>)
# resizes with torch, and the same releases keep the comparison about the servers alone.
#
#   bash benchmarks/peers/setup.sh [litserve] [bentoml]      # default: both; REBUILD=1 remakes them
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENVS="$ROOT/.bench-venvs"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

# The servers' releases this comparison was written against.
LITSERVE="litserve==0.2.19"
BENTOML="bentoml==1.4.40"
# LitServe parses multipart uploads with Starlette, which needs it (BentoML brings its own).
MULTIPART="python-multipart==0.0.34"

project_release() {  # the release of module $1 in the project's virtual environment (onnxruntime
    # there may be onnxruntime-gpu: the peers get the CPU package of the same release)
    "$ROOT/.venv/bin/python" -c "import $1; print($1.__version__.split('+')[0])"
}
COMMON=("numpy==$(project_release numpy)" "pillow==$(project_release PIL)"
        "onnxruntime==$(project_release onnxruntime)" "torch==$(project_release torch)")

make_venv() {  # make_venv NAME PACKAGE...; kept when it holds these packages already
    local name=$1; shift
    if [ -z "${REBUILD:-}" ] && [ -f "$VENVS/$name/requirements.lock" ] && all_pinned "$name" "$@"; then
        echo "$VENVS/$name is up to date (REBUILD=1 to make it again)"; return
    fi
    echo "creating $VENVS/$name: $* ${COMMON[*]}"
    rm -rf "$VENVS/$name"
    "$PYTHON" -m venv "$VENVS/$name"
    "$VENVS/$name/bin/python" -m pip install --quiet "$@" "${COMMON[@]}"
    "$VENVS/$name/bin/python" -m pip freeze > "$VENVS/$name/requirements.lock"
}

all_pinned() {  # all_pinned NAME PACKAGE...: every pin is in NAME's requirements.lock
    local name=$1; shift
    local pin
    for pin in "$@" "${COMMON[@]}"; do
        grep -qiE "^${pin//./\\.}(\\+[a-z0-9.]+)?$" "$VENVS/$name/requirements.lock" || return 1  # local tags (+cpu) too
    done
}

peers=("$@")
[ ${#peers[@]} -gt 0 ] || peers=(litserve bentoml)
for peer in "${peers[@]}"; do
    case "$peer" in
        litserve) make_venv litserve "$LITSERVE" "$MULTIPART" ;;
        bentoml) make_venv bentoml "$BENTOML" ;;
        *) echo "unknown peer '$peer': give litserve and/or bentoml" >&2; exit 2 ;;
    esac
done
