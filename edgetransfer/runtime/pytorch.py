"""PyTorch eager runner for edgetransfer checkpoints (.pt).

``options["device"]``: ``cpu`` (default) or ``cuda[:N]``. On CUDA, :meth:`TorchRunner.synchronize`
calls ``torch.cuda.synchronize`` so the latency loop reads the clock after the kernels finished
(CUDA launches are asynchronous).
"""

from __future__ import annotations

import numpy as np

from ..errors import require
from ..types import Format, Runtime
from .base import Runner, register_runner


def torch_logits(model, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """Logits (N, C) of the ``nn.Module`` ``model`` (put in eval mode) on ``x`` float32 (N, 3, S, S)."""
    torch = require("torch", "train")
    model.eval()
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)])


@register_runner(Format.CHECKPOINT, Runtime.TORCH)
class TorchRunner(Runner):
    backend_module = "torch"
    extra = "train"

    def activate(self) -> None:
        torch = require("torch", "train", "the PyTorch runner")
        from ..checkpoint import load_checkpoint

        self._torch = torch
        self._prev_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)  # process-wide in torch: restored by deactivate()
        self.device = self.options.get("device", "cpu")
        self.model, _ = load_checkpoint(self.path)
        self.model.eval().to(self.device)
        self.active = True

    @property
    def execution_provider(self) -> str:
        return f"torch-eager-{getattr(self, 'device', 'cpu')}"

    @property
    def threads_used(self) -> int | None:
        return self._torch.get_num_threads() if self.active else (self.threads or None)

    def synchronize(self) -> None:
        if self.active and str(self.device).startswith("cuda"):
            self._torch.cuda.synchronize()

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds[self.input_specs[0]["name"]]
        with self._torch.inference_mode():
            out = self.model(self._torch.from_numpy(x).to(self.device))
            return {"logits": out.float().cpu().numpy()}

    def deactivate(self) -> None:
        self.model = None
        if getattr(self, "_prev_threads", None):
            self._torch.set_num_threads(self._prev_threads)
        super().deactivate()
