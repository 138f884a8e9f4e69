"""The record of one finished training, as models_handling.run_model
returns it, the executor brings it back from wherever it ran, and the results
folder writes it."""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class ModelResult:
    """One model's figures, and what the executor adds on the way back."""

    name: str
    history: dict  # per-epoch lists under HISTORY_KEYS
    test_loss: float
    test_accuracy: float
    train_seconds: float
    trainable_parameters: int
    model: object = field(default=None, repr=False)  # the trained keras.Model, to save
    diverged: dict | None = None  # {"epoch", "step", "loss"} where the loss stopped being finite
    model_file: bytes | None = field(default=None, repr=False)  # or the trained model as .keras bytes (a worker's)
    where: dict | None = None  # where it trained: host, process, threads, and jobs or cluster (executor.py)
    report: object = None  # the training's probe's report() (harness.executor.Training.callback), if it had one

    def load_model(self):
        """The trained model (loaded from its .keras bytes, if from a worker)."""
        if self.model is not None:
            return self.model
        import keras  # only here: this module stays free of TensorFlow

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.keras"
            path.write_bytes(self.model_file)
            return keras.models.load_model(path)
