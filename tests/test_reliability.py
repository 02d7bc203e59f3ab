"""The reliability issue's reproductions and fault classes that need more than one command: two trainings of one run at
once, a corrupt checkpoint followed by a re-run, `--debug`, note warnings, a pinned dataset whose extraction lost files,
and the user's own dataset in LViT's layout through fetch -> prepare -> encode -> train -> evaluate."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest, torch, yaml
from reclmis import cli
from reclmis.core import DataError
from conftest import RUN, cli_main, snapshot, run
from test_corpus import _lvit_folder

CKPT, RES = Path('build') / RUN / 'ckpt', Path('results') / RUN


def _params(ws, name, **train):
    y = yaml.safe_load((ws / 'params.yaml').read_text()); y['train'].update(train)
    (ws / name).write_text(yaml.safe_dump(y, sort_keys=False)); return name


def test_two_trainings_of_one_run(ws, monkeypatch):
    """Reproduction 1: the second training refuses, naming the holder; the first ends with consistent files.
    The first training is bounded by wall time, not by epochs (`train.max_minutes`: 1 min, no early stop; then it
    stops cleanly and a later run would resume), so it outlives the second command on a fast machine and ends soon on
    a slow one. Its output goes to a file: unread, a pipe fills and blocks the writer (the CI's 600 s timeout)."""
    env = {**os.environ, 'RECLMIS_ROOT': str(ws), 'DVC_NO_ANALYTICS': '1'}
    a_yaml = _params(ws, 'A.yaml', epochs=100000, patience=100000, lr=0.0015, max_minutes=1.0)
    with open(ws / 'A.log', 'w') as log:   # a file, not a pipe: nobody reads a pipe until the end, and a full pipe
        a = subprocess.Popen(['reclmis', '--params', a_yaml, 'train', 'synth', 'unet'], cwd=ws,   # blocks the writer
                             env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    lock = ws / 'build/.locks/default-synth-unet-s3407.lock'
    t0 = time.time()
    while not (lock.exists() and f'"pid": {a.pid}' in lock.read_text()):
        assert a.poll() is None and time.time() - t0 < 120, 'the first training never took the lock'
        time.sleep(0.2)
    b_yaml = _params(ws, 'B.yaml', epochs=100000, lr=0.002)
    b = subprocess.run(['reclmis', '--params', b_yaml, 'train', 'synth', 'unet'], cwd=ws, env=env,
                       capture_output=True, text=True, timeout=300)
    assert a.poll() is None, 'the first training ended before the second started: the test proves nothing'
    assert b.returncode == 2 and 'busy' in b.stderr and str(a.pid) in b.stderr, b.stderr
    assert a.wait(timeout=900) == 0, (ws / 'A.log').read_text()[-3000:]
    tj = json.loads((ws / RES / 'train.json').read_text())
    assert not tj['finished'] and tj['epochs_run'] >= 1, tj['epochs_run']      # stopped by the time limit
    fp = tj['fingerprint']
    for f in ('best.pt', 'last.pt'):
        ck = torch.load(ws / CKPT / f, weights_only=False)
        assert (ck.get('fingerprint') or ck['state']['fingerprint']) == fp, f
    assert (ws / CKPT / 'superseded' / 'best.pt').exists()      # another lr is another run: the old weights were moved
    monkeypatch.chdir(ws)
    assert cli.main(['--params', 'A.yaml', 'evaluate', 'synth', 'unet']) == 0


def test_bad_epochs_then_evaluate(ws, capsys):
    "Reproduction 3: `train.epochs: -3` is refused before anything is touched, and evaluate still works."
    before = snapshot(ws)
    rc, msg = cli_main(['--params', _params(ws, 'bad.yaml', epochs=-3), 'train', 'synth', 'unet'], ws, capsys)
    assert rc == 2 and "'train.epochs' is -3" in msg, msg
    assert snapshot(ws) == before
    rc, msg = cli_main(['evaluate', 'synth', 'unet'], ws, capsys)
    assert rc == 0, msg


def test_corrupt_last_then_rerun(ws, capsys):
    "A truncated last.pt: a clear error, moved aside; the same command again trains afresh, keeping the old weights."
    last = ws / CKPT / 'last.pt'; last.write_bytes(last.read_bytes()[:200])
    old_best = (ws / CKPT / 'best.pt').read_bytes()
    rc, msg = cli_main(['train', 'synth', 'unet'], ws, capsys)
    assert rc == 2 and 'last.pt.corrupt' in msg and 'run the same command again' in msg, msg
    rc, msg = cli_main(['train', 'synth', 'unet'], ws, capsys)
    assert rc == 0 and 'starting afresh' in msg, msg
    assert (ws / CKPT / 'superseded' / 'best.pt').read_bytes() == old_best
    assert (ws / CKPT / 'last.pt.corrupt').exists()
    assert cli_main(['evaluate', 'synth', 'unet'], ws, capsys)[0] == 0


def test_debug_shows_the_traceback(ws, capsys):
    rc, msg = cli_main(['train', 'kvasir', 'unet'], ws, capsys)
    assert rc == 2 and 'Traceback' not in msg and '--debug' in msg
    old = os.getcwd(); os.chdir(ws)
    try:
        with pytest.raises(Exception, match="unknown dataset 'kvasir'"):
            cli.main(['--debug', 'train', 'kvasir', 'unet'])
    finally: os.chdir(old)


def test_a_bug_is_not_swallowed(ws, monkeypatch):
    "An unexpected exception (here: a bug injected into the train stage) keeps its type and traceback."
    from reclmis import pipeline
    def boom(*a, **k): raise ZeroDivisionError('injected bug')
    monkeypatch.setattr(pipeline, 'train_stage', boom)
    monkeypatch.chdir(ws)
    with pytest.raises(ZeroDivisionError): cli.main(['train', 'synth', 'unet'])


def test_note_warnings(ws, capsys):
    "A long note, a note the vocabulary does not know, a note given to a text-free model: each says what happens."
    from reclmis.text import make_text_encoder
    from reclmis.tokens import note_warnings, note_lengths, unknown_share
    enc = make_text_encoder('minilm')
    notes = ['bilateral pulmonary infection, two infected areas, upper left lung and lower right lung, ' * 3,
             '\u2603\u2604\u2605 \u2603\u2604 \u2605\u2605', 'upper left lung.']
    w = note_warnings(notes, note_lengths(enc, notes), unknown_share(enc, notes), 18)
    assert any('1 of 3 notes are longer than text.token_len = 18' in x for x in w), w
    assert any('1 of 3 notes are mostly unknown' in x for x in w), w
    img = ws / 'build/synth/raw/test/images/00000.png'
    with pytest.warns(UserWarning, match='does not read notes'):
        rc, msg = cli_main(['predict', img, '--note', 'upper left lung.', '--ckpt', CKPT / 'best.pt', '--out',
                            'pred'], ws, capsys)
    assert rc == 0, msg


def test_pinned_dataset_that_lost_files(shared_data, tmp_path, monkeypatch, root):
    "An extracted MoNuSeg whose pair count no longer matches the pinned manifest is refused at the next fetch."
    from reclmis.config import load_params
    from reclmis.prepare import fetch_stage
    monkeypatch.setenv('RECLMIS_DATA_MIRROR', str(shared_data))
    p = load_params(root / 'params.yaml')
    fetch_stage('monuseg', p, root=tmp_path)
    raw = tmp_path / 'build/monuseg/raw/Test_Folder'
    name = sorted((raw / 'img').iterdir())[0].name
    (raw / 'img' / name).unlink(); (raw / 'labelcol' / (Path(name).stem + '.png')).unlink()
    with pytest.raises(DataError, match='expected'): fetch_stage('monuseg', p, root=tmp_path)


def test_own_lvit_dataset_through_the_pipeline(tmp_path_factory, root):
    """A MosMedData+-like folder (images, masks, xlsx notes) runs fetch -> prepare -> encode -> train -> evaluate
    through `dvc repro` in a scratch clone with one params entry (and the run axes pointed at it)."""
    d = tmp_path_factory.mktemp('own') / 'reclmis'
    run(f'git clone -q {root} {d}', root)
    for sub in ('nbs', 'reclmis'): shutil.rmtree(d / sub); shutil.copytree(root / sub, d / sub)
    for f in ('dvc.yaml', 'params.yaml'): shutil.copy(root / f, d / f)
    _lvit_folder(tmp_path_factory.mktemp('mosmed') / 'MosMedPlus', n=(12, 4, 4))
    folder = next(tmp_path_factory.getbasetemp().glob('mosmed*/MosMedPlus'))
    y = yaml.safe_load((d / 'params.yaml').read_text())
    y['datasets']['mosmed'] = {'kind': 'lvit', 'path': str(folder), 'img_size': 32, 'channels': 3,
                               'counts': {'train': 12, 'val': 4, 'test': 4}}
    y['run'].update(datasets=['mosmed'], models=['unet'])
    y['train'].update(epochs=2); y['model']['unet']['width'] = 4; y['evaluate'].update(n_boot=20)
    (d / 'params.yaml').write_text(yaml.safe_dump(y, sort_keys=False))
    run('git config user.email t@t && git config user.name t && git add -A && git commit -qm own', d)
    env = {'RECLMIS_ROOT': str(d)}
    out = run('dvc repro evaluate', d, env=env).stdout
    for s in ('fetch@mosmed', 'prepare@mosmed', 'encode@mosmed', 'train@mosmed-unet-3407', 'evaluate@mosmed-unet-3407'):
        assert f"Running stage '{s}'" in out, (s, out[-3000:])
    assert 0 <= json.loads((d / 'results/mosmed/unet/s3407/evaluate.json').read_text())['dice_a'] <= 1
    assert len((d / 'results/mosmed/unet/s3407/per_image.csv').read_text().splitlines()) == 1 + 4
    data = json.loads((d / 'results/mosmed/data.json').read_text())
    assert {k: v['n'] for k, v in data['splits'].items()} == {'train': 12, 'val': 4, 'test': 4}
    assert 'Running stage' not in run('dvc repro evaluate', d, env=env).stdout
