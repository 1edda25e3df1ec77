#!/usr/bin/env bash
# Issue #36's GPU rows in one command (benchmarks/gpu_rows.py says which rows and limits).
#
# On a lent GPU machine (the device tool's run; ~9 minutes, results into $OUT):
#     bash benchmarks/gpu_rows.sh                       with carry [".gpu-deps"]
# Here, the same steps tiny on the CPU (~5 minutes on the 2-core box):
#     GPU_ROWS_DEVICE=cpu GPU_ROWS_SCALE=tiny bash benchmarks/gpu_rows.sh
#
# What the GPU machine needs: its image's python3 (3.12, with torch, numpy, matplotlib, psutil,
# aiohttp), the working tree, and .gpu-deps/ carried beside it, built here beforehand by
# `bash benchmarks/gpu_deps.sh` (Flower, Ray, Hydra, constriction... at this venv's versions,
# ~53 MB; .gpu-deps/pfl/: pfl-research for benchmarks/peers.py's pfl rows). They are unpacked
# into folders outside the tree; nothing else is installed, and nothing is fetched. Where
# .venv/bin/python exists (here) it runs everything instead; GPU_ROWS_PYTHON=PATH runs that
# Python with .gpu-deps unpacked beside it, as the GPU machine does.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${GPU_ROWS_PYTHON:-}" ] && [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python
else
    PYTHON=${GPU_ROWS_PYTHON:-python3}
    if [ ! -d .gpu-deps ]; then
        echo "no .gpu-deps/: build it with 'bash benchmarks/gpu_deps.sh' and carry it" >&2
        exit 2
    fi
    SITE=${GPU_ROWS_SITE:-/tmp/gpu-rows-site}
    if [ ! -f "$SITE/.complete" ]; then
        rm -rf "$SITE" && mkdir -p "$SITE"
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
            --target "$SITE" .gpu-deps/wheels/*.whl
        tar -xJf .gpu-deps/ray.tar.xz -C "$SITE"
        touch "$SITE/.complete"
    fi
    if [ -d .gpu-deps/pfl ]; then  # pfl's Python for peers.py: the image's, with pfl beside it
        "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check \
            --upgrade --target "$SITE-pfl" .gpu-deps/pfl/*.whl
        printf '#!/bin/sh\nPYTHONPATH=%s exec %s "$@"\n' "$SITE-pfl" "$(command -v "$PYTHON")" \
            >"$SITE-pfl/python"
        chmod +x "$SITE-pfl/python"
        export GPU_ROWS_PFL_PYTHON="$SITE-pfl/python"
    fi
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m benchmarks.gpu_rows
