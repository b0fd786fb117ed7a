#!/usr/bin/env bash
# Build the side virtual environment that runs LeRobot 0.4.4 for bench/peers (never the project's .venv:
# LeRobot 0.4.4 asks for torch<2.11, ours is pinned elsewhere).
#   bash bench/peers/setup_venv.sh [VENV]      (default bench/peers/.venv; git-ignored)
# Idempotent: a venv whose stamp matches this recipe is left alone.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${1:-$HERE/.venv}"
PY="${PYTHON:-python3.11}"
RECIPE="torch==2.14.1 torchvision==0.29.1 | $(sha256sum "$HERE/lerobot-requirements.txt" | cut -c1-16) | lerobot==0.4.4"
STAMP="$VENV/.peers-recipe"
if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]]; then
  echo "side venv ready: $VENV"; exit 0
fi
command -v "$PY" >/dev/null || { echo "error: $PY not found (LeRobot 0.4.4 needs Python 3.10-3.12)" >&2; exit 2; }
echo "building the LeRobot side venv in $VENV (torch and its libraries are a few GiB to download)"
"$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off)
"${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
"${PIP[@]}" -r "$HERE/lerobot-requirements.txt"
"${PIP[@]}" --no-deps "lerobot==0.4.4"
"$VENV/bin/python" - <<'PY'
import torch, lerobot
from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy
from lerobot.policies.act.modeling_act import ACTPolicy
from lerobot.datasets.lerobot_dataset import LeRobotDataset
import av
print(f"side venv ok: lerobot {lerobot.__version__}, torch {torch.__version__}, av {av.__version__}")
PY
echo "$RECIPE" > "$STAMP"
