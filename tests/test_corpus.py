"""The bad-input corpus: every case is an input a user can get wrong or a fault the machine can cause, run through the
`reclmis` command against a workspace that already holds a finished run. Each case states the expected exit status,
the words the message must contain (the key or file it names, the fix), and the check that no earlier result changed
(every file under build/ and results/ byte-identical, except the ones a case is documented to move aside).

The command runs in-process (`reclmis.cli.main`): one Python for the whole corpus, about a second per case."""
import errno, hashlib, json, os, shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
import numpy as np, pandas as pd, pytest, torch, yaml
from PIL import Image
from reclmis import cli, safeio
from conftest import RUN, cli_main as _main, snapshot

def bad_params(edit):
    "Setup: write params file bad.yaml from the workspace's params.yaml through `edit(y)` (or raw text)."
    def setup(ws):
        if isinstance(edit, str): (ws / 'bad.yaml').write_text(edit); return
        y = yaml.safe_load((ws / 'params.yaml').read_text()); edit(y)
        (ws / 'bad.yaml').write_text(yaml.safe_dump(y, sort_keys=False))
    return setup


def _set(path: str, value):
    "An edit that sets dotted `path` to `value`."
    def f(y):
        *head, last = path.split('.')
        d = y
        for k in head: d = d.setdefault(k, {})
        d[last] = value
    return f


def _drop(path: str):
    def f(y):
        *head, last = path.split('.')
        d = y
        for k in head: d = d[k]
        del d[last]
    return f


@dataclass
class Case:
    id: str
    args: list                      # the command (after `reclmis`); 'bad.yaml' params go first when `setup` writes it
    says: list                      # substrings of the message: the key or file it names, the fix
    setup: Callable | None = None   # prepares the fault in the workspace
    exit: int = 2
    moved: list = field(default_factory=list)   # files a case is documented to move aside (not lost)


def P(id, edit, says, args=('train', 'synth', 'unet')):
    "A params case: `reclmis --params bad.yaml <args>`."
    return Case(id, ['--params', 'bad.yaml', *args], says, bad_params(edit))


def _truncate(rel, n=100):
    def f(ws): p = ws / rel; p.write_bytes(p.read_bytes()[:n])
    return f


def _foreign(rel):
    def f(ws): torch.save({'weights': torch.zeros(3)}, ws / rel)
    return f


def _other_run_best(ws):
    "best.pt of another run (another fingerprint) beside this run's train.json: the mix of reproduction 1."
    p = ws / 'build' / RUN / 'ckpt' / 'best.pt'; ck = torch.load(p, weights_only=False)
    ck['fingerprint'] = 'another-run-0000'; torch.save(ck, p)


def _lvit_folder(root: Path, n=(4, 2, 2), size=32, note='Bilateral pulmonary infection, upper left lung.',
                 depth=8, skip_note=False):
    "A MosMedData+-like folder: {Train,Val,Test}_Folder/{img,labelcol} PNGs and *_text.xlsx notes."
    rng = np.random.default_rng(0)
    for (folder, k), cnt in zip((('Train_Folder', 'Train'), ('Val_Folder', 'Val'), ('Test_Folder', 'Test')), n):
        (root / folder / 'img').mkdir(parents=True); (root / folder / 'labelcol').mkdir()
        rows = []
        for i in range(cnt):
            img = rng.integers(0, 256, (size, size), dtype=np.uint8)
            if depth == 12: Image.fromarray((img.astype(np.uint16) * 16)).save(root / folder / 'img' / f'c{i}.png')
            else: Image.fromarray(img).save(root / folder / 'img' / f'c{i}.png')
            m = np.zeros((size, size), np.uint8); m[4:12 + i, 4:16] = 255
            Image.fromarray(m).save(root / folder / 'labelcol' / f'c{i}.png')
            if not (skip_note and i == 0): rows.append({'Image': f'c{i}.png', 'Description': note})
        pd.DataFrame(rows).to_excel(root / folder / f'{k}_text.xlsx', index=False)
    return root


