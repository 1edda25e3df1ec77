#!/usr/bin/env bash
# Builds .gpu-deps/ here: the Python packages benchmarks/gpu_rows.sh needs on a lent GPU machine
# beyond that machine's image, at this checkout's venv versions, for the image's Python 3.12.
#
#     bash benchmarks/gpu_deps.sh          # ~3 min, once per machine; then carry .gpu-deps
#
# Why: the device machine gets the working tree and at most 64 MiB with it, and reaches no
# registry. Its image holds torch, numpy, matplotlib, aiohttp and the like, but not Flower, Ray,
# Hydra or constriction. .gpu-deps/wheels/ holds every distribution a fedsparse simulation
# imports that the image lacks (found by tracing the modules of a run, server and Ray actors),
# plus grpcio, protobuf, click, typer, rich and typing-extensions whose versions Flower is
# tested with; Ray's wheel (78 MB) is repacked without its Java jars, dashboard front end and
# libraries fedsparse never imports (rllib, tune, train, serve, data, llm, air) as ray.tar.xz.
# Nothing is added that the venv does not hold; a stripped Ray ran a fedsparse simulation here.
# .gpu-deps/pfl/ holds pfl-research and what it needs beyond the image, at the versions of pfl's
# own environment (PFL_PYTHON, default /work/pfl-venv; skipped without it), for
# benchmarks/peers.py's pfl rows on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
PFL_PYTHON=${PFL_PYTHON:-/work/pfl-venv/bin/python}
DEST=.gpu-deps
NAMES=(
    alembic annotated-doc annotated-types cffi click constriction cryptography fastapi flwr
    greenlet grpcio grpcio-health-checking hydra-core iterators jsonschema
    jsonschema-specifications mako omegaconf opentelemetry-api opentelemetry-proto
    opentelemetry-sdk opentelemetry-semantic-conventions protobuf pycparser pycryptodome pydantic
    pydantic-core python-multipart ray referencing rich rpds-py sqlalchemy starlette tomli
    tomli-w typer typing-extensions typing-inspection wcwidth
)
SDIST_ONLY=(antlr4-python3-runtime)  # published without a wheel: built here (pure Python)
PFL_NAMES=(pfl dp-accounting dm-tree dill multiprocess prv-accountant)
RAY_DROP=(jars rllib tune train serve data llm air dashboard/client/build)

pins() {  # NAME==VERSION of each name, as the Python in $VENV holds it
    "${VENV:-$PYTHON}" -c 'import sys, importlib.metadata as m
print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' "$@"
}
download() {  # the wheels of the pins in $@ for the image's Python, into $DEST/$1
    local folder=$1
    shift
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST/$folder" "$@"
}

rm -rf "$DEST" && mkdir -p "$DEST/wheels"
# shellcheck disable=SC2046  # one word per pin
download wheels $(pins "${NAMES[@]}")
# shellcheck disable=SC2046
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST/wheels" $(pins "${SDIST_ONLY[@]}")

ray_wheel=$(ls "$DEST"/wheels/ray-*.whl)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m zipfile -e "$ray_wheel" "$work"
for part in "${RAY_DROP[@]}"; do rm -rf "${work:?}/ray/$part"; done
chmod +x "$work"/ray/core/src/ray/raylet/raylet "$work"/ray/core/src/ray/gcs/gcs_server
(cd "$work" && tar -cf - ray ray-*.dist-info) | xz -T0 -6 >"$DEST/ray.tar.xz"
rm "$ray_wheel"

if [ -x "$PFL_PYTHON" ]; then
    # shellcheck disable=SC2046
    download pfl $(VENV=$PFL_PYTHON pins "${PFL_NAMES[@]}")
fi
du -sh "$DEST"/*
