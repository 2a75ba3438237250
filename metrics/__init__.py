"""Sample-quality metrics: FID (Heusel et al. 2017), KID (Bińkowski et al. 2018), IS (Salimans et al. 2016),
precision/recall (Kynkäänniemi et al. 2019), FD-digits2, KID-digits2 and IS-digits2 for the bundled digits, and
energy distance / sliced Wasserstein for vectors. The math needs only numpy/scipy; the Inception network comes
from torch-fidelity, the optional extra `metrics`, imported only when FID/KID/IS are asked for."""
from .evaluate import EvalResult, evaluate
from .fidelity import is_available as inception_available
from .frechet import feature_statistics, frechet_distance
from .inception_score import inception_score, softmax_probs
from .kid import kid, mmd2_unbiased, polynomial_kernel
from .manifold import precision_recall
from .vectors import energy_distance, sliced_wasserstein

__all__ = [
    "evaluate", "EvalResult", "inception_available", "feature_statistics", "frechet_distance", "inception_score",
    "softmax_probs", "kid", "mmd2_unbiased", "polynomial_kernel", "precision_recall", "energy_distance",
    "sliced_wasserstein",
]
