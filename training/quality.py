"""The sample-quality metric logged during training (FD-digits2, energy distance, or FID where it is available
offline)."""
from __future__ import annotations

from pathlib import Path

import torch
from absl import logging

from scoresde import data as data_lib
from scoresde import metrics
from scoresde import models
from scoresde import solvers
from scoresde.metrics import fidelity
from scoresde.run import precision
from scoresde.run.quality import cache_dir, inception_weights, score
from scoresde.run.sampling import draw_samples


class TrainingQuality:
    """The offline metric logged every training.fid_freq steps: FD-digits2 (with KID-digits2, precision and
    recall) for digits, energy distance for vectors, FID for other images where torch-fidelity and the Inception
    weights are already here (training never downloads); config.metrics.num_samples_training samples of the EMA
    network with the snapshot sampler.

    Every evaluation uses the same per-sample seeds (config.seed), so the changes between steps are the model's,
    not the noise's.
    """

    def __init__(self, config, info: data_lib.DataInfo):
        self.config, self.info = config, info
        self.num = config.metrics.num_samples_training
        self.weights = inception_weights(config)
        self.cache = cache_dir(config)

    @classmethod
    def from_config(cls, config, info: data_lib.DataInfo) -> "TrainingQuality | None":
        """The metric when training.fid_freq > 0 and it can be computed offline here; None (with a warning) else."""
        # Checked by configs.check_config; configs saved before the field existed have none.
        if config.training.get("fid_freq", 0) == 0:
            return None
        quality = cls(config, info)
        if info.is_image and str(config.data.dataset).lower() != "digits":
            weights = Path(quality.weights) if quality.weights else fidelity.default_weights_path()
            if not (metrics.inception_available() and weights.is_file()):
                logging.warning("training.fid_freq: no FID during training, it needs torch-fidelity (pip install "
                                "'scoresde[metrics]') and the Inception weights at %s", weights)
                return None
        return quality

    @torch.no_grad()
    def __call__(self, network: torch.nn.Module, precond: models.Precond, sde, sampler: solvers.Sampler,
                 ctx) -> dict | None:
        """{metric: value} of the network's samples on rank 0 (None on the others, or when a sample is NaN/inf:
        early in training that says nothing about the metric, and the run goes on)."""
        c = self.config
        model = precision.autocast_network(network.eval(), c.precision, ctx.device)
        score_fn = models.get_score_fn(model, sde, precond)
        out = draw_samples(sde, score_fn, self.info, sampler, self.num, c.sampling.batch_size, c.seed, ctx,
                           progress=False)
        if out is None:
            return None
        if not out.x.isfinite().all():
            logging.warning("sample quality skipped: %d sample values are NaN/inf", int((~out.x.isfinite()).sum()))
            return None
        result = score(out.x, c, self.info, cache=self.cache, weights=self.weights, device=ctx.device)
        return {k: v for k, v in result.as_dict().items() if k not in ("kind", "num_samples")}
