"""The training loop: denoising score matching with warm-up, clipping, EMA, exact resume and clean preemption."""
from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from pathlib import Path
from typing import NamedTuple

import ml_collections
import numpy as np
import torch
from absl import logging
from tqdm.auto import tqdm

from scoresde import configs
from scoresde import data as data_lib
from scoresde import models

from scoresde.run import checkpoint as ckpt
from scoresde.training import distributed
from scoresde.run import precision
from scoresde.run import workdir as workdir_lib
from scoresde.run.builders import (build_model, build_optimizer, build_precond, build_sde, build_t_sampling,
                                   build_weighting, learning_rate, network_embedding, set_num_threads)
from scoresde.run.images import save_samples
from scoresde.run.interrupts import StopRequested
from scoresde.run.sampling import reference_points, sampler_from_config
from scoresde.utils import atomic_write_text
from scoresde.run.log import MetricsLogger
from .quality import TrainingQuality


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


class TrainResult(NamedTuple):
    step: int
    loss: float
    checkpoint: Path | None
    interrupted: bool
    already_complete: bool = False

    def line(self) -> str:
        if self.already_complete:
            return (f"already complete at step {self.step} (training.n_iters); checkpoint {self.checkpoint}; raise "
                    "--config.training.n_iters to train further")
        return (f"{'stopped' if self.interrupted else 'finished'} at step {self.step}, loss {self.loss:.5f}; "
                f"checkpoint {self.checkpoint}")


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _ForcedStop(Exception):
    """A second signal during a snapshot: skip the rest of it (the checkpoint is already saved)."""


class _StopFlag(StopRequested):
    """StopRequested for the training loop, which checks the flag once per step, so a preempted run saves and exits.

    A second signal while `forceable` (during a snapshot, which can take seconds) raises _ForcedStop instead of
    waiting for the snapshot to finish; at any other time it only keeps the flag set (the step in hand finishes).
    """

    forceable = False

    def _handle(self, signum, frame):
        again = self.signal is not None
        self.signal = signal.Signals(signum).name
        if again and self.forceable:
            raise _ForcedStop(self.signal)


class _Progress:
    """What the training loop carries from step to step: the last loss, the newest checkpoint and its step, and
    the time and step of the last log line."""

    def __init__(self, checkpoint: Path | None, step: int):
        self.loss, self.checkpoint, self.saved_step = float("nan"), checkpoint, step
        self.t_log, self.s_log = time.perf_counter(), step

    def steps_per_second(self, step: int) -> float:
        """Steps per second since the last call (or the start), which it restarts from now and `step`."""
        rate = (step - self.s_log) / (time.perf_counter() - self.t_log)
        self.t_log, self.s_log = time.perf_counter(), step
        return rate


