"""ExecuTorch runner for ``.pte`` programs (XNNPACK-delegated fp32 or PT2E INT8).

Uses ``executorch.runtime.Runtime`` (the Python bindings of the ExecuTorch C++ runtime). Inputs are
made contiguous before they are handed over: the runtime reads the buffer as dense NCHW, and a
strided (e.g. channels-last transposed) numpy view gives wrong logits without any error (seen with
executorch 1.5.1: a transposed view of the same image changed the logits), so the copy is not
optional.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, require
from ..types import Format, Runtime
from .base import Runner, register_runner


@register_runner(Format.PTE, Runtime.EXECUTORCH)
class ExecuTorchRunner(Runner):
    """``threads``: size of the runtime's (process-wide) thread pool; 0 leaves the default."""

    backend_module = "executorch"
    extra = "executorch"

    def activate(self) -> None:
        rt_mod = require("executorch.runtime", self.extra, "the ExecuTorch runner")
        self._torch = require("torch", "train", "the ExecuTorch runner (its Python API takes torch tensors)")
        if self.threads:
            try:  # experimental API of the pybindings; the pool is process-wide
                from executorch.extension.pybindings import portable_lib

                portable_lib._unsafe_reset_threadpool(int(self.threads))
            except Exception:  # pragma: no cover - depends on the executorch build
                pass
        self.program = rt_mod.Runtime.get().load_program(self.path)
        if "forward" not in self.program.method_names:
            raise ConfigError(f"{self.path.name} has no 'forward' method (methods: {sorted(self.program.method_names)})")
        self.method = self.program.load_method("forward")
        self.active = True

    @property
    def execution_provider(self) -> str:
        if not self.active:
            return "executorch"
        try:
            from executorch.extension.pybindings import portable_lib

            n = portable_lib._threadpool_get_thread_count()
        except Exception:  # pragma: no cover
            n = "?"
        return f"executorch-cpu (XNNPACK delegate, {n} threads)"

    def infer_impl(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(next(iter(feeds.values())), dtype=np.float32)
        out = self.method.execute([self._torch.from_numpy(x)])
        return {"logits": out[0].numpy().copy()}

    def deactivate(self) -> None:
        self.method = self.program = None
        super().deactivate()
