#!/usr/bin/env bash
# The whole test suite: the tests inside the component notebooks (nbdev_test) and pytest (tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export DVC_NO_ANALYTICS=1 PYTHONHASHSEED=0
echo "== notebook tests (nbdev_test)"
nbdev_test --n_workers 2 --skip_folder_re '^(stages|[_.].*)$' --timing
echo "== pytest"
pytest tests "$@"     # exits non-zero on failures and on "no tests ran" (exit 5)