def own(edit_folder=None, entry=None, fetched=None, **kw):
    """Setup: the user's own LViT-layout folder `mine/` and a params entry datasets.mine pointing at it; with
    `fetched`, the fetch stage has run and then `fetched(ws)` damages its copy."""
    def setup(ws):
        f = _lvit_folder(ws / 'mine', **kw)
        if edit_folder: edit_folder(f)
        y = yaml.safe_load((ws / 'params.yaml').read_text())
        y['datasets']['mine'] = {'kind': 'lvit', 'path': 'mine', 'img_size': 32, 'channels': 1, **(entry or {})}
        (ws / 'bad.yaml').write_text(yaml.safe_dump(y, sort_keys=False))
        if fetched:
            old = os.getcwd(); os.chdir(ws)
            try: assert cli.main(['--params', 'bad.yaml', 'fetch', 'mine']) == 0
            finally: os.chdir(old)
            fetched(ws)
    return setup


def O(id, says, args=('fetch', 'mine'), edit_folder=None, entry=None, fetched=None, **kw):
    return Case(id, ['--params', 'bad.yaml', *args], says, own(edit_folder, entry, fetched, **kw))


def _busy(ws):
    "Another process (here: a lock taken in this one) holds the run's lock."
    lk = safeio.RunLock(ws / 'build' / '.locks' / 'default-synth-unet-s3407.lock', 'train synth/unet/s3407 (other)')
    lk.__enter__(); _HELD.append(lk)


_HELD = []


def _fail_write(name, err):
    "Setup: the OS refuses the rename onto `name` (disk full, permission denied) while the command writes it."
    def setup(ws):
        real = os.replace
        def fake(src, dst, *a, **k):
            if Path(dst).name == name: raise OSError(err, os.strerror(err))
            return real(src, dst, *a, **k)
        _PATCH.append(fake)
    return setup


_PATCH = []


def _extra_file(ws):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(ws / 'build/synth/raw/train/images/99999.png')


def _missing_file(ws): (ws / 'build/synth/raw/test/masks/00003.png').unlink()


def _bad_image(ws): (ws / 'x.png').write_bytes(b'\x89PNG\r\n\x1a\n not an image')


