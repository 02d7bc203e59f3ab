import hashlib, os, shutil, subprocess
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


# --- a workspace holding one finished tiny run (the bad-input corpus and the reliability tests) -----------------------
import yaml
from reclmis import cli

WS_TINY = {'synth': {'n_train': 24, 'n_val': 8, 'n_test': 8}, 'datasets': {'synth': {'img_size': 32}},
        'train': {'epochs': 2, 'batch_size': 8}, 'run': {'models': ['unet'], 'threads': 1},
        'model': {'unet': {'width': 4}, 'reclmis': {'width': 4, 'rec_layers': 1}},
        'evaluate': {'n_boot': 20, 'n_overlays': 2, 'n_panel': 2}}
RUN = Path('synth/unet/s3407')


def _merge(a, b):
    for k, v in b.items(): a[k] = _merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
    return a


def cli_main(args, ws, capsys):
    "Run `reclmis <args>` in the workspace; returns (exit status, stdout + stderr)."
    old = os.getcwd(); os.chdir(ws)
    try: rc = cli.main([str(a) for a in args])
    finally: os.chdir(old)
    out = capsys.readouterr()
    return rc, out.out + out.err


@pytest.fixture(scope='session')
def pristine(tmp_path_factory, root):
    "A workspace with the tiny embedded data fetched, prepared, encoded, and one U-Net run trained and evaluated."
    ws = tmp_path_factory.mktemp('ws') / 'proj'; ws.mkdir()
    shutil.copy(root / 'settings.ini', ws)
    y = _merge(yaml.safe_load((root / "params.yaml").read_text()), WS_TINY)
    (ws / 'params.yaml').write_text(yaml.safe_dump(y, sort_keys=False))
    mp = pytest.MonkeyPatch(); mp.setenv('RECLMIS_ROOT', str(ws)); mp.chdir(ws)
    try:
        for args in (['fetch', 'synth'], ['prepare', 'synth'], ['encode', 'synth'], ['train', 'synth', 'unet'],
                     ['evaluate', 'synth', 'unet']):
            assert cli.main(args) == 0, args
    finally: mp.undo()
    assert (ws / 'results' / RUN / 'evaluate.json').exists()
    return ws


@pytest.fixture
def ws(pristine, tmp_path, monkeypatch):
    "A fresh copy of the pristine workspace for one case."
    w = tmp_path / 'proj'; shutil.copytree(pristine, w, symlinks=True)
    monkeypatch.setenv('RECLMIS_ROOT', str(w))
    return w


def snapshot(ws) -> dict:
    "sha256 of every file under build/ and results/ (lock files excluded: they record the last holder)."
    out = {}
    for top in ('build', 'results'):
        for p in sorted((ws / top).rglob('*')):
            if p.is_file() and '.locks' not in p.parts:
                out[str(p.relative_to(ws))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


