import os, shutil, subprocess
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get('RECLMIS_DATA_MIRROR') or ROOT.parent / 'shared' / 'data')

@pytest.fixture(scope='session')
def root(): return ROOT

@pytest.fixture(scope='session')
def shared_data():
    if not SHARED.exists():
        pytest.fail(f"the offline data mirror {SHARED} is missing: set RECLMIS_DATA_MIRROR "
                    "(CI keeps ../shared/data beside the clone)")
    return SHARED

def run(cmd, cwd, check=True, env=None, timeout=900):
    "Run a shell command, return CompletedProcess; on failure show its output."
    e = {**os.environ, 'DVC_NO_ANALYTICS': '1', **(env or {})}
    r = subprocess.run(cmd, cwd=cwd, shell=True, capture_output=True, text=True, env=e, timeout=timeout)
    if check and r.returncode:
        raise AssertionError(f"`{cmd}` exited {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r
