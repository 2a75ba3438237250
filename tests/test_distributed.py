"""Data-parallel training and sharded evaluation: the pieces in one process, then 2 gloo ranks end to end."""
import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import helpers
from scoresde import run as runs
from scoresde import data as data_lib
from scoresde import models
from scoresde import training
from scoresde.run import checkpoint as ckpt
from scoresde.training import distributed
from scoresde.run import precision

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**training_overrides):
    config = helpers.tiny_config(**{"n_iters": 6, "log_freq": 1, "eval_freq": 1000, "snapshot_freq": 3,
                                    "snapshot_samples": 0, **training_overrides})
    config.optim.warmup = 2
    config.optim.lr = 1e-3
    return config


def context(rank, world_size):
    return distributed.Context(rank, world_size, rank, torch.device("cpu"), False)


# --- the pieces, in one process ------------------------------------------------------------------------------

def test_sharded_loader_slices_concatenate_to_the_global_batch():
    dataset = data_lib.get_dataset(tiny_config()).train
    full = data_lib.infinite_loader(dataset, 12, seed=3)
    shards = [distributed.ShardedLoader(dataset, 12, 3, context(r, 3)) for r in range(3)]
    for _ in range(200):  # crosses epoch boundaries (2000 // 12 = 166 steps per epoch)
        x, _ = next(full)
        parts = [next(s)[0] for s in shards]
        # Exact: the same items fetched by index.
        assert torch.equal(torch.cat(parts), x)


def test_batch_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match="multiple of 3"):
        distributed.local_batch_size(64, context(0, 3))


def test_shards_partition_the_range():
    for n in (0, 1, 5, 64):
        shards = [context(r, 3).shard(n) for r in range(3)]
        assert [i for s in shards for i in s] == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_rank_losses_average_to_the_global_batch_loss_and_gradient():
    """Sum over ranks of (1/W) grad(mean over the rank's rows) = grad(mean over B): what DDP's average computes."""
    torch.manual_seed(0)
    sde = runs.build_sde(tiny_config())
    net = models.get_model("mlp", dim=2, width=32, depth=2)
    x = torch.randn(12, 2)
    kwargs = dict(t_sampling="stratified", weighting="likelihood", reduce="none")
    full = models.dsm_loss(net, sde, x, generator=distributed.loss_generator(0, 5, x.device), **kwargs).mean()
    expected = torch.autograd.grad(full, list(net.parameters()))
    world, b, total = 3, 4, 0.0
    grads = [torch.zeros_like(p) for p in net.parameters()]
    for r in range(world):
        local = distributed.LocalRows(net, r * b, (r + 1) * b)
        padded = distributed.pad_rows(x[r * b:(r + 1) * b], r * b, 12)
        gen = distributed.loss_generator(0, 5, x.device)
        loss = models.dsm_loss(local, sde, padded, generator=gen, **kwargs)[r * b:(r + 1) * b].mean() / world
        total += loss.item()
        for g, d in zip(grads, torch.autograd.grad(loss, list(net.parameters()))):
            g += d
    # float32 sums of 12 terms in another order: relative error ~1e-7, far below 1e-5.
    assert total == pytest.approx(full.item(), rel=1e-5)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6 * e.abs().max().item())


def _randomise(net):
    """Random weights everywhere: the output layer starts at zero, which rounds to zero in any precision."""
    torch.manual_seed(0)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.3)


def test_bfloat16_autocast_matches_float32_to_bfloat16_precision():
    net = models.get_model("mlp", dim=2, width=64, depth=3)
    _randomise(net)
    x, t = torch.randn(256, 2), torch.rand(256)
    exact = net(x, noise_input=t)
    low = precision.autocast_network(net, "bfloat16", torch.device("cpu"))(x, noise_input=t)
    assert low.dtype == torch.float32
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%) at each of ~4 layers: a few 0.1%
    # relative error overall; 3% still separates it from float32 by far and from a wrong network (~100%).
    rel = (low - exact).norm() / exact.norm()
    assert 1e-5 < rel.item() < 0.03


def test_precision_errors_name_the_choices():
    with pytest.raises(ValueError, match="float32, bfloat16, float16"):
        precision.autocast_dtype("half", torch.device("cpu"))
    with pytest.raises(ValueError, match="needs CUDA"):
        precision.grad_scaler("float16", torch.device("cpu"))


def test_bfloat16_training_step_is_close_to_float32(tmp_path):
    losses = {}
    for name in ("float32", "bfloat16"):
        config = tiny_config()
        config.precision = name
        trainer = training.Trainer(config, tmp_path / name)
        _randomise(trainer.model)
        x, y = next(data_lib.infinite_loader(trainer.data.train, 64, config.seed))
        losses[name] = trainer.train_step(x, None)[0]
    # Same weights, t and noise (same seed); only the network's rounding differs (see the test above): the
    # loss is a mean of squared residuals, within ~1% relative.
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.02)
    assert losses["bfloat16"] != losses["float32"]


