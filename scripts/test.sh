#!/usr/bin/env bash
# The whole test suite: the tests inside the component notebooks (nbdev_test) and pytest (tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export DVC_NO_ANALYTICS=1 PYTHONHASHSEED=0
# the offline data mirror the tests read (CI keeps ../shared beside the clone); the tests that need it fail naming it
export RECLMIS_DATA_MIRROR="${RECLMIS_DATA_MIRROR:-$(cd .. && pwd)/shared/data}"
echo "== notebook tests (nbdev_test)"
nbdev_test --n_workers 2 --skip_folder_re '^(stages|[_.].*)$' --timing
echo "== pytest"
pytest tests --durations=25 "$@"     # exits non-zero on failures and on "no tests ran" (exit 5); the 25 slowest shown
