#!/usr/bin/env bash
# Installs what benchmarks/serving.py compares against, outside the repo and outside the project's
# venv (their pins conflict with ours): wrk from Debian, and one venv each for MLServer (with
# mlserver-sklearn) and KServe's Python model server, under ~/.cache/kiln/bench-venvs.
# scikit-learn is pinned to the project venv's version so every server loads the same model file.
set -euo pipefail
KILN_CACHE=${KILN_CACHE:-$HOME/.cache/kiln}
venvs=$KILN_CACHE/bench-venvs
kiln_py=${KILN_PY:-$KILN_CACHE/venv/bin/python}
sklearn=$("$kiln_py" -c 'import sklearn; print(sklearn.__version__)')
if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null; fi
fi
mkdir -p "$venvs"
install() {  # name, packages...
  local name=$1; shift
  local stamp="$venvs/$name/.kiln-stamp" want="$* scikit-learn==$sklearn"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return; fi
  echo "[bench] installing $want into $venvs/$name" >&2
  python3 -m venv "$venvs/$name"
  "$venvs/$name/bin/pip" install -q --upgrade pip >&2
  "$venvs/$name/bin/pip" install -q "$@" "scikit-learn==$sklearn" >&2
  echo "$want" > "$stamp"
}
# uvloop 0.22 made get_event_loop() raise outside a running loop, which MLServer 1.7.1's inference
# workers call at start: pin the uvloop of MLServer's release time.
install mlserver "mlserver==1.7.1" "mlserver-sklearn==1.7.1" "uvloop==0.21.0"
install kserve "kserve==0.21.0"
echo "$venvs"
