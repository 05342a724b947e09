"""PyTorch eager runner for edgetransfer checkpoints (.pt)."""

from __future__ import annotations

import numpy as np

from ..errors import require
from ..types import Format, Runtime
from .base import Runner, register_runner


@register_runner(Format.CHECKPOINT, Runtime.TORCH)
class TorchRunner(Runner):
    backend_module = "torch"
    extra = "train"

    def activate(self) -> None:
        torch = require("torch", "train", "the PyTorch runner")
        from ..train import load_checkpoint

        if self.threads:
            torch.set_num_threads(self.threads)
        self._torch = torch
        self.model, _ = load_checkpoint(self.path)
        self.model.eval()
        self.active = True

    @property
    def execution_provider(self) -> str:
        return f"torch-eager-cpu ({self._torch.get_num_threads()} threads)" if self.active else "torch-eager-cpu"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds[self.input_specs[0]["name"]]
        with self._torch.inference_mode():
            return {"logits": self.model(self._torch.from_numpy(x)).numpy()}

    def deactivate(self) -> None:
        self.model = None
        super().deactivate()
