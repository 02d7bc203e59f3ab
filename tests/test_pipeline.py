"""End to end in a fresh clone: a tiny `dvc repro` (no-op second run), the dependency graph reacting to every module,
a tiny study pipeline, `dvc exp run -S`, DVC's queue, and `reclmis predict`."""
import json, shutil, time
from pathlib import Path
import yaml, pytest
from conftest import run

TINY = {'synth': {'n_train': 48, 'n_val': 16, 'n_test': 16},
        'datasets': {'synth': {'img_size': 32}}, 'train': {'epochs': 2, 'batch_size': 16},
        'model': {'unet': {'width': 4}, 'reclmis': {'width': 4, 'rec_layers': 1}, 'lvit': {'width': 8},
                  'tmca': {'width': 4, 'align_dim': 8}},
        'run': {'datasets': ['synth'], 'models': ['unet', 'reclmis', 'lvit', 'tmca'], 'study_datasets': ['synth']},
        'evaluate': {'n_boot': 50, 'n_overlays': 4, 'n_panel': 2},
        'studies': {'compare': {'datasets': ['synth'], 'models': ['unet', 'reclmis', 'lvit'], 'seeds': [3407],
                                'threads': 1},       # one thread: not run.threads, so the study's count is seen
                    'seeds': {'datasets': ['synth'], 'models': ['unet', 'reclmis'], 'seeds': [2], 'threads': 1},
                    'rivals': {'datasets': ['synth'], 'models': ['lvit'], 'seeds': [2], 'threads': 1},
                    'uptake': {'datasets': ['synth'], 'models': ['reclmis-official-ci'], 'seeds': [2],
                               'threads': 1},
                    'augment': {'datasets': ['synth'], 'models': ['reclmis-aug-notesafe'], 'seeds': [3407],
                                'threads': 1},
                    'ablate': {'datasets': ['synth'], 'models': ['reclmis-no-text'], 'seeds': [2],
                               'threads': 1},
                    'components': {'datasets': ['synth'], 'models': ['reclmis-ci-only'], 'seeds': [1], 'threads': 1},
                    'notes': {'datasets': ['synth'], 'models': ['reclmis-canonical'], 'seeds': [3407], 'threads': 1},
                    'aid': {'datasets': ['synth'], 'models': ['reclmis-deepsup'], 'seeds': [1], 'threads': 1}}}
ENV = {}

def _merge(a, b):
    for k, v in b.items(): a[k] = _merge(a[k], v) if isinstance(v, dict) and not k == 'studies' else v
    return a

@pytest.fixture(scope='module')
def clone(tmp_path_factory, root):
    d = tmp_path_factory.mktemp('clone') / 'reclmis'
    run(f'git clone -q {root} {d}', root)
    for f in ('dvc.yaml', 'params.yaml', 'studies/dvc.yaml'): shutil.copy(root / f, d / f)   # the working-tree versions
    for sub in ('nbs', 'reclmis'): shutil.rmtree(d / sub); shutil.copytree(root / sub, d / sub)
    shutil.rmtree(d / 'results')                          # both pipelines start from nothing at the tiny sizes (the
    (d / 'dvc.lock').unlink()                             # committed full-size runs would mix with the tiny ones);
    (d / 'studies/dvc.lock').write_text('schema: \'2.0\'\nstages: {}\n')   # the report and docs read this lock
    y = yaml.safe_load((d / 'params.yaml').read_text())
    (d / 'params.yaml').write_text(yaml.safe_dump(_merge(y, TINY), sort_keys=False))
    run('git config user.email t@t && git config user.name t && git add -A && git commit -qm tiny', d)
    ENV['RECLMIS_ROOT'] = str(d)
    return d

def _status(clone, target='dvc.yaml') -> dict:
    "`dvc status <target> --json`, through DVC's API in this process (the CLI's start-up was most of its 5 s)."
    from contextlib import chdir
    from dvc.repo import Repo
    with chdir(clone), Repo(str(clone)) as repo: return repo.status(targets=[target])   # targets are cwd-relative

def test_repro_writes_everything_then_noop(clone):
    run('dvc repro', clone, env=ENV)
    for model in ('unet', 'reclmis', 'lvit', 'tmca'):     # every model through the dvc matrix
        r = clone / 'results' / 'synth' / model / 's3407'
        m = json.loads((r / 'metrics.json').read_text())
        assert set(m) >= {'dice_a', 'iou_a', 'dice_b', 'iou_b', 'miou_class', 'cf_dice_a', 'cf_dice_a_vs_orig',
                          'ci_unit', 'n_units', 'hd95', 'assd', 'text_null_dice_a' if model != 'unet' else 'assd'}
        for f in ('per_image.csv', 'overlays.png', 'curves.png', 'counterfactual.png', 'train.json', 'panel.npz',
                  'train.ipynb', 'evaluate.ipynb', 'evaluate.json', 'probes.json'): assert (r / f).exists(), f
    assert json.loads((clone / 'results/synth/text.json').read_text())['encoder'] == 'minilm'
    assert (clone / '_docs' / 'index.html').exists() and (clone / '_docs' / 'results.html').exists()
    page = (clone / '_docs' / 'results.html').read_text()
    assert 'Dice A' in page and 'Counterfactual notes' in page and 'paired 95% CI of the gap' in page
    assert 'runs/synth-reclmis-s3407-train.html' in page              # each run's executed notebook is linked ...
    assert (clone / '_docs/runs/synth-reclmis-s3407-train.html').exists()   # ... and rendered
    out = run('dvc repro', clone, env=ENV).stdout
    assert 'Running stage' not in out, out
    assert _status(clone) == {}
    assert 'dice_a' in run('dvc metrics show --json', clone).stdout

