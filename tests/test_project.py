"Project-level checks: the stage notebooks, params.yaml, and the library being in sync with the notebooks."
import json, shutil, subprocess, filecmp, typing
from dataclasses import fields, is_dataclass
from pathlib import Path
import yaml
from reclmis.params import Params
from reclmis.config import load_params
from conftest import run

def test_stage_notebooks_have_parameters_cell(root):
    "papermill injects parameters after the cell tagged `parameters`; nbdev_clean must not strip that tag."
    nbs = sorted((root / 'nbs' / 'stages').glob('*.ipynb'))
    assert {p.stem for p in nbs} >= {'train', 'evaluate', 'report'}
    for p in nbs:
        cells = json.loads(p.read_text())['cells']
        tagged = [c for c in cells if 'parameters' in c.get('metadata', {}).get('tags', [])]
        assert len(tagged) == 1, f"{p} needs exactly one cell tagged 'parameters'"

def test_settings_keep_tags(root):
    assert 'allowed_cell_metadata_keys = tags' in (root / 'settings.ini').read_text()

def _keys(cls, prefix=''):
    out = set()
    for f in fields(cls):
        t = typing.get_type_hints(cls)[f.name]
        if is_dataclass(t): out |= _keys(t, f'{prefix}{f.name}.')
        elif prefix or f.name not in ('datasets', 'variants', 'studies'): out.add(f'{prefix}{f.name}')
    return out

def _yaml_keys(d, prefix=''):
    out = set()
    for k, v in d.items():
        if k in ('datasets', 'variants', 'studies') and not prefix: continue
        if isinstance(v, dict): out |= _yaml_keys(v, f'{prefix}{k}.')
        else: out.add(f'{prefix}{k}')
    return out

def test_params_yaml_names_every_knob(root):
    "Every schema field appears in params.yaml (single source of truth: no hidden defaults)."
    y = yaml.safe_load((root / 'params.yaml').read_text())
    assert _keys(Params) == _yaml_keys(y)
    p = load_params(root / 'params.yaml')
    assert p.run.datasets == ['demo'] and 'qata' in p.datasets and p.datasets['demo'].kind == 'synth'
    assert p.fetch.source == 'upstream', 'a user has no offline mirror: the default is the public download'
    assert {'compare', 'uptake', 'augment'} <= set(p.studies) and 'reclmis-official-ci' in p.variants

def test_params_and_deviations_follow_the_declarations(root):
    """params.yaml's values and generated comments, the Deviations page's knob table and the model classes' defaults
    all agree with the knobs' declarations in reclmis.params (one declaration, no drift)."""
    import json
    from reclmis.declarations import params_drift, deviation_table
    from reclmis.registry import official_drift
    assert params_drift(root / 'params.yaml') == []
    assert official_drift() == []
    nb = json.loads((root / 'nbs' / 'deviations.ipynb').read_text())
    cell = next(c for c in nb['cells'] if 'deviation_table()' in ''.join(c['source']))
    shown = ''.join(cell['outputs'][0]['data']['text/markdown'])
    assert shown == deviation_table(), 'the Deviations page shows a stale knob table: run python scripts/devtable.py'

def test_stage_deps_cover_the_code_they_run(root):
    "Every stage of both pipelines lists, as deps, every project file its command runs (from the import graph)."
    from reclmis.graph import check_stage_deps
    for f in ('dvc.yaml', 'studies/dvc.yaml'):
        miss = {k: v for k, v in check_stage_deps(f, root).items() if v}
        assert not miss, f"{f}: stages miss the code they run as deps (add them): {miss}"

def _locked_stages(root, locks=('dvc.lock', 'studies/dvc.lock')):
    "(lock, stage name, stage entry) for every stage recorded in the committed locks."
    for lock in locks:
        f = root / lock
        if not f.exists(): continue
        for name, st in (yaml.safe_load(f.read_text()) or {}).get('stages', {}).items(): yield lock, name, st

def test_committed_results_are_stage_outputs(root):
    "Every file under results/ in git is (inside) an output recorded in a committed dvc.lock; metrics.json exactly."
    tracked = run('git ls-files results', root).stdout.split()
    outs = {o['path'] for _, _, st in _locked_stages(root) for o in st.get('outs', [])}
    metrics = [t for t in tracked if t.endswith('metrics.json')]
    assert metrics, 'no committed metrics at all'
    assert not [t for t in metrics if t not in outs], [t for t in metrics if t not in outs]
    stray = [t for t in tracked if not any(t == o or t.startswith(o.rstrip('/') + '/') for o in outs)]
    assert not stray, f'committed under results/ but no stage output (regenerate or remove): {stray}'

