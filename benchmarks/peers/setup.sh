#!/usr/bin/env bash
# Create isolated virtualenvs for the peer tools used in side-by-side benchmarks.
#
#   bash benchmarks/peers/setup.sh llmc        # llm-compressor 0.14 -> .venv-peers/llmc
#   bash benchmarks/peers/setup.sh gptqmodel   # gptqmodel          -> .venv-peers/gptqmodel (see README)
#   bash benchmarks/peers/setup.sh trl         # TRL's SFTTrainer   -> .venv-peers/trl
#   FORCE=1 bash benchmarks/peers/setup.sh llmc   # rebuild even if the stamp exists
#
# Each venv is separate from the main .venv because the peers pin their own
# transformers / compressed-tensors versions.  torch is installed FIRST and
# pinned to the CPU build (torch==2.13.0+cpu): an unpinned
# `torch` or an open range lets pip pick a newer CUDA build of several GB.
# A stamp file (<venv>/.slmkit-peer-stamp) records the requirement set; if it
# matches, the script does nothing (idempotent).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS="${PEERS_DIR:-$ROOT/.venv-peers}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

TORCH_PIN="torch==2.13.0"
LLMC_PINS=("llmcompressor==0.14.0.1")
GPTQMODEL_PINS=("gptqmodel==7.6.0")  # 7.7.0 needs torch>=2.14.1 (see README)
TRL_PINS=("trl==1.16.*" "transformers==5.23.*" "datasets==5.2.*")

usage() { echo "usage: $0 llmc|gptqmodel|trl|all" >&2; exit 2; }

make_venv() {  # name, then requirement strings
    local name="$1"; shift
    local venv="$PEERS/$name"
    local stamp="$venv/.slmkit-peer-stamp"
    local want="$TORCH_PIN $*"
    if [[ -z "${FORCE:-}" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        echo "[peers] $name: up to date ($venv)"
        return 0
    fi
    echo "[peers] $name: creating $venv with $PYTHON"
    mkdir -p "$PEERS"
    rm -f "$stamp"
    [[ -x "$venv/bin/python" ]] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    # 1) torch first, CPU build only.
    "$venv/bin/python" -m pip install "$TORCH_PIN"
    # 2) the peer; the torch pin is repeated so the resolver cannot swap it.
    "$venv/bin/python" -m pip install "$TORCH_PIN" "$@"
    "$venv/bin/python" - <<'EOF'
import importlib.metadata as md
import torch
assert "+cpu" in torch.__version__ or not torch.version.cuda, f"non-CPU torch: {torch.__version__}"
for p in ("torch", "transformers", "compressed-tensors", "llmcompressor", "gptqmodel", "trl",
          "datasets", "accelerate", "auto-round"):
    try:
        print(f"[peers]   {p}=={md.version(p)}")
    except md.PackageNotFoundError:
        pass
EOF
    echo "$want" > "$stamp"
    echo "[peers] $name: ready ($venv)"
}

[[ $# -ge 1 ]] || usage
for target in "$@"; do
    case "$target" in
        llmc) make_venv llmc "${LLMC_PINS[@]}" ;;
        gptqmodel) make_venv gptqmodel "${GPTQMODEL_PINS[@]}" ;;
        trl) make_venv trl "${TRL_PINS[@]}" ;;
        all) make_venv llmc "${LLMC_PINS[@]}"; make_venv gptqmodel "${GPTQMODEL_PINS[@]}" ;;
        *) usage ;;
    esac
done