def test_every_module_edit_reaches_the_stages_that_run_it(clone):
    """After `dvc repro`, editing any module under reclmis/ makes `dvc status` report every stage whose code imports
    it. Every module is edited at once and `dvc status` run once: it names, per stage, each changed dep, so module
    m reaches exactly the stages whose changed deps include m (one call instead of one per module: 260 s -> 10 s)."""
    from reclmis.graph import stage_code
    stages = yaml.safe_load((clone / 'dvc.yaml').read_text())['stages']
    files = sorted((clone / 'reclmis').glob('*.py'))
    texts = {f: f.read_text() for f in files}
    try:
        for f, t in texts.items(): f.write_text(t + '\n# touched by the dependency test\n')
        st = _status(clone)
    finally:
        for f, t in texts.items(): f.write_text(t)
    changed = {}                                    # module -> stages whose changed deps name it
    for name, entries in st.items():
        for e in entries:
            for path in (e.get('changed deps', {}) if isinstance(e, dict) else {}):
                changed.setdefault(path, set()).add(name.split('@')[0])
    assert changed, st
    for f in files:
        rel = f'reclmis/{f.name}'
        users = {n for n, s in stages.items() if rel in stage_code(s['cmd'], clone)}
        reported = changed.get(rel, set())
        assert users <= reported, f'editing {rel}: stages {sorted(users - reported)} not reported by dvc status'
        if not users: assert not reported, f'{rel} is run by no stage, yet dvc status reports {sorted(reported)}'
    assert _status(clone) == {}

def test_study_pipeline(clone):
    "The study pipeline: every grid of `studies:` as train/evaluate matrices, summarised by its summary stage."
    run('dvc repro studies/dvc.yaml:summary-compare studies/dvc.yaml:summary-uptake studies/dvc.yaml:summary-augment '
        'studies/dvc.yaml:summary-ablate studies/dvc.yaml:summary-notes studies/dvc.yaml:summary-aid '
        'studies/dvc.yaml:cam '
        'studies/dvc.yaml:comparison', clone,
        env=ENV, timeout=3000)    # every study and its summary, and the Grad-CAM stage (not the 8-min benchmark)
    base = clone / 'results/studies'
    for st, ds, model, seed in (('compare', 'synth', 'reclmis', 3407), ('seeds', 'synth', 'unet', 2),
                                ('uptake', 'synth', 'reclmis-official-ci', 2),
                                ('augment', 'synth', 'reclmis-aug-notesafe', 3407)):
        r = base / st / ds / model / f's{seed}'
        assert (r / 'metrics.json').exists() and (r / 'evaluate.ipynb').exists(), r
    notes = json.loads((base / 'summary-notes.json').read_text())['summary']['synth']
    assert notes['reclmis-canonical']['seeds'] == [3407] and 'text_paraphrase_dice_a' in notes['reclmis-canonical']
    assert notes['reclmis']['seeds'] == [3407] and notes['unet']['seeds'] == [3407]   # lent by compare
    assert not (base / 'uptake/synth/unet').exists()                       # a run is trained once: seeds lends it
    t = json.loads((base / 'seeds/synth/unet/s2/train.json').read_text())
    assert t['seed'] == 2 and t['machines'][0]['torch_threads'] == 1         # the study's seed and thread count
    aug = json.loads((base / 'augment/synth/reclmis-aug-notesafe/s3407/train.json').read_text())
    assert aug['base_model'] == 'reclmis'
    from reclmis.study import load_summaries
    s = load_summaries(base)
    assert [r['seed'] for r in s['uptake']['variants']['reclmis']] == [2]            # lent by seeds
    assert [r['seed'] for r in s['uptake']['variants']['reclmis-official-ci']] == [2]
    assert len(s['uptake']['baseline']['runs']) == 1
    assert [r['seed'] for r in s['aid']['variants']['reclmis-deepsup']] == [1]     # the aid trains end to end
    assert set(s['aid']['variants']) == {'reclmis-deepsup'} and not s['aid']['baseline']['runs']   # seeds lends none
    assert s['compare']['synth']['models']['reclmis']['seeds'] == [2, 3407]          # compare's and seeds' runs
    assert s['compare']['synth']['models']['lvit']['seeds'] == [2, 3407]              # compare's and rivals' runs
    cf = json.loads((clone / 'results/synth/comparison.json').read_text())          # the per-dataset test file
    assert cf['ci_unit'] == 'image' and {'a', 'b', 'diff', 'ci_low', 'ci_high', 'p', 'p_holm'} <= set(cf['pairs'][0])
    assert set(s['augment']['recipes']) == {'hflip', 'official_notesafe'}   # synth's configured recipe is hflip
    pair = next(q for q in s['compare']['synth']['pairs'] if {q['a'], q['b']} == {'reclmis', 'unet'})
    assert 'p_holm' in pair
    cam = json.loads((base / 'cam.json').read_text())           # C11: the compare study's three synth runs
    assert set(cam['models']) == {'unet', 'lvit', 'reclmis'} and cam['n_images'] == 16, cam['models'].keys()
    assert s['compare']['synth']['ci_unit'] == 'image'
    ab = next(x for x in s['ablate']['synth']['contrasts'] if x['b'] == 'reclmis-no-text' and x['a'] == 'reclmis')
    assert s['ablate']['synth']['lent'] == ['reclmis (seeds)']      # the full model is lent by seeds at each seed;
    assert ab['seeds'] == [2] and 'p_holm' in ab                    # the contrast at the seed both have
    assert s['ablate']['synth']['models']['reclmis-ci-only']['seeds'] == [1]    # the components study's run, read too
    left = {k for k in _status(clone, 'studies/dvc.yaml')
            if not k.endswith((':bench', ':bench-ddp', ':claims'))}   # the claims ledger needs the benchmark
    assert not left, left
    lock = yaml.safe_load((clone / 'studies/dvc.lock').read_text())['stages']
    assert 'evaluate-seeds@seeds-synth-unet-2' in lock

