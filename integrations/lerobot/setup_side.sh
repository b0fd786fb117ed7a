#!/usr/bin/env bash
# The LeRobot side venv with the plugins installed (what `make test-lerobot` runs in):
#   bash integrations/lerobot/setup_side.sh [VENV]      (default bench/peers/.venv; git-ignored)
# 1. bench/peers/setup_venv.sh: torch 2.14.1, LeRobot 0.4.4's requirements, lerobot==0.4.4 --no-deps
# 2. vlastack's core (editable, with its dependencies, held to the side venv's torch and LeRobot's
#    ranges by side-constraints.txt; no simulator), pytest
# 3. the glue and the two plugins, editable, --no-deps (their dependency on lerobot would otherwise
#    make pip look at lerobot's own torch<2.11 pin)
# Idempotent: a venv whose stamp matches these files is left alone.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${1:-$ROOT/bench/peers/.venv}"
bash "$ROOT/bench/peers/setup_venv.sh" "$VENV"
PY="$VENV/bin/python"
RECIPE="$(cat "$ROOT/pyproject.toml" "$HERE/side-constraints.txt" "$HERE"/*/pyproject.toml | sha256sum | cut -c1-16)"
STAMP="$VENV/.vlastack-lerobot"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$RECIPE" ]]; then
  echo "plugins ready in $VENV"; exit 0
fi
PIP=("$PY" -m pip install --disable-pip-version-check --progress-bar off -q)
"${PIP[@]}" -c "$HERE/side-constraints.txt" -e "$ROOT" "pytest>=8" pytest-timeout
"${PIP[@]}" --no-deps -e "$HERE/vlastack_lerobot" -e "$HERE/lerobot_policy_dust" -e "$HERE/lerobot_policy_dita"
"$PY" - <<'PY'
import importlib.util, torch, lerobot
from lerobot.utils.import_utils import register_third_party_plugins
register_third_party_plugins()
from lerobot.configs.policies import PreTrainedConfig
import vlastack.policies
missing = {"dust", "dita"} - set(PreTrainedConfig.get_known_choices())
assert not missing, f"plugins did not register: {missing}"
sim = [m for m in ("robosuite", "mujoco") if importlib.util.find_spec(m)]
print(f"plugins ok: lerobot {lerobot.__version__}, torch {torch.__version__}, policy types dust and dita"
      f"{'' if not sim else f' (simulator present: {sim})'}")
PY
echo "$RECIPE" > "$STAMP"
