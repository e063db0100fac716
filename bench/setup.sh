#!/usr/bin/env bash
# Installs what bench/run.py needs (idempotent; root, or sudo, on Debian/Ubuntu):
#   nginx-light (the source server), wget2, curl, rclone, aria2 (the peers), GNU time (peak RSS
#   of the peers), util-linux (fincore); the project's .venv (uv sync); and warms uv's cache
#   with matplotlib, which bench/plot.py runs in a throwaway environment: never in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
pkgs=(nginx-light wget2 curl rclone aria2 util-linux time)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian package starts a system nginx on port 80; the benchmark runs its own instance.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet nginx 2>/dev/null; then
  $SUDO systemctl stop nginx || true
fi
command -v uv >/dev/null 2>&1 || python3 -m pip install --quiet uv 2>/dev/null \
  || python3 -m pip install --quiet --break-system-packages uv
uv sync --frozen --quiet
uv run --no-project --quiet --with matplotlib python -c "import matplotlib" \
  || echo "warning: matplotlib could not be installed; the benchmark will skip results.png" >&2
# Benchmark (g), bench/hf.py: huggingface_hub >= 1.0 no longer uses hf_transfer, so its
# "with hf_transfer" runs use the last 0.x release in a venv of their own, outside the project.
HF_VENV=/var/tmp/aisdl-bench-hf/venv-hft
if [ ! -x "$HF_VENV/bin/python" ]; then
  uv venv -q "$HF_VENV" --python 3.11
  VIRTUAL_ENV="$HF_VENV" uv pip install -q "huggingface_hub==0.36.0" "hf_transfer==0.1.9"
fi
for t in nginx wget2 curl rclone aria2c; do command -v "$t" >/dev/null || { echo "missing $t" >&2; exit 1; }; done
echo "bench set-up done: $(nginx -v 2>&1); $(wget2 --version | head -1); $(curl --version | head -1 | cut -d' ' -f1-2); $(rclone version | head -1); $(aria2c --version | head -1)"