def test_committed_locks_match_the_committed_files(root):
    """Every git-tracked file the default pipeline's dvc.lock records (deps and outs: results, notebooks, code, the
    study lock the report reads), and every git-tracked output of the study lock, has the recorded md5: a lock left
    behind would otherwise say "up to date" over results made from other inputs. (Directories and build/ are not in
    git: not checked. Study runs made by older code keep their deps: a run is trained once; `dvc status
    studies/dvc.yaml` lists them.)"""
    import hashlib
    tracked = set(run('git ls-files', root).stdout.split())
    bad = []
    for lock, name, st in _locked_stages(root):
        for e in st.get('outs', []) + (st.get('deps', []) if lock == 'dvc.lock' else []):
            if e['path'] not in tracked or str(e.get('md5', '')).endswith('.dir'): continue
            if hashlib.md5((root / e['path']).read_bytes()).hexdigest() != e['md5']:
                bad.append(f"{lock} {name}: {e['path']}")
    assert not bad, 'stale lock entries (re-run those stages):\n' + '\n'.join(bad[:30]) + f'\n({len(bad)} in all)'

def test_no_reference_outside_the_repository(root):
    "Docs and code cite primary sources, never a file that only exists on the maintainers' machines."
    hits = run("git grep -n -i -e 'method-spec' -e 'shared/data' -- "
               "nbs reclmis README.md params.yaml dvc.yaml studies", root,
               check=False).stdout
    assert not hits.strip(), hits

def test_library_in_sync_with_notebooks(root, tmp_path):
    "nbdev_export on a copy of the notebooks reproduces reclmis/ byte for byte."
    for f in ('settings.ini', 'setup.py', 'params.yaml', 'dvc.yaml'): shutil.copy(root / f, tmp_path / f)
    shutil.copytree(root / 'nbs', tmp_path / 'nbs')
    shutil.copytree(root / 'reclmis', tmp_path / 'reclmis')
    run('nbdev_export', tmp_path)
    diff = [f.name for f in (root / 'reclmis').glob('*.py')
            if not filecmp.cmp(f, tmp_path / 'reclmis' / f.name, shallow=False)]
    assert not diff, f"reclmis/ is out of sync with nbs/ for {diff}: run nbdev_export"

def test_bench_command_writes_json(root, tmp_path):
    """The benchmark is a command (not a test of speed): its quick mode runs the real code path and writes the JSON
    and table."""
    r = run(f'reclmis bench --quick --models unet reclmis --no-speedups --out {tmp_path}', root)
    out = json.loads((tmp_path / 'bench-cpu-quick.json').read_text())
    assert [m['model'] for m in out['models']] == ['unet', 'reclmis']
    rec = out['models'][1]
    assert rec['params_total'] > rec['params_inference'] and rec['macs_thop'] > 0 and 'latency_b1_with_encoder' in rec
    assert out['machine']['cpu_count'] >= 1 and '| reclmis |' in r.stdout

def test_gpu_session_script(root, tmp_path):
    """The prepared GPU plan: bad steps stop with a usage line; the machine's params file is valid and says what it
    should."""
    sh = lambda *a: subprocess.run(['bash', str(root / 'scripts' / 'gpu_session.sh'), *a], capture_output=True,
                                   text=True, env={**__import__('os').environ, 'OUT': str(tmp_path / 'out')})
    r = sh('frobnicate'); assert r.returncode == 2 and "unknown step 'frobnicate'" in r.stderr, r.stderr
    r = sh(); assert r.returncode == 2 and 'usage' in r.stderr, r.stderr
    f = tmp_path / 'p.yaml'
    r = sh('params', '2.5', str(f)); assert r.returncode == 0, r.stderr
    p = load_params(f)
    assert p.fetch.source == '/tmp/reclmis-mirror' and p.run.live is False and p.run.device == 'cuda'
    ds = p.datasets['qata_full']
    assert ds.overrides['train']['max_minutes'] == 2.5 and ds.overrides['train']['augment'] == 'official'
    assert ds.limit_train == 0

def test_readme_results_match_the_committed_results(root, tmp_path):
    """The README's results block is regenerated from the committed stage outputs, never typed: a stale one fails.
    Read from git (HEAD), not the working tree: README command 1 rewrites the run files (new latencies and times)."""
    from reclmis.readme import sync_readme
    run(f'git archive HEAD README.md results | tar -x -C {tmp_path}', root)
    assert sync_readme(root=tmp_path, check=True) is False

def test_study_summaries_are_fresh(root):
    """The committed summaries and the claims ledger were made from the committed runs: `dvc status` of each summary
    stage and of `claims` (the stage itself, not its upstream runs, whose checkpoints are not in git) is clean. A run
    re-made without re-running the summaries after it fails here (it once left the README's claims stale). A study
    with no committed run at all cannot be summarised by DVC (its results folder is missing): its committed summary
    must then say so (`summary: null`), never show numbers."""
    stages = yaml.safe_load((root / 'studies/dvc.yaml').read_text())['stages']
    targets = []
    for name, st in stages.items():
        if not (name.startswith('summary-') or name == 'claims'): continue
        missing = [d for d in st['deps'] if d.startswith('results/studies/') and not (root / d).exists()]
        if missing:
            f = root / f'results/studies/{name}.json'
            assert not f.exists() or json.loads(f.read_text())['summary'] is None, (name, missing)
        else: targets.append(f'studies/dvc.yaml:{name}')
    assert len(targets) >= 3, targets
    stale = json.loads(run('dvc status --json ' + ' '.join(targets), root).stdout or '{}')
    assert not stale, ('stale study summaries (run `dvc repro -s <stage>` for each, then commit): '
                       f'{json.dumps(stale)[:2000]}')
