"""Devices, autocast precision and the torchrun process group.

CUDA when present: automatic mixed precision (bf16 where supported, else fp16 with a gradient
scaler). Under ``torchrun`` (``WORLD_SIZE`` > 1) the run uses DistributedDataParallel (NCCL on
CUDA, gloo on CPU); :class:`Distributed` holds the process group and the collectives the
training loop needs (no-ops for a single process).
"""

from __future__ import annotations

import os

from ..errors import ConfigError, require


def _torch():
    return require("torch", "train", "training")


def pick_device(device: str | None) -> str:
    """``device`` as given ('cpu' | 'cuda' | 'cuda:N'), or 'cuda' when available else 'cpu'.
    Raises :class:`ConfigError` for a CUDA device on a machine without CUDA."""
    torch = _torch()
    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available; use --device cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def amp_dtype(requested: str, device_type: str, bf16_supported: bool = False):
    """Autocast dtype for ``requested`` ('auto' | 'off' | 'bf16' | 'fp16') on ``device_type``.

    auto: CUDA -> bfloat16 where the GPU supports it (Ampere and newer), else float16 (with a
    gradient scaler); CPU -> None (fp32: CPU autocast gives no speed-up for this workload).
    Returns a ``torch.dtype`` or None. Raises :class:`ConfigError` for fp16 on CPU or bf16 on a
    GPU without bf16.
    """
    torch = _torch()
    if requested == "off":
        return None
    if device_type != "cuda":
        if requested == "fp16":
            raise ConfigError("--amp fp16 needs a CUDA device; on CPU use --amp bf16 or --amp off")
        return torch.bfloat16 if requested == "bf16" else None
    if requested == "bf16" and not bf16_supported:
        raise ConfigError("--amp bf16 requested but this GPU has no bfloat16 support; use --amp fp16")
    if requested == "fp16" or (requested == "auto" and not bf16_supported):
        return torch.float16
    return torch.bfloat16


def process_rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", "0"))


class Distributed:
    """The process group of a torchrun launch (``WORLD_SIZE`` > 1), or a single process.

    Reductions are no-ops for a single process."""

    def __init__(self, device_pref: str | None) -> None:
        torch = _torch()
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.owned = False
        self.backend = None
        device = pick_device(device_pref)
        if self.world > 1:
            import torch.distributed as dist

            if device == "cuda":
                device = f"cuda:{self.local_rank}"
            if device.startswith("cuda"):
                torch.cuda.set_device(torch.device(device))
            if not dist.is_initialized():
                dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
                self.owned = True
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            self.backend = dist.get_backend()
        self.device = device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, t, op: str = "sum"):
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
        return t

    def broadcast(self, t):
        if self.world > 1:
            import torch.distributed as dist

            dist.broadcast(t, src=0)
        return t

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def gather_rows(self, t):
        """Rows of ``t`` held as ``rank::world`` shards -> all rows in their original order."""
        if self.world == 1:
            return t
        import torch.distributed as dist

        torch = _torch()
        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        m = int(max(s.item() for s in sizes))
        pad = torch.zeros((m - t.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        parts = [torch.empty((m, *t.shape[1:]), dtype=t.dtype, device=t.device) for _ in range(self.world)]
        dist.all_gather(parts, torch.cat([t, pad]))
        total = int(sum(s.item() for s in sizes))
        out = torch.empty((total, *t.shape[1:]), dtype=t.dtype, device=t.device)
        for r, (p, s) in enumerate(zip(parts, sizes)):
            out[r::self.world] = p[: int(s.item())]
        return out

    def sync_buffers(self, model) -> None:
        """BatchNorm statistics of trainable stages move per rank; make rank 0's the shared ones."""
        if self.world > 1:
            for b in model.buffers():
                self.broadcast(b.data)

    def max_replica_diff(self, model) -> float:
        """Largest |difference| between any rank's weights and rank 0's (0 for one process; must
        be 0 under DDP)."""
        if self.world == 1:
            return 0.0
        torch = _torch()
        vec = torch.cat([v.detach().float().reshape(-1) for v in model.state_dict().values()]).to(self.device)
        ref = self.broadcast(vec.clone())
        return float(self.all_reduce((vec - ref).abs().max().reshape(1), "max").item())

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
            self.owned = False