CKPT = f'build/{RUN}/ckpt'
RES = f'results/{RUN}'
CASES = [
    # --- params: sections and keys never silently defaulted ---------------------------------------------------------
    P('no-model-section', _drop('model'), ["'model'", 'missing', 'git show HEAD:params.yaml']),
    P('no-train-section', _drop('train'), ["'train'", 'missing']),
    P('no-key-train.lr', _drop('train.lr'), ["'train.lr'", 'missing']),
    P('no-key-model.unet.width', _drop('model.unet.width'), ["'model.unet.width'"]),
    P('no-key-datasets.kind', _drop('datasets.synth.kind'), ["'datasets.synth.kind'"]),
    P('unknown-section', _set('trainer', {'epochs': 3}), ["unknown params key 'trainer'"]),
    P('unknown-key', _set('train.epoch', 3), ["unknown params key 'train.epoch'"]),
    P('wrong-type', _set('train.epochs', 'ten'), ["'train.epochs' must be an integer"]),
    P('bool-for-int', _set('train.batch_size', True), ["'train.batch_size' must be an integer"]),
    # --- params: value ranges -----------------------------------------------------------------------------------------
    P('epochs-negative', _set('train.epochs', -3), ["'train.epochs' is -3", '>= 1']),
    P('epochs-zero', _set('train.epochs', 0), ["'train.epochs' is 0"]),
    P('batch-zero', _set('train.batch_size', 0), ["'train.batch_size' is 0"]),
    P('lr-zero', _set('train.lr', 0.0), ["'train.lr' is 0.0", '> 0']),
    P('lr-negative', _set('train.lr', -0.001), ["'train.lr'"]),
    P('lr-nan', _set('train.lr', float('nan')), ["'train.lr' is nan"]),
    P('lr-inf', _set('train.lr', float('inf')), ["'train.lr' is inf"]),
    P('weight-decay-negative', _set('train.weight_decay', -1.0), ["'train.weight_decay'"]),
    P('patience-zero', _set('train.patience', 0), ["'train.patience'"]),
    P('exp-gamma', _set('train.exp_gamma', 1.5), ["'train.exp_gamma'", '(0, 1]']),
    P('max-minutes', _set('train.max_minutes', -1.0), ["'train.max_minutes'"]),
    P('no-seg-loss', _set('model.reclmis.seg_weight', 0.0), ["'model.reclmis.seg_weight'", 'no segmentation loss']),
    P('img-size-zero', _set('datasets.synth.img_size', 0), ["'datasets.synth.img_size' is 0"]),
    P('channels-2', _set('datasets.synth.channels', 2), ["'datasets.synth.channels' is 2", '{1, 3}']),
    P('limit-negative', _set('datasets.synth.limit_train', -5), ["'datasets.synth.limit_train'"]),
    P('synth-n-train', _set('synth.n_train', 0), ["'synth.n_train'"]),
    P('synth-probability', _set('synth.p_distractor', 1.5), ["'synth.p_distractor'", '[0, 1]']),
    P('synth-lesions', _set('synth.max_lesions', 0), ["'synth.max_lesions'"]),
    P('synth-lesion-order', lambda y: y['synth'].update(min_lesions=3, max_lesions=2), ["'synth.max_lesions' is 2"]),
    P('unet-width-zero', _set('model.unet.width', 0), ["'model.unet.width'"]),
    P('mask-ratio-one', _set('model.reclmis.mask_ratio_img', 1.0), ["'model.reclmis.mask_ratio_img'", '(0, 1)']),
    P('dropout-one', _set('model.reclmis.ci_dropout', 1.0), ["'model.reclmis.ci_dropout'"]),
    P('rec-layers-zero', _set('model.reclmis.rec_layers', 0), ["'model.reclmis.rec_layers'"]),
    P('temperature-zero', _set('model.reclmis.ccl_temperature', 0.0), ["'model.reclmis.ccl_temperature'"]),
    P('lvit-tokens-zero', _set('model.lvit.text_tokens', 0), ["'model.lvit.text_tokens'"]),
    P('token-len-one', _set('text.token_len', 1), ["'text.token_len'"]),
    P('token-len-word', _set('text.token_len', 'longest'), ["'text.token_len'", "integer or 'auto'"]),
    P('paraphrases-negative', _set('text.paraphrases', -1), ["'text.paraphrases'"]),
    P('note-augment-above-one', _set('train.note_augment', 1.5), ["'train.note_augment'", '[0, 1]']),
    P('synth-sides-unknown', _set('synth.sides', 'patient'), ["'synth.sides'", 'image, radiological']),
    P('text-batch-zero', _set('text.batch_size', 0), ["'text.batch_size'"]),
    P('threshold-zero', _set('evaluate.threshold', 0.0), ["'evaluate.threshold'"], ('evaluate', 'synth', 'unet')),
    P('n-boot-zero', _set('evaluate.n_boot', 0), ["'evaluate.n_boot'"], ('evaluate', 'synth', 'unet')),
    P('threads-negative', _set('run.threads', -1), ["'run.threads'"]),
    P('seeds-empty', _set('run.seeds', []), ["'run.seeds' must be a non-empty list"]),
    P('seed-negative', _set('run.seeds', [-1]), ["'run.seeds'"]),
    P('device-enum', _set('run.device', 'tpu'), ["'run.device' is 'tpu'"]),
    P('schedule-enum', _set('train.schedule', 'cosine'), ["'train.schedule' is 'cosine'", 'sgdr']),
    P('augment-enum', _set('train.augment', 'randaugment'), ["'train.augment'", 'official_notesafe']),
    P('kind-enum', _set('datasets.synth.kind', 'nifti'), ["'datasets.synth.kind' is 'nifti'"]),
    P('depth16-enum', _set('datasets.synth.depth16', 'scale'), ["'datasets.synth.depth16'"]),
    # --- params: overrides and variants named where they are written -------------------------------------------------
    P('override-range', _set('datasets.qata.overrides.train.epochs', 0),
      ["'datasets.qata.overrides.train.epochs' is 0"]),
    P('override-unknown-key', _set('datasets.qata.overrides.train.epochz', 3),
      ["unknown params key 'datasets.qata.overrides.train.epochz'"]),
    P('override-model-key', _set('datasets.qata.overrides.model.reclmis.widthh', 3),
      ["'datasets.qata.overrides.model.reclmis.widthh'"]),
    P('override-section', _set('datasets.qata.overrides.optim', {'lr': 1}), ["'datasets.qata.overrides'", 'optim']),
    P('variant-range', _set('variants.reclmis-no-cvr.model.rec_layers', -1),
      ["'variants.reclmis-no-cvr.model.rec_layers' is -1"]),
    P('variant-unknown-key', _set('variants.reclmis-no-cvr.train.lrr', 1.0), ["'variants.reclmis-no-cvr.train.lrr'"]),
    P('variant-base', _set('variants.x', {'base': 'segformer'}), ["'variants.x.base'"]),
    P('path-not-lvit', _set('datasets.synth.path', 'somewhere'), ["'datasets.synth.path'", "kind 'lvit'"]),
    P('counts-without-path', _set('datasets.monuseg.counts', {'train': 3}), ["'datasets.monuseg.counts'"]),
    # --- params: the file itself -------------------------------------------------------------------------------------
    P('yaml-syntax', 'run: [synth\ntrain: {epochs: 3}\n', ['bad.yaml', 'not valid YAML', 'line 2']),
    P('yaml-indent', 'run:\n  models: [unet]\n threads: 2\n', ['bad.yaml', 'not valid YAML']),
    P('yaml-empty', '', ['bad.yaml', 'empty']),
    P('yaml-list', '- run\n- train\n', ['bad.yaml', 'a list']),
    Case('params-file-missing', ['--params', 'nope.yaml', 'train', 'synth', 'unet'], ['nope.yaml', 'not found']),
    # --- names --------------------------------------------------------------------------------------------------------
    Case('unknown-dataset', ['train', 'kvasir', 'unet'], ["unknown dataset 'kvasir'"]),
    Case('unknown-model', ['train', 'synth', 'segformer'], ["unknown model 'segformer'"]),
    Case('unknown-study', ['--study', 'nosuch', 'train', 'synth', 'unet'], ["unknown study 'nosuch'"]),
    Case('cuda-absent', ['--params', 'bad.yaml', 'train', 'synth', 'unet'], ["'run.device' is 'cuda'"],
         bad_params(_set('run.device', 'cuda'))) if not torch.cuda.is_available() else None,
    # --- checkpoints --------------------------------------------------------------------------------------------------
    Case('last-truncated', ['train', 'synth', 'unet'],
         ['last.pt', 'truncated', 'last.pt.corrupt', 'run the same command'],
         _truncate(f'{CKPT}/last.pt'), moved=[f'{CKPT}/last.pt']),
    Case('last-empty', ['train', 'synth', 'unet'], ['last.pt', 'last.pt.corrupt'], _truncate(f'{CKPT}/last.pt', 0),
         moved=[f'{CKPT}/last.pt']),
    Case('last-foreign', ['train', 'synth', 'unet'], ['last.pt', 'not a reclmis checkpoint'],
         _foreign(f'{CKPT}/last.pt'),
         moved=[f'{CKPT}/last.pt']),
    Case('best-truncated', ['evaluate', 'synth', 'unet'], ['best.pt', 'truncated'], _truncate(f'{CKPT}/best.pt')),
    Case('best-foreign', ['evaluate', 'synth', 'unet'], ['best.pt', 'not a reclmis checkpoint'],
         _foreign(f'{CKPT}/best.pt')),
    Case('best-of-another-run', ['evaluate', 'synth', 'unet'], ['best.pt', 'was not made by the run', 'train.json'],
         _other_run_best),
    Case('train-json-missing', ['evaluate', 'synth', 'unet'], ['train.json', 'train stage'],
         lambda ws: (ws / RES / 'train.json').unlink()),
    Case('run-busy-train', ['train', 'synth', 'unet'], ['busy', f'pid', str(os.getpid()), 'Wait for it'], _busy),
    Case('run-busy-evaluate', ['evaluate', 'synth', 'unet'], ['busy', 'default-synth-unet-s3407.lock'], _busy),
    # --- the OS refuses a write ---------------------------------------------------------------------------------------
    Case('disk-full-train-json', ['train', 'synth', 'unet'], ['train.json', 'No space left', 'df -h'],
         _fail_write('train.json', errno.ENOSPC)),
    Case('disk-full-metrics', ['evaluate', 'synth', 'unet'], ['evaluate.json', 'No space left'],
         _fail_write('evaluate.json', errno.ENOSPC)),
    Case('permission-index', ['fetch', 'synth'], ['index.csv', 'Permission denied', 'chmod'],
         _fail_write('index.csv', errno.EACCES)),
    Case('read-only-figure', ['evaluate', 'synth', 'unet'], ['overlays.png', 'read-only'],
         _fail_write('overlays.png', errno.EROFS)),
    # --- data: never dropped or misread without a word ----------------------------------------------------------------
    Case('index-row-without-file', ['prepare', 'synth'], ['1 file(s)', '00003.png', 'missing', 'fetch'], _missing_file),
    Case('file-without-row', ['prepare', 'synth'], ['99999.png', 'no row'], _extra_file),
    Case('index-missing', ['prepare', 'synth'], ['index.csv', 'fetch@synth'],
         lambda ws: (ws / 'build/synth/index.csv').unlink()),
    Case('index-wrong-columns', ['prepare', 'synth'], ['index.csv', 'columns'],
         lambda ws: (ws / 'build/synth/index.csv').write_text('a,b\n1,2\n')),
    Case('text-bank-missing', ['train', 'synth', 'reclmis'], ['bank.pt', 'encode'],
         lambda ws: (ws / 'build/synth/text/bank.pt').unlink()),
    # --- the user's own dataset (LViT layout, local folder) ---------------------------------------------------------
    O('own-path-missing', ["'datasets.mine.path'", 'not a folder'], entry={'path': 'no/such/folder'}),
    O('own-no-val-folder', ['Val_Folder', 'LViT'], edit_folder=lambda f: shutil.rmtree(f / 'Val_Folder')),
    O('own-note-missing', ['c0.png', 'Train_text.xlsx', 'add a row'], skip_note=True),
    O('own-mask-missing', ['labelcol', 'holds'], edit_folder=lambda f: (f / 'Test_Folder/labelcol/c1.png').unlink()),
    O('own-counts-differ', ['expected'], entry={'counts': {'train': 5, 'val': 2, 'test': 2}}),
    O('own-12-bit', ['c0.png', '16-bit', 'depth16', 'rescale'], args=('prepare', 'mine'), depth=12,
      fetched=lambda ws: None),
    O('own-image-changed', ['changed since', 'c1.png'], args=('prepare', 'mine'),
      fetched=lambda ws: _truncate('build/mine/raw/Val_Folder/img/c1.png', 60)(ws)),
    O('own-file-without-row', ['no row', 'extra.png'], args=('prepare', 'mine'),
      fetched=lambda ws: shutil.copy(ws / 'build/mine/raw/Test_Folder/img/c0.png',
                                     ws / 'build/mine/raw/Test_Folder/img/extra.png')),
    # --- predict ------------------------------------------------------------------------------------------------------
    Case('predict-model-disagrees', ['predict', 'build/synth/raw/test/images/00000.png', '--ckpt', f'{CKPT}/best.pt',
                                     '--model', 'reclmis'], ['--model reclmis', 'best.pt', 'unet']),
    Case('predict-dataset-disagrees', ['predict', 'build/synth/raw/test/images/00000.png', '--ckpt',
                                       f'{CKPT}/best.pt', '--dataset', 'qata'], ['--dataset qata', 'synth']),
    Case('predict-image-missing', ['predict', 'no.png', '--ckpt', f'{CKPT}/best.pt'], ['no.png', 'not found']),
    Case('predict-image-corrupt', ['predict', 'x.png', '--ckpt', f'{CKPT}/best.pt'], ['x.png', 'corrupt'], _bad_image),
    Case('predict-ckpt-missing', ['predict', 'x.png', '--ckpt', 'nope.pt'], ['nope.pt', 'not found']),
]
CASES = [c for c in CASES if c is not None]


def test_corpus_size():
    assert len(CASES) >= 50 and len({c.id for c in CASES}) == len(CASES), len(CASES)


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input(case, ws, capsys, monkeypatch):
    if case.setup: case.setup(ws)
    if _PATCH: monkeypatch.setattr(os, 'replace', _PATCH.pop())
    before = snapshot(ws)
    try: rc, msg = _main(case.args, ws, capsys)
    finally:
        while _HELD: _HELD.pop().__exit__(None, None, None)
    assert rc == case.exit, f'exit {rc}, expected {case.exit}: {msg[-2000:]}'
    for s in case.says: assert s in msg, f'{s!r} not in the message: {msg[-2000:]}'
    after = snapshot(ws)
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert changed == sorted(case.moved), f'earlier files changed or vanished: {changed}'
    for m in case.moved: assert (ws / (m + '.corrupt')).exists() or (ws / m).exists(), m
