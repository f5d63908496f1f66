"""Checkpoints, resumption, determinism, the table cache and non-finite losses."""

import multiprocessing as mp
import os

import pyro
import pytest
import torch

from pyro_mapa import GaussianKernel, MAPAGuide, NonFiniteLossError, PosteriorTable
from pyro_mapa.training.checkpoint import load_checkpoint, save_checkpoint
from pyro_mapa.datasets import load_dataset
from pyro_mapa.methods import build_method
from pyro_mapa.training import fit


def _data(n=150):
    return load_dataset("circle", num_train=n, num_valid=5, num_test=5, seed=3)


def _train(method, epochs, checkpoint=None, resume=False, seed=7):
    ds = _data()
    pyro.clear_param_store()
    setup = build_method(method, ds.train, ds.likelihood, hidden=(16,), seed=seed)
    result = fit(setup.model, setup.guide, setup.loss, len(ds.train), epochs=epochs, batch_size=40,
                 lr=1e-2, seed=seed, progress=False, checkpoint=checkpoint, resume=resume)
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().named_parameters()}
    return result, params


@pytest.mark.parametrize("method", ["MAPA", "VAE", "IWAE"])
def test_resume_equals_uninterrupted_run(tmp_path, method):
    straight, p_straight = _train(method, 4)
    ckpt = tmp_path / "run.ckpt"
    _train(method, 2, checkpoint=ckpt)
    assert load_checkpoint(ckpt)["epoch"] == 2
    # A new process would start from scratch: new modules, empty param store.
    resumed, p_resumed = _train(method, 4, checkpoint=ckpt, resume=True)
    assert resumed.steps == straight.steps
    torch.testing.assert_close(torch.tensor(resumed.epoch_losses), torch.tensor(straight.epoch_losses))
    assert p_resumed.keys() == p_straight.keys()
    for k in p_straight:
        torch.testing.assert_close(p_resumed[k], p_straight[k], rtol=1e-5, atol=1e-6)
    assert resumed.decoder_passes_per_point == pytest.approx(straight.decoder_passes_per_point)


def test_same_seed_same_run():
    a, pa = _train("MAPA", 2)
    b, pb = _train("MAPA", 2)
    assert a.epoch_losses == b.epoch_losses
    for k in pa:
        assert torch.equal(pa[k], pb[k])
    c, _ = _train("MAPA", 2, seed=8)
    assert c.epoch_losses != a.epoch_losses


def test_checkpoint_files_are_code_free_and_checked(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"epoch": 1, "params": {"w": torch.ones(2)}})
    assert load_checkpoint(path)["params"]["w"].tolist() == [1.0, 1.0]
    raw = path.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(ValueError, match="could not read"):
        load_checkpoint(tmp_path / "cut.ckpt")
    torch.save({"format": "something else"}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="not a pyro_mapa checkpoint"):
        load_checkpoint(tmp_path / "other.ckpt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "pyro_mapa.checkpoint", "version": 1, "x": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="could not read"):  # weights_only refuses to unpickle it
        load_checkpoint(tmp_path / "evil.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt", "cut.ckpt", "evil.ckpt", "other.ckpt"]


def test_resume_with_other_architecture_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "run.ckpt"
    _train("MAPA", 1, checkpoint=ckpt)
    ds = _data()
    pyro.clear_param_store()
    setup = build_method("MAPA", ds.train, ds.likelihood, hidden=(8,), seed=0)
    with pytest.raises(ValueError, match="another architecture"):
        fit(setup.model, setup.guide, setup.loss, len(ds.train), epochs=2, batch_size=40,
            progress=False, checkpoint=ckpt, resume=True)


def test_non_finite_loss_names_the_step():
    pyro.enable_validation(False)
    ds = _data()
    setup = build_method("MAPA", ds.train, ds.likelihood, hidden=(8,))
    with torch.no_grad():
        next(setup.decoder.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, step 0 .*likelihood"):
        fit(setup.model, setup.guide, setup.loss, len(ds.train), epochs=1, progress=False)


def test_table_cache_hit_miss_and_damage(tmp_path):
    x = _data().train
    kernel = GaussianKernel(0.05)
    t1 = PosteriorTable.cached(x, kernel, tmp_path)
    files = list(tmp_path.glob("mapa-table-*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    t2 = PosteriorTable.cached(x, kernel, tmp_path)  # hit: no rewrite
    assert files[0].stat().st_mtime_ns == mtime and torch.equal(t1.log_probs, t2.log_probs)
    PosteriorTable.cached(x, GaussianKernel(0.1), tmp_path)  # other kernel settings: other key
    PosteriorTable.cached(x + 1, kernel, tmp_path)  # other data: other key
    assert len(list(tmp_path.glob("mapa-table-*.pt"))) == 3
    files[0].write_bytes(b"garbage")  # a damaged entry is rebuilt, not trusted
    t3 = PosteriorTable.cached(x, kernel, tmp_path)
    assert torch.equal(t3.indices, t1.indices)
    assert PosteriorTable.load(files[0]).fingerprint == t1.fingerprint


def _build_cached(args):
    path, seed = args
    torch.set_num_threads(1)
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    table = PosteriorTable.cached(x, GaussianKernel(0.5), path)
    return table.indices.sum().item()


def test_table_cache_two_processes_at_once(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        sums = pool.map(_build_cached, [(str(tmp_path), 0), (str(tmp_path), 1)])
    assert sums[0] == sums[1]
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("mapa-table-")  # no temporary left
    PosteriorTable.load(files[0])  # complete and valid


def test_guide_detects_a_table_of_other_data():
    ds = _data()
    table = PosteriorTable.from_data(ds.train, GaussianKernel(0.05))
    MAPAGuide(table, data=ds.train)
    with pytest.raises(ValueError, match="fingerprint"):
        MAPAGuide(table, data=ds.train.flip(0))
