#!/usr/bin/env bash
# Create isolated virtualenvs for the peer tools used in side-by-side benchmarks.
#
#   bash benchmarks/peers/setup.sh llmc        # llm-compressor 0.14 -> .venv-peers/llmc
#   bash benchmarks/peers/setup.sh gptqmodel   # gptqmodel          -> .venv-peers/gptqmodel (see README)
#   bash benchmarks/peers/setup.sh trl         # TRL's SFTTrainer   -> .venv-peers/trl
#   bash benchmarks/peers/setup.sh llamacpp    # llama.cpp tools    -> .venv-peers/llamacpp/bin
#   bash benchmarks/peers/setup.sh guidellm    # GuideLLM (load)    -> .venv-peers/guidellm
#   FORCE=1 bash benchmarks/peers/setup.sh llmc   # rebuild even if the stamp exists
#
# Each venv is separate from the main .venv because the peers pin their own
# transformers / compressed-tensors versions.  torch is installed FIRST and
# pinned to the CPU build (torch==2.13.0+cpu): an unpinned
# `torch` or an open range lets pip pick a newer CUDA build of several GB.
# A stamp file (<venv>/.slmkit-peer-stamp) records the requirement set; if it
# matches, the script does nothing (idempotent).
#
# `llamacpp` is not a venv: it builds llama.cpp's command-line tools with cmake
# from the llama.cpp source vendored in the pinned llama-cpp-python sdist (the
# same source the `slmkit[llamacpp]` binding compiles), CPU only, static libs,
# so the binaries in .venv-peers/llamacpp/bin run on their own.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PEERS="${PEERS_DIR:-$ROOT/.venv-peers}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

TORCH_PIN="torch==2.13.0"
LLMC_PINS=("llmcompressor==0.14.0.1")
GPTQMODEL_PINS=("gptqmodel==7.6.0")  # 7.7.0 needs torch>=2.14.1 (see README)
GUIDELLM_PINS=("guidellm==0.8.1")
TRL_PINS=("trl==1.16.*" "transformers==5.23.*" "datasets==5.2.*")
LLAMACPP_PY_VERSION="0.3.36"   # llama-cpp-python sdist whose vendor/llama.cpp is built
LLAMACPP_TARGETS=(llama-quantize llama-imatrix llama-perplexity llama-bench llama-simple llama-completion llama-server)
LLAMACPP_CMAKE_ARGS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF)

usage() { echo "usage: $0 llmc|gptqmodel|trl|guidellm|llamacpp|all" >&2; exit 2; }

up_to_date() {  # name, stamp file, wanted stamp, where: true (and says so) unless FORCE or changed
    if [[ -z "${FORCE:-}" && -f "$2" && "$(cat "$2")" == "$3" ]]; then
        echo "[peers] $1: up to date ($4)"
        return 0
    fi
    return 1
}

make_venv() {  # name, then requirement strings
    local name="$1"; shift
    local venv="$PEERS/$name"
    local stamp="$venv/.slmkit-peer-stamp"
    local want="$TORCH_PIN $*"
    up_to_date "$name" "$stamp" "$want" "$venv" && return 0
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

build_llamacpp() {
    local out="$PEERS/llamacpp"
    local stamp="$out/.slmkit-peer-stamp"
    local want="llama-cpp-python==$LLAMACPP_PY_VERSION ${LLAMACPP_CMAKE_ARGS[*]} ${LLAMACPP_TARGETS[*]}"
    up_to_date llamacpp "$stamp" "$want" "$out/bin" && return 0
    command -v cmake >/dev/null 2>&1 || { echo "[peers] llamacpp: cmake missing (apt-get install -y cmake)" >&2; exit 1; }
    mkdir -p "$out" "$PEERS/cache"
    rm -f "$stamp"
    # 1) the sdist, cached: pip download prepares its metadata, so it fetches the build backend too.
    local sdist="$PEERS/cache/llama_cpp_python-$LLAMACPP_PY_VERSION.tar.gz"
    if [[ ! -f "$sdist" ]]; then
        "$PYTHON" -m pip download -q --no-deps --no-binary :all: \
            "llama-cpp-python==$LLAMACPP_PY_VERSION" -d "$PEERS/cache"
    fi
    # 2) the whole sdist is unpacked: its .git/modules/vendor/llama.cpp lets llama.cpp's
    #    build-info find the vendored commit (shown by `--version`).
    local src="$out/src/llama_cpp_python-$LLAMACPP_PY_VERSION"
    if [[ -n "${FORCE:-}" || ! -f "$src/vendor/llama.cpp/CMakeLists.txt" ]]; then
        rm -rf "$out/src" "$out/build"
        mkdir -p "$out/src"
        tar -xzf "$sdist" -C "$out/src"
    fi
    # 3) configure + build the tools only (-j2: the machine has 2 cores).
    [[ -z "${FORCE:-}" ]] || rm -rf "$out/build"
    local fresh=yes; [[ -d "$out/build" ]] && fresh="no (incremental)"
    local t0=$SECONDS
    echo "[peers] llamacpp: building ${LLAMACPP_TARGETS[*]} from $src/vendor/llama.cpp"
    cmake -S "$src/vendor/llama.cpp" -B "$out/build" "${LLAMACPP_CMAKE_ARGS[@]}" >"$out/cmake-configure.log" 2>&1 \
        || { tail -30 "$out/cmake-configure.log" >&2; exit 1; }
    cmake --build "$out/build" --config Release -j 2 --target "${LLAMACPP_TARGETS[@]}" >"$out/cmake-build.log" 2>&1 \
        || { tail -30 "$out/cmake-build.log" >&2; exit 1; }
    local secs=$((SECONDS - t0))
    mkdir -p "$out/bin"
    local t
    for t in "${LLAMACPP_TARGETS[@]}"; do cp -f "$out/build/bin/$t" "$out/bin/"; done
    local commit
    commit="$(git -C "$src/vendor/llama.cpp" rev-parse HEAD 2>/dev/null || echo unknown)"
    {
        echo "llama-cpp-python sdist: $LLAMACPP_PY_VERSION"
        echo "llama.cpp commit: $commit"
        echo "cmake args: ${LLAMACPP_CMAKE_ARGS[*]}"
        echo "targets: ${LLAMACPP_TARGETS[*]}"
        echo "build seconds (configure + build, -j2): $secs; fresh build dir: $fresh"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -m), $(nproc) cores"
    } > "$out/BUILD-INFO"
    # static llama/ggml: only system libs may be left to resolve, and the binary must start
    ldd "$out/bin/llama-quantize" | grep -q "not found" && { echo "[peers] llamacpp: unresolved libs" >&2; exit 1; }
    "$out/bin/llama-bench" --version 2>&1 | head -1
    echo "$want" > "$stamp"
    echo "[peers] llamacpp: ready ($out/bin, llama.cpp $commit, built in ${secs}s)"
}

[[ $# -ge 1 ]] || usage
for target in "$@"; do
    case "$target" in
        llmc) make_venv llmc "${LLMC_PINS[@]}" ;;
        gptqmodel) make_venv gptqmodel "${GPTQMODEL_PINS[@]}" ;;
        trl) make_venv trl "${TRL_PINS[@]}" ;;
        guidellm) make_venv guidellm "${GUIDELLM_PINS[@]}" ;;
        llamacpp) build_llamacpp ;;
        all) make_venv llmc "${LLMC_PINS[@]}"; make_venv gptqmodel "${GPTQMODEL_PINS[@]}" ;;
        *) usage ;;
    esac
done