# --- two gloo ranks ------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(rank, world_size, port) -> dict:
    """The variables torchrun sets for one process."""
    return dict(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                LOCAL_RANK=str(rank))


def _worker(rank, world_size, port, jobs):
    os.environ.update(_env(rank, world_size, port))
    _jobs(rank, jobs)


def _jobs(rank, jobs):
    torch.set_num_threads(1)
    try:
        for kind, workdir, n_iters in jobs:
            trainer = training.Trainer(tiny_config(n_iters=n_iters), workdir)
            if kind == "train":
                trainer.run()
            else:  # "grad": rank 0 saves the all-reduced gradient of the first step
                x, y = next(trainer.batches())
                trainer.sharded_loss(x, trainer.labels(y)).backward()
                if rank == 0:
                    torch.save([p.grad for p in trainer.model.parameters()], Path(workdir) / "grads.pt")
    finally:
        distributed.shutdown()


def _spawn(world_size, jobs):
    mp.spawn(_worker, args=(world_size, _free_port(), jobs), nprocs=world_size, join=True)


def _params(workdir, step):
    state = ckpt.load_checkpoint(ckpt.checkpoint_dir(workdir) / f"checkpoint_{step}.pt")
    return state["model"], state["optimizer"]


@pytest.mark.slow
def test_two_ranks_give_the_one_rank_update_and_resume_across_world_sizes(tmp_path, monkeypatch):
    (tmp_path / "g").mkdir()
    _spawn(2, [("grad", tmp_path / "g", 1), ("train", tmp_path / "two", 6), ("train", tmp_path / "two_one", 3)])
    # The one-rank runs in this process: a process group of one, as `torchrun --nproc_per_node=1` makes.
    for name, value in _env(0, 1, _free_port()).items():
        monkeypatch.setenv(name, value)
    _jobs(0, [("train", tmp_path / "one", 6), ("train", tmp_path / "two_one", 6)])
    monkeypatch.undo()
    assert not distributed.launched() and not torch.distributed.is_initialized()

    # The independent reference: plain dsm_loss of the whole first global batch with the step-0 generator.
    config = tiny_config()
    reference = training.Trainer(config, tmp_path / "ref")
    x, _ = next(data_lib.infinite_loader(reference.data.train, 64, config.seed))
    gen = distributed.loss_generator(config.seed, 0, x.device)
    reference.loss(reference.model, x, None, generator=gen).backward()
    for g, e in zip(torch.load(tmp_path / "g" / "grads.pt"), [p.grad for p in reference.model.parameters()]):
        # 2 ranks x 32 vs 1 x 64 sums in float32: relative differences ~1e-7; 1e-5 allows the reduction order.
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6 * e.abs().max().item())

    one, _ = _params(tmp_path / "one", 6)
    for name in ("two", "two_one"):
        other, _ = _params(tmp_path / name, 6)
        for k in one:
            # 6 Adam steps of lr <= 1e-3: a gradient difference of ~1e-7 relative moves a weight by ~1e-10 per
            # step, while any different random number or batch moves it by ~lr; 1e-6 separates the two.
            torch.testing.assert_close(other[k], one[k], rtol=0, atol=1e-6, msg=f"{name}: {k}")
    la = [r["loss"] for r in helpers.metrics_rows(tmp_path / "one") if "loss" in r]
    lb = [r["loss"] for r in helpers.metrics_rows(tmp_path / "two") if "loss" in r]
    assert len(la) == len(lb) == 6
    # Global-batch means of the same per-example losses: equal to float32 rounding.
    np.testing.assert_allclose(lb, la, rtol=1e-5)

    # A single process without torchrun resumes the 2-rank checkpoint and continues.
    resumed = training.train(tiny_config(n_iters=8), tmp_path / "two")
    assert resumed.step == 8 and math.isfinite(resumed.loss)


@pytest.mark.slow
def test_a_plain_run_trains_as_a_one_rank_torchrun_run(tmp_path, monkeypatch):
    training.train(tiny_config(), tmp_path / "plain")
    for name, value in _env(0, 1, _free_port()).items():      # what `torchrun --nproc_per_node=1` sets
        monkeypatch.setenv(name, value)
    _jobs(0, [("train", tmp_path / "one", 6)])
    monkeypatch.undo()
    plain, one = ([r["loss"] for r in helpers.metrics_rows(tmp_path / name) if "loss" in r]
                  for name in ("plain", "one"))
    # The same t and noise for every example of every step: the losses agree to float32 rounding, where another
    # draw of the noise changes the step-1 loss of this network by several percent.
    assert len(plain) == len(one) == 6
    np.testing.assert_allclose(plain, one, rtol=1e-6)
    for step in (3, 6):
        a, b = _params(tmp_path / "plain", step)[0], _params(tmp_path / "one", step)[0]
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=f"step {step}: {k}")


