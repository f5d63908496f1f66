#!/usr/bin/env bash
# Regenerates every committed result with the current code, in one pass, then the docs' tables.
#
#   bash scripts/regenerate_all.sh            # everything (116 min on the 2-core dev VM: docs/results/regeneration_times.json)
#   STEPS="digits highdim" bash scripts/regenerate_all.sh    # only the named steps
#
# Run it on a quiet machine from a clean, committed tree (each JSON records the commit and
# whether the code was dirty). Each step's wall-clock time goes to docs/results/regeneration_times.json,
# then the tables of docs/{results,benchmarks,scaling,reliability}.md are spliced from the new JSON
# and checked, and a sample of each folder's jobs is replayed with `pyro-mapa reproduce --check`.
# `python scripts/compare_results.py REV:FILE FILE` compares a regenerated file with the old one.
# Steps (in order): reproduce free_codes collapse digits_highdim seed_methods benchmarks
# benchmarks_extra tables check (`digits` and `highdim` also run alone).
# `digits_highdim` runs the two single-threaded experiments side by side (one core each; their
# numbers do not depend on it, only their wall-clock fields do). SEED_DRAWS sets the seed methods'
# draws (default 1, as the committed seed_methods results: about 20 min per draw here).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${STEPS:-"reproduce free_codes collapse digits_highdim seed_methods benchmarks benchmarks_extra tables check"}
JOBS=${JOBS:-2}
SEED_DRAWS=${SEED_DRAWS:-1}
TIMES=docs/results/regeneration_times.json
ALL_METHODS="VAE IWAE MAPA MAPA-GT MAPA-naive MAPA-free RenyiELBO InfoVAE HVAE LIDVAE MAPA-LIDVAE LiBI"

declare -A CMD=(
  [reproduce]="pyro-mapa reproduce --output docs/results --jobs $JOBS --no-progress"
  [seed_methods]="python scripts/run_seed_methods.py --output docs/results/seed_methods --draws $SEED_DRAWS --restarts 3 --jobs $JOBS"
  [free_codes]="python scripts/run_seed_methods.py --output docs/results/free_codes --methods MAPA MAPA-free --draws 3 --restarts 3 --jobs $JOBS"
  [collapse]="python scripts/run_seed_methods.py --output docs/results/collapse --methods $ALL_METHODS --draws 1 --restarts 1 --jobs $JOBS --fixed-options"
  [digits]="python experiments/digits.py --threads 1 --output docs/results/digits.json"
  [highdim]="python experiments/synthetic_highdim.py --threads 1 --output docs/results/synthetic_highdim.json"
  [digits_highdim]="python experiments/digits.py --threads 1 --output docs/results/digits.json & d=\$!; python experiments/synthetic_highdim.py --threads 1 --output docs/results/synthetic_highdim.json; wait \$d"
  [benchmarks]="python benchmarks/step_time.py --repeats 11 --steps 200 --threads 2 && python benchmarks/big_networks.py --repeats 3 --threads 1 && python benchmarks/table_build.py --sizes 10000 30000 100000 --threads 2 && python benchmarks/approx_neighbors.py --sizes 30000 100000 --threads 2"
  [benchmarks_extra]="python benchmarks/profile_small.py --repeats 7 --steps 50 && python benchmarks/big_networks.py --repeats 3 --threads 1 --unmasked --regimes equal --objectives 'TraceMAPA_ELBO(5, 5)' 'TraceIWAE_ELBO(10)' && python benchmarks/big_networks.py --repeats 3 --threads 2 --output benchmarks/results/big_networks_2threads.json"
  [tables]="for f in results benchmarks scaling reliability; do python scripts/make_results_tables.py --splice docs/\$f.md && python scripts/make_results_tables.py --check docs/\$f.md || exit 1; done"
  [check]="pyro-mapa reproduce --check docs/results --sample 3 && pyro-mapa reproduce --check docs/results/seed_methods --sample 2 && pyro-mapa reproduce --check docs/results/seed_methods --sample 2 --seed 20 --check-output docs/results/seed_methods/check_seed20.json && pyro-mapa reproduce --check docs/results/free_codes --sample 2 && pyro-mapa reproduce --check docs/results/collapse --sample 2"
)

[ -f "$TIMES" ] || echo '{}' > "$TIMES"
for step in $STEPS; do
  [ -n "${CMD[$step]:-}" ] || { echo "unknown step '$step'; steps: ${!CMD[*]}" >&2; exit 2; }
  echo "== $step: ${CMD[$step]}"
  start=$(date +%s)
  bash -c "${CMD[$step]}"
  seconds=$(( $(date +%s) - start ))
  python - "$TIMES" "$step" "$seconds" "$(git rev-parse HEAD)" "${CMD[$step]}" <<'EOF'
import datetime, json, sys
path, step, seconds, commit, command = sys.argv[1:]
times = json.load(open(path))
times[step] = {"seconds": int(seconds), "commit": commit, "command": command,
               "finished_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
open(path, "w").write(json.dumps(times, indent=1, sort_keys=True) + "\n")
EOF
  echo "== $step: ${seconds} s"
done