def test_exp_run_with_set_param(clone):
    run('git add -A && git commit -qm results', clone)
    run("dvc exp run -S train.epochs=1 -S 'run.seeds=[5]' -S 'run.models=[unet]' -n one-epoch", clone, env=ENV)
    assert 'one-epoch' in run('dvc exp show --json', clone).stdout
    t = json.loads((clone / 'results/synth/unet/s5/train.json').read_text())
    assert t['epochs_run'] == 1 and t['seed'] == 5
    run('git checkout -q -- . && git clean -qfd results', clone)

def test_queue_runs_experiments_in_parallel(clone, tmp_path):
    """DVC's own queue: two queued experiments (other seeds), run by two workers, both listed by `dvc exp show`.
    Each reproduces the pipeline up to `train` (its workspace copy starts without build/: fetch to train)."""
    for s in (11, 12):
        run(f"dvc exp run --queue train -S 'run.seeds=[{s}]' -S 'run.models=[unet]' -S train.epochs=1 -n q{s}", clone)
    # The workers are daemons that inherit the caller's stdout: with it captured (a pipe), `dvc queue start` would
    # return only when the last worker exits. Their output goes to a file; no RECLMIS_ROOT: each experiment runs
    # in its own workspace copy.
    run(f'dvc queue start -j 2 > {tmp_path}/queue-start.log 2>&1', clone, timeout=120)
    t0, st = time.time(), ''
    try:
        while time.time() - t0 < 1200:
            st = run('dvc queue status', clone).stdout
            if 'Queued' not in st and 'Running' not in st: break
            time.sleep(5)
        logs = run('dvc queue logs q11', clone, check=False).stdout[-3000:]
        assert 'Queued' not in st and 'Running' not in st, f'not done after {time.time() - t0:.0f} s\n{st}\n{logs}'
        assert 'Failed' not in st, st + logs
    finally:
        run('dvc queue stop --kill', clone, check=False, timeout=120)   # never leave workers behind
    shown = run('dvc exp show --json', clone).stdout
    assert 'q11' in shown and 'q12' in shown, shown[-2000:]

def test_predict_after_repro(clone, tmp_path):
    "The README's predict command works on a clean clone after `dvc repro`, and a note change moves the mask."
    img = clone / 'build/synth/raw/test/images/00000.png'
    notes = ['unilateral pulmonary infection, one infected area, upper left lung.',
             'bilateral pulmonary infection, two infected areas, lower left lung and lower right lung.']
    outs = []
    for i, note in enumerate(notes):
        r = run(f'reclmis predict {img} --note "{note}" --out {tmp_path}/p{i}', clone, env=ENV)
        assert 'overlay:' in r.stdout, r.stdout
        outs.append((tmp_path / f'p{i}' / '00000_mask.png').read_bytes())
        assert (tmp_path / f'p{i}' / '00000_overlay.png').exists()
    r = run(f'reclmis predict {img} --out {tmp_path}/p', clone, check=False, env=ENV)
    assert r.returncode == 2 and 'reads the note' in r.stderr, r.stderr
    r = run(f'reclmis predict {img} --note x --ckpt {tmp_path}/none.pt', clone, check=False)
    assert r.returncode == 2 and 'none.pt' in r.stderr, r.stderr
