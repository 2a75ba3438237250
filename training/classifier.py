"""Training the noise-conditional classifier of classifier guidance on forward-noised data (--mode train_classifier).

The classifier (guidance.build_classifier) and its loss live in `guidance`; this is the run around them: the
run's own SDE and data, checkpoints under <workdir>/classifier, resume.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import torch
from absl import logging

from scoresde import data as data_lib
from scoresde.guidance import build_classifier, classifier_loss

from scoresde.run import checkpoint as checkpoints
from scoresde.run.builders import build_sde, get_device
from scoresde.utils import UsageError

CLASSIFIER_DIR = "classifier"  # under the run's workdir: <workdir>/classifier/checkpoints/checkpoint_<step>.pt


class ClassifierResult(NamedTuple):
    step: int
    loss: float
    test_accuracy: float
    checkpoint: Path


def classifier_dir(workdir) -> Path:
    return Path(workdir) / CLASSIFIER_DIR


@torch.no_grad()
def noisy_accuracy(classifier, sde, dataset, device, t: float, batch_size: int = 256, max_items: int = 2000,
                   seed: int = 0) -> float:
    """Accuracy of argmax classifier(x_t, t) on (up to max_items of) `dataset` at one noise level t."""
    gen = torch.Generator(device).manual_seed(seed)
    idx = torch.arange(min(len(dataset), max_items))
    correct = 0
    for chunk in idx.split(batch_size):
        x, y = dataset.get_batch(chunk)
        x, y = x.to(device), y.to(device)
        tt = torch.full((len(x),), t, dtype=torch.float64, device=device)
        xt = sde.perturb(x, torch.randn(x.shape, generator=gen, device=device), tt)
        correct += int((classifier(xt, tt.to(x.dtype)).argmax(1) == y).sum())
    return correct / len(idx)


def train_classifier(config, workdir, device: torch.device | None = None) -> ClassifierResult:
    """Train (or resume) config.classifier on the configured dataset with the run's SDE; checkpoints in
    <workdir>/classifier. device: default config.device."""
    c = config.classifier
    sde = build_sde(config)
    device = get_device(config.device) if device is None else device
    torch.manual_seed(config.seed)
    info = data_lib.get_dataset(config)
    net = build_classifier(config, info.shape, info.num_classes).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=c.lr)
    out = classifier_dir(workdir)
    step, path = 0, checkpoints.latest_checkpoint(out)
    if path is not None:
        state = checkpoints.load_checkpoint(path, map_location=device)
        checkpoints.load_module_state(net, state["classifier"], "classifier", path)
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        logging.info("resumed the classifier from %s (step %d)", path, step)
    batches = data_lib.infinite_loader(info.train, c.batch_size, config.seed, start_step=step)
    loss = math.nan
    while step < c.n_iters:
        x, y = next(batches)
        net.train()
        loss_t = classifier_loss(net, sde, x.to(device), y.to(device), eps=config.training.eps)
        if not torch.isfinite(loss_t):
            raise UsageError(f"the classifier loss is {loss_t.item()} at step {step + 1}; lower classifier.lr")
        optimizer.zero_grad(set_to_none=True)
        loss_t.backward()
        optimizer.step()
        step, loss = step + 1, loss_t.item()
        if step % c.log_freq == 0:
            logging.info("classifier step %d: cross-entropy %.4f", step, loss)
        if step % c.snapshot_freq == 0 or step == c.n_iters:
            path = checkpoints.save_checkpoint(out, step, {"step": step, "classifier": net.state_dict(),
                                                           "optimizer": optimizer.state_dict(),
                                                           "config": config.to_json()}, keep=1)
    net.eval()
    accuracy = noisy_accuracy(net, sde, info.test, device, t=0.1 * sde.T, seed=config.seed)
    return ClassifierResult(step, loss, accuracy, path)


def load_classifier(config, workdir, shape, num_classes, device) -> torch.nn.Module:
    """The newest classifier checkpoint of a run (trained by --mode train_classifier), in eval mode on `device`."""
    out = classifier_dir(workdir)
    path = checkpoints.latest_checkpoint(out)
    if path is None:
        raise checkpoints.CheckpointError(f"no classifier checkpoint in {checkpoints.checkpoint_dir(out)}; train "
                                          "the run's guidance classifier first")
    net = build_classifier(config, shape, num_classes)
    checkpoints.load_module_state(net, checkpoints.load_checkpoint(path)["classifier"], "classifier", path)
    logging.info("loaded the classifier %s", path)
    return net.to(device).eval()
