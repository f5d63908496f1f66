#!/usr/bin/env bash
# Installs the LOWEST versions that setup.cfg declares for our Python dependencies in a fresh
# venv (torch stays the local CPU build), then runs the test suite against them.
# Not run in CI (it downloads packages); run it when a floor in setup.cfg changes:
#     bash scripts/check_min_versions.sh [VENV_DIR]
# Binary wheels only (--only-binary): a floor that has no wheel for this Python is reported as
# failing, and the floor is raised to the first release that installs and passes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/pyro_mapa_min_versions}
PY=${PYTHON:-python3.11}
rm -rf "$VENV"
"$PY" -m venv "$VENV"
. "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
# Floors from setup.cfg's install_requires: "name>=x" becomes "name==x" (torch excepted).
PINS=$(python - <<'PYEOF'
import configparser, re
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for line in cfg["options"]["install_requires"].split("\n"):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,\s]*)", line)
    if m and m.group(1) != "torch":
        print(f"{m.group(1)}=={m.group(2)}")
PYEOF
)
echo "lowest declared versions: $PINS"
# The floors are also constraints for everything installed after them (a test dependency
# must not upgrade numpy past the floor behind our back).
CONSTRAINTS="$VENV/constraints.txt"
printf '%s\n' $PINS > "$CONSTRAINTS"
python -m pip install --quiet torch==2.13.0 -c "$CONSTRAINTS"
python -m pip install --quiet --only-binary=:all: $PINS -c "$CONSTRAINTS"
python -m pip install --quiet --prefer-binary -e ".[test]" -c "$CONSTRAINTS"
python -m pip list 2>/dev/null | grep -i -E "^(torch|pyro-ppl|arviz|numpy|zuko|tqdm|matplotlib|pandas|scipy|xarray) "
python -m pytest -q -p no:cacheprovider "${@:2}"
