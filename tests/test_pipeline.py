"End to end: a tiny `dvc repro` in a fresh clone, a no-op second run, and `dvc exp run -S` listed by `dvc exp show`."
import json, shutil
from pathlib import Path
import yaml, pytest
from conftest import run

TINY = {'synth': {'n_train': 48, 'n_val': 16, 'n_test': 16, 'size': 32},
        'datasets': {'synth': {'img_size': 32}}, 'train': {'epochs': 2, 'batch_size': 16},
        'model': {'unet': {'width': 4}, 'reclmis': {'width': 4, 'rec_layers': 1}, 'lvit': {'width': 8}, 'tmca': {'width': 4, 'align_dim': 8}},
        'run': {'models': ['unet', 'reclmis', 'lvit', 'tmca']}, 'evaluate': {'n_boot': 50, 'n_overlays': 4, 'n_panel': 2}}

def _merge(a, b):
    for k, v in b.items(): a[k] = _merge(a[k], v) if isinstance(v, dict) else v
    return a

@pytest.fixture(scope='module')
def clone(tmp_path_factory, root):
    d = tmp_path_factory.mktemp('clone') / 'reclmis'
    run(f'git clone -q {root} {d}', root)
    for f in ('dvc.yaml', 'params.yaml'): shutil.copy(root / f, d / f)          # the working-tree versions
    for sub in ('nbs', 'reclmis'): shutil.rmtree(d / sub); shutil.copytree(root / sub, d / sub)
    shutil.rmtree(d / 'results', ignore_errors=True); (d / 'dvc.lock').unlink(missing_ok=True)
    y = yaml.safe_load((d / 'params.yaml').read_text())
    (d / 'params.yaml').write_text(yaml.safe_dump(_merge(y, TINY), sort_keys=False))
    run('git config user.email t@t && git config user.name t && git add -A && git commit -qm tiny', d)
    return d

def test_repro_writes_everything_then_noop(clone):
    run('dvc repro', clone, env={'RECLMIS_ROOT': str(clone)})
    for model in ('unet', 'reclmis', 'lvit', 'tmca'):     # every model through the dvc matrix
        r = clone / 'results' / 'synth' / model
        m = json.loads((r / 'metrics.json').read_text())
        assert set(m) >= {'dice_a', 'iou_a', 'dice_b', 'iou_b', 'miou_class', 'cf_dice_a', 'cf_dice_a_vs_orig'}
        for f in ('per_image.csv', 'overlays.png', 'curves.png', 'counterfactual.png', 'train.json'): assert (r / f).exists(), f
    assert json.loads((clone / 'results/synth/text.json').read_text())['encoder'] == 'minilm'
    assert (clone / '_docs' / 'index.html').exists() and (clone / '_docs' / 'results.html').exists()
    page = (clone / '_docs' / 'results.html').read_text()
    assert 'Dice A' in page and 'Counterfactual notes' in page and 'paired 95% CI of the gap' in page
    assert 'Model comparison' in page and 'TMCA (from its abstract)' in page and 'MACs/image, 224x224' in page
    for f in ('synth_dice.png', 'synth_panel.png'): assert (clone / 'build/report/figures' / f).exists(), f
    out = run('dvc repro', clone, env={'RECLMIS_ROOT': str(clone)}).stdout
    assert 'Running stage' not in out, out
    shown = run('dvc metrics show --json', clone).stdout
    assert 'dice_a' in shown

def test_exp_run_with_set_param(clone):
    run('git add -A && git commit -qm results', clone)
    run('dvc exp run -S train.epochs=1 -n one-epoch', clone, env={'RECLMIS_ROOT': str(clone)})
    shown = run('dvc exp show --json', clone).stdout
    assert 'one-epoch' in shown
    t = json.loads((clone / 'results/synth/unet/train.json').read_text())
    assert t['epochs_run'] == 1


def test_predict_after_repro(clone, tmp_path):
    "The README's predict command works on a clean clone after `dvc repro`, and a note change moves the mask."
    img = clone / 'build/synth/raw/test/images/00000.png'
    notes = ['unilateral pulmonary infection, one infected area, upper left lung.',
             'bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.']
    outs = []
    for i, note in enumerate(notes):
        r = run(f'reclmis predict {img} --note "{note}" --out {tmp_path}/p{i}', clone, env={'RECLMIS_ROOT': str(clone)})
        assert 'overlay:' in r.stdout, r.stdout
        outs.append((tmp_path / f'p{i}' / '00000_mask.png').read_bytes())
        assert (tmp_path / f'p{i}' / '00000_overlay.png').exists()
    r = run(f'reclmis predict {img} --out {tmp_path}/p', clone, check=False, env={'RECLMIS_ROOT': str(clone)})
    assert r.returncode == 2 and 'reads the note' in r.stderr, r.stderr
    r = run(f'reclmis predict {img} --note x --ckpt {tmp_path}/none.pt', clone, check=False)
    assert r.returncode == 2 and 'none.pt' in r.stderr, r.stderr