def _torchrun(*args):
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node=2", f"--master_port={_free_port()}",
           "main.py", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    return proc


TINY = ["--config", "vpsde", "--config.data.dataset=gmm8", "--config.data.num_samples=400", "--config.device=cpu",
        "--config.model.mlp_width=16", "--config.model.mlp_depth=1", "--config.training.batch_size=32",
        "--config.training.snapshot_samples=0", "--config.training.progress=False"]


@pytest.mark.slow
def test_torchrun_two_ranks_train_sample_and_likelihood_end_to_end(tmp_path):
    workdir = ["--workdir", str(tmp_path)]
    out = _torchrun("--mode", "train", *workdir, *TINY, "--config.training.n_iters=4",
                    "--config.training.log_freq=2").stdout
    assert out.count("finished at step 4") == 1  # printed once, by rank 0
    assert (tmp_path / "checkpoints" / "checkpoint_4.pt").is_file()
    rows = [r for r in helpers.metrics_rows(tmp_path) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4] and all(math.isfinite(r["loss"]) for r in rows)

    samples = tmp_path / "samples" / "euler_maruyama_3_n9_step4_seed5.npz"
    sample = ["--mode", "sample", *workdir, *TINY, "--solver", "euler_maruyama", "--steps", "3", "--num_samples", "9",
              "--seed", "5"]
    out = _torchrun(*sample, "--batch_size", "4").stdout
    assert out.count("9 samples with euler_maruyama") == 1  # printed once, by rank 0
    two = np.load(samples)["samples"]
    assert two.shape == (9, 2) and np.isfinite(two).all()
    # Sample i depends only on (seed, i): the shards of 4 + 5 samples (in batches of 4) give the samples of one
    # process in batches of 3, up to the float32 round-off of other batch sizes in the network (~1e-7).
    one = np.load(helpers.cli(*sample, "--batch_size", "3").written())["samples"]
    assert np.abs(two - one).max() <= 1e-5
    # ... and rank 1's samples are not rank 0's again (a per-rank seed reused would repeat them exactly).
    assert np.abs(two[:4] - two[5:]).max() > 1e-2

    lik = ["--mode", "likelihood", *workdir, *TINY, "--divergence", "exact", "--num_samples", "25"]
    _torchrun(*lik)
    two = json.loads((tmp_path / "likelihood.json").read_text())
    helpers.cli(*lik)
    one = json.loads((tmp_path / "likelihood_2.json").read_text())     # a second result never replaces the first
    assert two["num_samples"] == one["num_samples"] == 25
    # Continuous 2-D data and the exact divergence: no randomness, so the 13 + 12 shards give the single-process
    # value up to the adaptive ODE's error (rtol = atol = 1e-5 on log p), whose steps depend on the batch.
    assert two["bits_per_dim"] == pytest.approx(one["bits_per_dim"], abs=1e-3)
    assert two["stderr"] == pytest.approx(one["stderr"], rel=1e-2)


@pytest.mark.slow
def test_torchrun_two_ranks_distil_the_reflow_student_of_one_process(tmp_path):
    helpers.cli("--mode", "train", "--workdir", tmp_path / "two", *TINY, "--config.training.n_iters=4")
    shutil.copytree(tmp_path / "two", tmp_path / "one")
    reflow = [*TINY, "--config.distill.method=reflow", "--config.distill.reflow.pairs=64",
              "--config.distill.reflow.shard_size=32", "--config.distill.reflow.solver=euler",
              "--config.distill.reflow.steps=4", "--config.distill.reflow.options=", "--config.distill.iterations=4",
              "--config.distill.warmup=1"]
    out = _torchrun("--mode", "distill", "--workdir", str(tmp_path / "two"), *reflow).stdout
    assert out.count("sample it with") == 1     # printed once, by rank 0
    helpers.cli("--mode", "distill", "--workdir", tmp_path / "one", *reflow)
    student = Path("distill") / "reflow" / "2"
    # Rank 0 draws every pair, with the noise of (seed, flow, shard): the same files as one process draws.
    for i in range(2):
        with np.load(tmp_path / "two" / student / "pairs" / f"shard_{i:05d}.npz") as a, \
                np.load(tmp_path / "one" / student / "pairs" / f"shard_{i:05d}.npz") as b:
            assert all(np.array_equal(a[k], b[k]) for k in ("z", "x"))
    # Both ranks train on them: 2 x 16 rows give the one-process update of 32 (see the training test's tolerance).
    two, _ = _params(tmp_path / "two" / student, 4)
    one, _ = _params(tmp_path / "one" / student, 4)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(one[k], ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "one"))["model"][k])
               for k in one)
