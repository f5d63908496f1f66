"""Data-parallel MAPA on figure-8 with torch.distributed: each process owns a shard of the rows.

    torchrun --nproc_per_node=2 examples/train_distributed.py --epochs 20 --output out.json

(gloo on CPU; pass --backend nccl and --device cuda on GPUs.) Without torchrun it runs as a
single process (world size 1). Rank 0 writes the final loss and parameters to --output.
"""

import argparse
import json
import os

import pyro
import torch
import torch.distributed as dist
from pyro.optim import Adam

from pyro_mapa import AmortizedCodebook, EmpiricalizedModel, MAPAGuide, PosteriorTable, TraceMAPA_ELBO, mlp
from pyro_mapa.datasets import load_dataset
from pyro_mapa.training.distributed import DistributedSVI, shard_batches, shard_rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=50, help="per process")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--backend", default="gloo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if "RANK" not in os.environ:  # plain `python`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29531")
    dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    ds = load_dataset("figure8", num_train=args.num_train, num_valid=10, num_test=10, seed=0)
    x = ds.train.to(args.device)
    rows = shard_rows(len(x), rank, world)
    table = PosteriorTable.from_data(x, ds.likelihood.kernel(), rows=rows)  # this process's rows only
    torch.manual_seed(0)  # identical initial parameters on every process
    model = EmpiricalizedModel(AmortizedCodebook(mlp(2, 1), mlp(1, 2), x), ds.likelihood).to(args.device)
    guide = MAPAGuide(table, data=x)
    loss = TraceMAPA_ELBO(5, 5, rng_seed=0, max_plate_nesting=1)
    svi = DistributedSVI(model, guide, Adam({"lr": 1e-3}), loss)
    for epoch in range(args.epochs):
        losses = [svi.step(b.to(args.device)) for b in shard_batches(rows, args.batch_size, epoch)]
        if rank == 0:
            print(f"epoch {epoch}: loss per point {sum(losses) / len(losses) / len(x):.4f}", flush=True)
    if rank == 0 and args.output:
        params = {k: v.detach().cpu().reshape(-1).tolist() for k, v in pyro.get_param_store().named_parameters()}
        with open(args.output, "w") as f:
            json.dump({"world_size": world, "final_loss": losses[-1], "params": params}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
