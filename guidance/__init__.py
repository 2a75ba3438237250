"""Conditional and controllable generation at the score level: classifier-free and classifier guidance, inpainting."""
from .classifier import ClassifierLogits, ConvClassifier, MLPClassifier, build_classifier, classifier_loss
from .inpaint import INPAINTERS, inpaint
from . import io
from .io import read_observation
from .labels import batch_labels, check_labels, parse_labels
from .scores import ClassifierFreeGuidance, ClassifierGuidance

__all__ = [
    "ClassifierFreeGuidance", "ClassifierGuidance", "ClassifierLogits", "MLPClassifier", "ConvClassifier",
    "build_classifier", "classifier_loss", "inpaint", "INPAINTERS", "io", "read_observation", "batch_labels",
    "check_labels", "parse_labels",
]
