"""Training: the loop (resumable, signal-safe), few-step distillation, the guidance classifier, torchrun."""
from .classifier import ClassifierResult, load_classifier, train_classifier
from .loop import Trainer, TrainingDivergedError, TrainResult, train

__all__ = ["Trainer", "TrainResult", "TrainingDivergedError", "train", "train_classifier", "load_classifier",
           "ClassifierResult"]
