"""The record of one finished training, as models_handling.run_model
returns it and the results folder writes it, whichever process it ran in."""

from dataclasses import dataclass, field

HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")


@dataclass
class ModelResult:
    """One model's figures, as models_handling.run_model returns them and
    save_results writes them."""

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