class Trainer:
    """Everything a run owns; `state_dict` is exactly what a checkpoint holds.

    Under torchrun it trains data-parallel (see training.distributed): rank 0 alone writes the workdir.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir, ctx: distributed.Context | None = None):
        configs.check_config(config)
        self.config = config
        self.workdir = Path(workdir)
        self.dist = distributed.setup(config) if ctx is None else ctx
        self.device = self.dist.device
        precision.set_tf32(config.allow_tf32)
        self.scaler = precision.grad_scaler(config.precision, self.device)
        seed_everything(config.seed)
        self.data = data_lib.get_dataset(config)
        self.sde = build_sde(config)
        # The run records the embedding it trains with (an unset one is the model preset's), so that resuming
        # and loading it do not depend on what a preset is.
        with config.unlocked():
            config.model.embedding_type = network_embedding(config, self.data.shape)
        self.model = build_model(config, self.data.shape, self.data.num_classes).to(self.device)
        self.precond = build_precond(config, self.model)
        set_num_threads(config, self.model, self.device)
        self.ema = models.create_ema(self.model, decay=config.model.ema_rate)
        self.optimizer = build_optimizer(config, self.model.parameters())
        self.step = 0
        # Built and checked now, so that a bad name or setting stops the run before its first step.
        self.t_sampling = build_t_sampling(config)
        self.coupling = models.COUPLINGS.canonical(config.training.coupling)
        self.weighting = build_weighting(config, self.precond)
        self.sampler = sampler_from_config(config, self.workdir, snapshot=True)
        self.quality = TrainingQuality.from_config(config, self.data)
        self.network = self._training_network()

    def _training_network(self) -> torch.nn.Module:
        """self.model as the loss calls it: DDP across ranks, compiled and autocast as configured."""
        c, net = self.config, self.model
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
        net = precision.autocast_network(precision.maybe_compile(net, c.compile), c.precision, self.device)
        if self.dist.distributed:
            b = distributed.local_batch_size(c.training.batch_size, self.dist)
            net = distributed.LocalRows(net, self.dist.rank * b, (self.dist.rank + 1) * b)
        return net

    # --- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"step": self.step, "model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "rng": ckpt.rng_state(),
                 "config": self.config.to_json()}
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict, path) -> None:
        ckpt.load_module_state(self.model, state["model"], "network", path)
        ckpt.load_module_state(self.ema, state["ema"], "EMA network", path)
        self.optimizer.load_state_dict(state["optimizer"])
        ckpt.set_rng_state(state["rng"])
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])

    def save(self) -> Path:
        """Rank 0 writes the checkpoint (atomically) while the other ranks wait; returns its path on every rank."""
        path = ckpt.checkpoint_dir(self.workdir) / f"checkpoint_{self.step}.pt"
        if self.dist.is_main:
            path = ckpt.save_checkpoint(self.workdir, self.step, self.state_dict(),
                                        keep=self.config.training.keep_checkpoints)
        self.dist.barrier()
        return path

    def resume(self) -> Path | None:
        """Load the newest checkpoint in the workdir, if any; under torchrun rank 0 reads it and sends it to all."""
        if not self.dist.distributed:
            path = ckpt.latest_checkpoint(self.workdir)
            if path is not None:
                state = ckpt.load_checkpoint(path, map_location=self.device)
                self._check_same_experiment(state)
                self.load_state_dict(state, path)
                logging.info("resumed from %s (step %d)", path, self.step)
            return path
        path, state, error = self.dist.broadcast(self._read_latest() if self.dist.is_main else None)
        if error is not None:
            raise error
        if path is not None:
            self._check_same_experiment(state)
            self.load_state_dict(state, path)
            logging.info("resumed from %s (step %d) on %d processes", path, self.step, self.dist.world_size)
        return path

    def _check_same_experiment(self, state: dict) -> None:
        """Refuse to resume under a config that defines another experiment; record the changes that are allowed."""
        if "config" not in state:
            return
        self.config_changes = workdir_lib.check_resume_config(state["config"], self.config)
        if self.config_changes:
            logging.info("resuming with %s", "; ".join(self.config_changes))

    def _read_latest(self) -> tuple:
        """(path, state, error) of the newest checkpoint; errors travel as values, so that a rank that failed
        alone does not leave the others waiting in the broadcast."""
        path = ckpt.latest_checkpoint(self.workdir)
        try:
            return path, None if path is None else ckpt.load_checkpoint(path), None
        except ckpt.CheckpointError as e:
            return path, None, e

    # --- one step -------------------------------------------------------------------------------
    def loss(self, model, x, y, generator=None, reduce="mean", rows=None) -> torch.Tensor:
        """The training loss on batch x; rows: the rows of x this process holds, which it couples to noise alone
        (training.coupling), None: all of them."""
        c = self.config
        return models.dsm_loss(model, self.sde, x, precond=self.precond, weighting=self.weighting,
                               t_sampling=self.t_sampling, class_labels=y, generator=generator,
                               label_dropout=c.training.p_uncond if y is not None else 0.0, reduce=reduce,
                               coupling=self.coupling, coupling_rows=rows)

    def sharded_loss(self, x, y) -> torch.Tensor:
        """This rank's mean loss over its rows of the global batch, with the global batch's random numbers."""
        net, n = self.network, self.config.training.batch_size
        gen = distributed.loss_generator(self.config.seed, self.step, self.device)
        y = None if y is None else distributed.pad_rows(y, net.lo, n)
        losses = self.loss(net, distributed.pad_rows(x, net.lo, n), y, generator=gen, reduce="none",
                           rows=(net.lo, net.hi))
        return losses[net.lo:net.hi].mean()

    def train_step(self, x, y) -> tuple[float, float]:
        """One optimiser step; returns (loss, gradient norm). Raises TrainingDivergedError on a non-finite loss.

        Under torchrun x, y are this rank's rows of the global batch and the returned loss is the global mean.
        """
        self.model.train()
        # One process draws from the same per-step streams as torchrun's ranks, so that the same seed trains the
        # same run with `python main.py` and with `torchrun --nproc_per_node=N`.
        distributed.seed_rank_step(self.config.seed, self.step, self.dist.rank)
        if self.dist.distributed:
            loss = self.sharded_loss(x, y)
            value = self.dist.sum([loss.item()])[0] / self.dist.world_size
        else:
            gen = distributed.loss_generator(self.config.seed, self.step, self.device)
            loss = self.loss(self.network, x, y, generator=gen)
            value = loss.item()
        if not math.isfinite(value):
            last = ckpt.latest_checkpoint(self.workdir)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint was saved before it"
            raise TrainingDivergedError(f"loss is {value} at step {self.step + 1}; {kept}. Lower optim.lr, keep "
                                        "optim.grad_clip > 0, or check the data.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = self.config.optim.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step)
        # With float16 the scaler skips steps whose gradients overflowed (and lowers the scale).
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update_parameters(self.model)
        self.step += 1
        return value, grad_norm.item()

    # --- evaluation and snapshots ---------------------------------------------------------------
    @torch.no_grad()
    def test_loss(self, max_batches: int = 10) -> float:
        """Mean DSM loss of the EMA network over (up to max_batches of) the test split, with fixed noise."""
        gen = torch.Generator(self.device).manual_seed(self.config.seed + 1)
        loader = torch.utils.data.DataLoader(self.data.test, batch_size=self.config.eval.batch_size)
        total, count = 0.0, 0
        self.ema.module.eval()
        for i, (x, y) in enumerate(loader):
            if i == max_batches:
                break
            x, y = x.to(self.device), self.labels(y)
            total += self.loss(self.ema.module, x, y, generator=gen).item() * len(x)
            count += len(x)
        return total / max(count, 1)

    def labels(self, y):
        """The class labels the model takes: y on the device for a conditional model, else None."""
        return y.to(self.device) if self.config.model.conditional else None

    @torch.no_grad()
    def snapshot(self) -> Path | None:
        """Samples from the EMA network with the configured fast solver, saved as PNG + npz."""
        c = self.config
        n = c.training.snapshot_samples
        if n <= 0:
            return None
        gen = torch.Generator(self.device).manual_seed(c.seed + self.step)
        model = precision.autocast_network(self.ema.module.eval(), c.precision, self.device)
        score_fn = models.get_score_fn(model, self.sde, self.precond)
        result = self.sampler.sample(self.sde, score_fn, (n, *self.data.shape), generator=gen)
        x = self.data.inverse_scaler(result.x.float()).cpu()
        path = self.workdir / "snapshots" / f"step_{self.step}.png"
        save_samples(x, path, self.data.is_image, reference=reference_points(self.data), title=f"step {self.step}")
        return path

    # --- the loop -------------------------------------------------------------------------------
    def batches(self):
        """The training batches from the current step on (this rank's rows of each under torchrun)."""
        c, start = self.config, self.step
        if self.dist.distributed:
            return distributed.ShardedLoader(self.data.train, c.training.batch_size, c.seed, self.dist, start)
        return data_lib.infinite_loader(self.data.train, c.training.batch_size, c.seed, start_step=start)

    def run(self) -> TrainResult:
        """Train to config.training.n_iters, holding the run directory's lock (one writer per run)."""
        with _training_lock(self.workdir, self.dist):
            return self._run()

    def _run(self) -> TrainResult:
        c = self.config
        self.config_changes = []
        self.resume()
        if self.step >= c.training.n_iters and self.step > 0:
            return TrainResult(self.step, float("nan"), ckpt.latest_checkpoint(self.workdir), False, True)
        self._record_config()
        metrics = MetricsLogger(self.workdir, resume_step=self.step) if self.dist.is_main else None
        batches = self.batches()
        progress = _Progress(ckpt.latest_checkpoint(self.workdir), self.step)
        bar = tqdm(total=c.training.n_iters, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=not (c.training.progress and self.dist.is_main))
        try:
            with _StopFlag() as stop:
                stopped = self._train_steps(batches, progress, bar, metrics, stop)
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
        return TrainResult(self.step, progress.loss, progress.checkpoint, stopped)

    def _record_config(self) -> None:
        """Rank 0 writes config.json when the run starts or its config changed, and appends the changes' record."""
        if not self.dist.is_main:
            return
        if self.step == 0 or self.config_changes:
            atomic_write_text(self.workdir / "config.json", self.config.to_json(indent=2))
        if self.config_changes:
            with open(self.workdir / "config_changes.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, "changes": self.config_changes}) + "\n")

    def _train_steps(self, batches, progress: _Progress, bar, metrics, stop: _StopFlag) -> bool:
        """Optimiser steps, each followed by the periodic actions, to training.n_iters or a signal; returns whether
        a signal stopped it (after saving a checkpoint of the last step)."""
        while self.step < self.config.training.n_iters:
            x, y = next(batches)
            progress.loss, grad_norm = self.train_step(x.to(self.device), self.labels(y))
            bar.update(1)
            bar.set_postfix(loss=f"{progress.loss:.4f}")
            stop_now = self._signalled(stop)
            stop_now = self._periodic_actions(progress, grad_norm, metrics, stop) or stop_now
            if stop_now:
                self._save_and_stop(progress, stop)
                return True
        return False

    def _signalled(self, stop: _StopFlag) -> bool:
        """Whether this rank, or under torchrun any rank, got a signal: every rank must leave the loop at the same
        step, whichever of them got it."""
        stop_now = stop.signal is not None
        if self.dist.distributed:
            stop_now = self.dist.sum([float(stop_now)])[0] > 0
        return stop_now

    def _periodic_actions(self, progress: _Progress, grad_norm: float, metrics, stop: _StopFlag) -> bool:
        """The log line, test loss, sample quality, checkpoint and snapshot due at this step; returns whether a
        second signal cut the snapshot short, which stops a single process at once."""
        c = self.config
        if self.step % c.training.log_freq == 0 and self.dist.is_main:
            self._log_step(progress, grad_norm, metrics)
        if self.step % c.training.eval_freq == 0:
            self._log_test_loss(metrics)
        if self.quality is not None and self.step % c.training.fid_freq == 0:
            self._log_quality(metrics)
        if self.step % c.training.snapshot_freq == 0 or self.step == c.training.n_iters:
            return self._checkpoint_and_snapshot(progress, stop)
        return False

    def _log_step(self, progress: _Progress, grad_norm: float, metrics: MetricsLogger) -> None:
        """Rank 0 logs the step's loss, gradient norm, learning rate and the steps per second since the last log."""
        rate = progress.steps_per_second(self.step)
        lr = self.optimizer.param_groups[0]["lr"]
        metrics.log(self.step, loss=progress.loss, grad_norm=grad_norm, lr=lr, it_per_s=rate)
        logging.info("step %d: loss %.5f, grad norm %.3f, lr %.2e, %.1f it/s",
                     self.step, progress.loss, grad_norm, lr, rate)

    def _log_test_loss(self, metrics: MetricsLogger | None) -> None:
        """Rank 0 logs the EMA network's test loss while the other ranks wait."""
        if self.dist.is_main:
            test_loss = self.test_loss()
            metrics.log(self.step, test_loss=test_loss)
            logging.info("step %d: test loss %.5f", self.step, test_loss)
        self.dist.barrier()

    def _log_quality(self, metrics: MetricsLogger | None) -> None:
        """The sample-quality metric of the EMA network, logged by rank 0 (which alone gets scores)."""
        scores = self.quality(self.ema.module, self.precond, self.sde, self.sampler, self.dist)
        if scores:
            metrics.log(self.step, **scores)
            logging.info("step %d: %s", self.step, ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))

    def _checkpoint_and_snapshot(self, progress: _Progress, stop: _StopFlag) -> bool:
        """Save a checkpoint, then rank 0 draws the snapshot; returns whether a second signal cut the snapshot
        short in a single process (under torchrun the other ranks learn of the signal at the next step's sum)."""
        progress.checkpoint, progress.saved_step = self.save(), self.step
        forced = self.dist.is_main and self._snapshot_unless_forced(stop)
        self.dist.barrier()
        return forced and not self.dist.distributed

    def _snapshot_unless_forced(self, stop: _StopFlag) -> bool:
        """The snapshot, which a second signal may cut short (the checkpoint is saved); returns whether it did."""
        stop.forceable = True
        try:
            self.snapshot()
        except _ForcedStop:
            logging.info("second %s: snapshot skipped", stop.signal)
            return True
        finally:
            stop.forceable = False
        return False

    def _save_and_stop(self, progress: _Progress, stop: _StopFlag) -> None:
        """Save a checkpoint of this step unless it has one, and say which signal stopped the run."""
        stopped = stop.signal or "a signal to another rank"
        if progress.saved_step != self.step:
            progress.checkpoint, progress.saved_step = self.save(), self.step
        logging.info("%s received: saved %s at step %d, exiting", stopped, progress.checkpoint, self.step)


def _training_lock(workdir, ctx: distributed.Context):
    """The run directory's training lock, held by the main process (the one that writes the run)."""
    if not ctx.is_main:
        return contextlib.nullcontext()
    workdir_lib.check_directory(workdir)
    return workdir_lib.WorkdirLock(workdir, "train")


def train(config: ml_collections.ConfigDict, workdir, ctx: distributed.Context | None = None) -> TrainResult:
    """Train (or resume training) the configured model in `workdir`; see Trainer. The lock is taken first, so
    that a run directory in use is refused before any data are read or a model is built."""
    ctx = distributed.setup(config) if ctx is None else ctx
    with _training_lock(workdir, ctx):
        return Trainer(config, workdir, ctx)._run()
