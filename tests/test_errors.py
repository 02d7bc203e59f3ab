"Bad input gets one clear line naming the file/key and the fix, through the user-facing command, never a silent skip."
import json, shutil, tarfile, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, yaml
from PIL import Image
from reclmis.core import DataError, ParamsError
from reclmis import data, decode, sources
from conftest import run

def _cli(args, cwd, params=None):
    return run(f"reclmis {'--params ' + str(params) + ' ' if params else ''}{args}", cwd, check=False)

def _params(root, tmp_path, edit):
    y = yaml.safe_load((root / 'params.yaml').read_text()); edit(y)
    p = tmp_path / 'params.yaml'; p.write_text(yaml.safe_dump(y)); return p

def test_unknown_params_key(root, tmp_path):
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['train'].update(epoch=3)))
    assert r.returncode == 2 and "unknown params key 'train.epoch'" in r.stderr, r.stderr

def test_wrong_params_type(root, tmp_path):
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['train'].update(epochs='ten')))
    assert r.returncode == 2 and "'train.epochs' must be an integer" in r.stderr, r.stderr

def test_unknown_model_name(root, tmp_path):
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['run'].update(models=['unet', 'segformer'])))
    assert r.returncode == 2 and "unknown model 'segformer'" in r.stderr, r.stderr

def test_unknown_dataset_name(root):
    r = _cli('fetch kvasir', root)
    assert r.returncode == 2 and "unknown dataset 'kvasir'" in r.stderr, r.stderr

def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match=r'not found.*fetch.source'):
        sources.fetch('qata-cov19', tmp_path / 'no-mirror-here', tmp_path / 'out')

def test_checksum_mismatch(shared_data, tmp_path):
    "A mirror whose file differs from the pinned sha256 stops with the file's name."
    m = tmp_path / 'monuseg'; m.mkdir()
    shutil.copy(shared_data / 'monuseg' / 'MANIFEST.json', m)
    (m / 'monuseg-512.tar').write_bytes(b'not the real archive')
    with pytest.raises(DataError, match='monuseg-512.tar') as e: sources.verify_mirror(m)
    assert 'sha256' in str(e.value) or 'checksum' in str(e.value)

def _png(path, a): path.parent.mkdir(parents=True, exist_ok=True); Image.fromarray(a).save(path); return path

def test_corrupt_image(tmp_path):
    p = tmp_path / 'bad.png'; p.write_bytes(b'\x89PNG\r\n\x1a\n garbage')
    with pytest.raises(DataError, match='bad.png'): decode.load_image(p, 32)

def test_truncated_image(tmp_path):
    p = _png(tmp_path / 'full.png', np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    t = tmp_path / 'trunc.png'; t.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataError, match='trunc.png'): decode.load_image(t, 32)

def _lvit_folder(root, mask_size=32, notes=True):
    for split, F in (('train', 'Train'), ('val', 'Val'), ('test', 'Test')):
        _png(root / f'{F}_Folder/img/a.png', np.full((32, 32, 3), 100, np.uint8))
        _png(root / f'{F}_Folder/labelcol/a.png', np.zeros((mask_size, mask_size), np.uint8))
        rows = ([{'Image': 'a.png', 'Description': 'Nuclei are dense.'}] if notes
                else [{'Image': 'other.png', 'Description': 'x'}])
        pd.DataFrame(rows).to_excel(root / f'{F}_Folder/{F}_text.xlsx', index=False)

def test_missing_note(tmp_path):
    _lvit_folder(tmp_path, notes=False)
    with pytest.raises(DataError, match='a.png'): data.index_lvit(tmp_path)

def test_mask_image_size_mismatch(tmp_path):
    _lvit_folder(tmp_path, mask_size=16)
    df = data.index_lvit(tmp_path)
    with pytest.raises(DataError, match='a.png'): decode.decode(df, tmp_path, 32)

def test_mask_values_other_than_0_255(tmp_path):
    "Default: binarised (> 0) like the official code, with a warning naming the file; strict: an error."
    p = _png(tmp_path / 'm.png', np.array([[0, 128], [255, 0]], np.uint8))
    with pytest.warns(UserWarning, match='m.png'): m = decode.load_mask(p, 2)
    assert m.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(DataError, match='m.png'): decode.load_mask(p, 2, strict=True)


def test_empty_note_in_index(tmp_path):
    "An image whose note is empty is refused at index time, naming the file (never silently dropped)."
    _lvit_folder(tmp_path)
    pd.DataFrame([{'Image': 'a.png', 'Description': '   '}]).to_excel(tmp_path / 'Test_Folder/Test_text.xlsx',
                                                                      index=False)
    with pytest.raises(DataError, match='a.png'): data.index_lvit(tmp_path)

def test_unknown_text_encoder(root, tmp_path):
    r = _cli('encode synth', root, _params(root, tmp_path, lambda y: y['text'].update(encoder='bert-large')))
    assert r.returncode == 2 and "'text.encoder' is 'bert-large'; must be one of minilm" in r.stderr, r.stderr

def test_bad_reclmis_param(root, tmp_path):
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['model']['reclmis'].update(mask_mode='gauss')))
    assert r.returncode == 2 and "'model.reclmis.mask_mode'" in r.stderr, r.stderr
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['model']['reclmis'].update(ci=False)))
    assert r.returncode == 2 and 'ccl, cvr and clr false' in r.stderr, r.stderr

def test_unknown_augmentation(root, tmp_path):
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['train'].update(augment='randaugment')))
    assert r.returncode == 2, r.stderr
    assert "'train.augment' is 'randaugment'" in r.stderr and 'official_notesafe' in r.stderr, r.stderr

def test_missing_text_features(tmp_path):
    from reclmis.text import TextBank
    with pytest.raises(DataError, match='encode stage'): TextBank.load(tmp_path / 'bank.pt')

def test_bad_variant(root, tmp_path):
    "A variant's base, its override keys and the studies' model and dataset names are checked, naming the key."
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['variants'].update(x={'base': 'segformer'})))
    assert r.returncode == 2 and "'variants.x.base'" in r.stderr, r.stderr
    r = _cli('train synth rec-x', root, _params(root, tmp_path, lambda y: y['variants'].update(
        {'rec-x': {'base': 'reclmis', 'model': {'cvrr': False}}})))
    assert r.returncode == 2 and "'variants.rec-x.model.cvrr'" in r.stderr, r.stderr   # where it is written
    r = _cli('prepare synth', root,
             _params(root, tmp_path, lambda y: y['studies']['uptake'].update(models=['unet', 'unet3d'])))
    assert r.returncode == 2 and "'studies.uptake.models'" in r.stderr and 'unet3d' in r.stderr, r.stderr
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['run'].update(study_datasets=['synth'])))
    assert r.returncode == 2 and "'run.study_datasets'" in r.stderr, r.stderr
    r = _cli('prepare synth', root, _params(root, tmp_path, lambda y: y['run'].update(seeds=[])))
    assert r.returncode == 2 and "'run.seeds' must be a non-empty list of ints" in r.stderr, r.stderr

def test_unknown_study(root):
    r = _cli('--study nosuch train synth unet', root)
    assert r.returncode == 2 and "unknown study 'nosuch'" in r.stderr, r.stderr
