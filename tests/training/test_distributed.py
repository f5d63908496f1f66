"""Data-parallel training (2 processes, gloo on CPU) equals single-process training on the combined batch."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_mapa import AmortizedCodebook, EmpiricalizedModel, MAPAGuide, PosteriorTable, TraceMAPA_ELBO, mlp
from pyro_mapa.datasets import load_dataset
from pyro_mapa.training.distributed import DistributedSVI, shard_batches, shard_rows

N, BATCH, EPOCHS = 200, 25, 3


def _setup(x, likelihood, table, remainder):
    torch.manual_seed(0)
    model = EmpiricalizedModel(AmortizedCodebook(mlp(2, 1, (16,)), mlp(1, 2, (16,)), x), likelihood)
    loss = TraceMAPA_ELBO(3, 4, rng_seed=7, remainder=remainder, max_plate_nesting=1)
    return model, MAPAGuide(table, data=x), loss


def _data():
    ds = load_dataset("circle", num_train=N, num_valid=5, num_test=5, seed=0)
    return ds.train, ds.likelihood


def _worker(rank, world, init_file, out_dir, remainder):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    x, lik = _data()
    rows = shard_rows(N, rank, world)
    table = PosteriorTable.from_data(x, lik.kernel(), rows=rows)
    assert table.num_rows == len(rows)
    model, guide, loss = _setup(x, lik, table, remainder)
    svi = DistributedSVI(model, guide, Adam({"lr": 1e-2}), loss)
    losses = [svi.step(b) for e in range(EPOCHS) for b in shard_batches(rows, BATCH, e)]
    params = {k: v.detach().reshape(-1).tolist() for k, v in pyro.get_param_store().named_parameters()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"losses": losses, "params": params}))
    dist.destroy_process_group()


def _single_process(remainder):
    pyro.clear_param_store()
    x, lik = _data()
    table = PosteriorTable.from_data(x, lik.kernel())
    model, guide, loss = _setup(x, lik, table, remainder)
    svi = SVI(model, guide, Adam({"lr": 1e-2}), loss)
    shards = [shard_rows(N, r, 2) for r in range(2)]
    losses = []
    for e in range(EPOCHS):
        for b0, b1 in zip(*(shard_batches(rows, BATCH, e) for rows in shards)):
            losses.append(svi.step(torch.cat([b0, b1])))  # the combined batch
    params = {k: v.detach().reshape(-1).tolist() for k, v in pyro.get_param_store().named_parameters()}
    return losses, params


@pytest.mark.parametrize("remainder", ["with_replacement", "without_replacement"])
def test_two_processes_equal_single_process(tmp_path, remainder):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path), remainder), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    ref_losses, ref_params = _single_process(remainder)
    assert r0["params"] == r1["params"], "all-reduced updates keep the processes identical"
    torch.testing.assert_close(torch.tensor(r0["losses"]), torch.tensor(ref_losses), rtol=1e-5, atol=1e-3)
    for k, v in ref_params.items():
        torch.testing.assert_close(torch.tensor(r0["params"][k]), torch.tensor(v), rtol=1e-5, atol=1e-6)
    # And training moved the parameters (the comparison is not between two initial states).
    pyro.clear_param_store()
    x, lik = _data()
    init, _, _ = _setup(x, lik, PosteriorTable.uniform(N), remainder)
    moved = torch.cat([p.detach().reshape(-1) for p in init.codebook.parameters()])
    trained = torch.cat([torch.tensor(v) for v in ref_params.values()])
    assert moved.shape == trained.shape and not torch.allclose(moved.sort().values, trained.sort().values)


def test_shard_rows_and_batches():
    shards = [shard_rows(10, r, 3) for r in range(3)]
    assert [list(s) for s in shards] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    b = shard_batches(shards[1], 2, epoch=0)
    assert sorted(torch.cat(b).tolist()) == [4, 5, 6]
    assert [t.tolist() for t in b] == [t.tolist() for t in shard_batches(shards[1], 2, epoch=0)]
    with pytest.raises(ValueError, match="rank"):
        shard_rows(10, 3, 3)
    with pytest.raises(ValueError, match="one row per process"):
        shard_rows(2, 0, 3)


def test_table_shards_equal_rows_of_the_full_table():
    x, lik = _data()
    full = PosteriorTable.from_data(x, lik.kernel(), max_support=20)
    shard = PosteriorTable.from_data(x, lik.kernel(), max_support=20, rows=range(50, 120))
    assert shard.row_offset == 50 and shard.total_rows == N and shard.num_rows == 70
    rows = torch.tensor([50, 77, 119])
    assert torch.equal(shard.top_k(rows, 5).indices, full.top_k(rows, 5).indices)
    torch.testing.assert_close(shard.top_k(rows, 5).log_probs, full.top_k(rows, 5).log_probs)
    with pytest.raises(ValueError, match="contiguous range"):
        PosteriorTable.from_data(x, lik.kernel(), rows=range(0, N + 1))


def test_distributed_svi_needs_a_process_group():
    x, lik = _data()
    model, guide, loss = _setup(x, lik, PosteriorTable.from_data(x, lik.kernel()), "with_replacement")
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedSVI(model, guide, Adam({"lr": 1e-3}), loss).step(torch.arange(10))


def test_example_script_under_torchrun(tmp_path):
    script = Path(__file__).resolve().parents[2] / "examples" / "train_distributed.py"
    env = {**os.environ, "PYTHONPATH": str(script.parents[1]), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.json"
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29547", str(script),
         "--epochs", "2", "--num-train", "200", "--output", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["world_size"] == 2 and math.isfinite(result["final_loss"])
