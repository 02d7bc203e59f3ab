"""Distributed training with torch.distributed on the CPU (gloo), 2 processes on the tiny embedded data: equality with
one process (SyncBatchNorm), determinism, a killed rank and the re-run that resumes, the `run.nproc` launcher, and the
checkpoint in the single-process predictor."""
import json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest, torch, yaml
from conftest import RUN

CKPT, RES = Path('build') / RUN / 'ckpt', Path('results') / RUN


def _params(ws, name, train=None, run=None):
    y = yaml.safe_load((ws / 'params.yaml').read_text())
    y['train'].update(train or {}); y['run'].update({'threads': 1, **(run or {})})
    y['model']['unet'].update(bce='plain')   # a per-image mean (LViT's balanced BCE normalises over each rank's chunk)
    (ws / name).write_text(yaml.safe_dump(y, sort_keys=False)); return name


def _env(ws): return {**os.environ, 'RECLMIS_ROOT': str(ws), 'OMP_NUM_THREADS': '1', 'DVC_NO_ANALYTICS': '1'}


def _torchrun(ws, params, nproc=2, wait=True):
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', '-m', 'reclmis',
           '--params', params, 'train', 'synth', 'unet']
    if not wait:     # the caller polls while it runs: output to a file (a pipe nobody reads fills and blocks the run)
        with open(ws / 'torchrun.log', 'w') as log:
            return subprocess.Popen(cmd, cwd=ws, env=_env(ws), stdout=log, stderr=subprocess.STDOUT, text=True)
    p = subprocess.Popen(cmd, cwd=ws, env=_env(ws), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.communicate(timeout=600)[0]
    assert p.returncode == 0, out[-3000:]
    return out


def _log(ws): return (ws / 'torchrun.log').read_text()[-2000:]


def _single(ws, params):
    r = subprocess.run(['reclmis', '--params', params, 'train', 'synth', 'unet'], cwd=ws, env=_env(ws),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


def _hist(ws): return json.loads((ws / RES / 'train.json').read_text())


def _weights(ws, f='best.pt'): return torch.load(ws / CKPT / f, weights_only=False)['model']


def test_two_ranks_equal_one_process_with_sync_bn(ws):
    """2 gloo ranks x 8 images with SyncBatchNorm train the same function as 1 process x 16 images: the same images and
    flips per step (one permutation, contiguous chunks), BatchNorm over the global batch, DDP's averaged gradients
    equal the global mean's. Equal within float32 rounding (different summation orders): losses to 1e-5 relative."""
    _torchrun(ws, _params(ws, 'ddp.yaml', {'epochs': 3, 'batch_size': 8, 'sync_bn': True}))
    a = _hist(ws)
    assert a['world_size'] == 2 and a['backend'] == 'gloo'
    _single(ws, _params(ws, 'one.yaml', {'epochs': 3, 'batch_size': 16}))
    b = _hist(ws)
    assert b['world_size'] == 1
    for ha, hb in zip(a['history'], b['history']):
        assert ha['train_loss'] == pytest.approx(hb['train_loss'], rel=1e-5), (ha, hb)
        assert ha['val_dice'] == pytest.approx(hb['val_dice'], abs=1e-5), (ha, hb)
    assert a['best_epoch'] == b['best_epoch']
    # (weights are not compared: a conv bias before BatchNorm has a zero gradient up to rounding, which Adam's
    # normalisation turns into full-size steps of noise; the function the weights compute is compared above)


def test_two_ranks_are_deterministic_and_load_in_the_predictor(ws, tmp_path):
    "Two 2-rank runs (same seed, world size, threads) end with bit-identical weights; the checkpoint predicts."
    p = _params(ws, 'ddp.yaml', {'epochs': 2, 'batch_size': 8})
    _torchrun(ws, p); w1 = _weights(ws, 'last.pt')
    (ws / CKPT / 'last.pt').unlink(); (ws / CKPT / 'best.pt').unlink()
    _torchrun(ws, p); w2 = _weights(ws, 'last.pt')
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    from reclmis.predict import Segmenter
    out = Segmenter(ws / CKPT / 'best.pt')(str(ws / 'build/synth/raw/test/images/00000.png'))
    assert out['mask'].shape == (32, 32)


def test_kill_a_rank_then_resume(ws):
    "SIGKILL rank 0 mid-run: torchrun stops, last.pt stays valid, and the same command resumes from it."
    p = _params(ws, 'long.yaml', {'epochs': 60, 'batch_size': 8})
    run = _torchrun(ws, p, wait=False)
    lock, t0 = ws / 'build/.locks/default-synth-unet-s3407.lock', time.time()
    while True:
        assert run.poll() is None, 'the run ended before it could be killed: ' + _log(ws)
        assert time.time() - t0 < 300
        last = ws / CKPT / 'last.pt'
        if last.exists():
            st = torch.load(last, weights_only=False)['state']
            if st['fingerprint'] != _hist(ws)['fingerprint'] and st['epoch'] >= 2: break
        time.sleep(0.1)
    os.kill(json.loads(lock.read_text())['pid'], signal.SIGKILL)
    run.wait(timeout=120)
    assert run.returncode != 0
    done = torch.load(ws / CKPT / 'last.pt', weights_only=False)['state']['epoch'] + 1     # valid after the kill
    assert 3 <= done < 60
    out = _torchrun(ws, p)
    assert f'after epoch {done}' in out or f'after epoch {done + 1}' in out, out[-2000:]   # <= 1 epoch lost
    h = _hist(ws)
    assert h['finished'] and h['world_size'] == 2 and [r['epoch'] for r in h['history']] == list(range(1, 61))


def test_run_nproc_launches_torchrun(ws):
    "`run.nproc: 2` makes the same command (and the pipeline's train stage) launch torchrun itself."
    r = subprocess.run(['reclmis', '--params', _params(ws, 'n2.yaml', {'epochs': 1}, {'nproc': 2}), 'train', 'synth',
                        'unet'], cwd=ws, env=_env(ws), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _hist(ws)['world_size'] == 2


GATHER = '''
import os, sys, torch, torch.distributed as dist
from reclmis.contrastive import ccl_loss
dist.init_process_group('gloo'); r, W = dist.get_rank(), dist.get_world_size()
g = torch.Generator().manual_seed(0)
B, L, N, D = 8, 5, 6, 4
text, patches = torch.randn(B, L, D, generator=g), torch.randn(B, N, D, generator=g)
mask = torch.rand(B, L, generator=g) > 0.3; mask[:, 0] = True
woi, poi = torch.rand(B, L, generator=g).softmax(-1), torch.rand(B, N, generator=g).softmax(-1)
lo, hi = r * B // W, (r + 1) * B // W
t, p = text[lo:hi].clone().requires_grad_(), patches[lo:hi].clone().requires_grad_()
loss = ccl_loss(t, p, mask[lo:hi], woi[lo:hi], poi[lo:hi], gather=True)
loss.backward()
torch.save({'loss': loss.detach(), 'gt': t.grad / W, 'gp': p.grad / W}, sys.argv[1] + f'/r{r}.pt')
dist.barrier(); dist.destroy_process_group()   # leave the group before exit (gloo aborts otherwise, at times)
'''


def test_global_contrastive_batch(tmp_path):
    """`model.reclmis.ccl_gather`: on 2 ranks the CCL over the all-gathered batch equals the 1-process loss on the whole
    batch, and each rank's gradient (divided by the world size, as DDP averages) is the whole-batch gradient's share."""
    from reclmis.contrastive import ccl_loss
    (tmp_path / 'g.py').write_text(GATHER)
    r = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                        str(tmp_path / 'g.py'), str(tmp_path)], capture_output=True, text=True, timeout=300,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    g = torch.Generator().manual_seed(0)
    B, L, N, D = 8, 5, 6, 4
    text, patches = torch.randn(B, L, D, generator=g), torch.randn(B, N, D, generator=g)
    mask = torch.rand(B, L, generator=g) > 0.3; mask[:, 0] = True
    woi, poi = torch.rand(B, L, generator=g).softmax(-1), torch.rand(B, N, generator=g).softmax(-1)
    text.requires_grad_(); patches.requires_grad_()
    full = ccl_loss(text, patches, mask, woi, poi); full.backward()
    for k in range(2):
        o = torch.load(tmp_path / f'r{k}.pt')
        assert torch.allclose(o['loss'], full.detach(), atol=1e-6)
        assert torch.allclose(o['gt'], text.grad[4 * k:4 * (k + 1)], atol=1e-6)
        assert torch.allclose(o['gp'], patches.grad[4 * k:4 * (k + 1)], atol=1e-6)
    assert not torch.allclose(ccl_loss(text[:4], patches[:4], mask[:4], woi[:4], poi[:4]), full)   # per-rank differs
