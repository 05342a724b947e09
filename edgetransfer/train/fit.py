"""Transfer learning, the phases: pretrained backbone -> new head -> frozen backbone -> train the
head -> optionally unfreeze part of the backbone and fine-tune; keep the best model on validation.

The recipe (Yosinski et al. 2014; fastai's ``fine_tune``; timm's layer-wise lr decay):

1. **Head phase** (``epochs``): only the new head trains (``freeze='backbone'``), or the head plus
   the last ``trainable_blocks`` stages, or everything (``freeze='none'``). Frozen modules stay in
   eval mode the whole run, so frozen BatchNorm running statistics never move.
2. **Fine-tune phase** (``finetune_epochs``, optional): starting from the best head-phase model,
   ``unfreeze='last:K'|'all'`` stages train with discriminative learning rates (head lr =
   ``finetune_lr``, backbone lr = head lr x ``backbone_lr_factor``, times ``layer_decay`` per stage
   away from the head), linear warm-up then cosine decay (per step), AdamW.
3. The model handed back is the best epoch of either phase on validation top-1 (ties: lower
   validation loss), so fine-tuning can never return a model worse on validation than head-only;
   the log and the checkpoint say which phase produced it. ``early_stopping`` ends a phase after N
   epochs without a better validation result.

Every epoch is :func:`edgetransfer.train.loop.train_one_epoch` then
:func:`edgetransfer.train.loop.evaluate`, on cached head features
(:mod:`edgetransfer.train.features`) when only the head trains, else on decoded images.

**Runs that survive.** ``OUT/last.pt`` (:mod:`edgetransfer.train.state`) is written atomically
after every epoch and ``resume=True`` continues from it to the same result; ``OUT/model.pt`` is
the best model (+ manifest, :mod:`edgetransfer.checkpoint`); per-epoch metrics go to
``OUT/metrics.csv`` and ``OUT/metrics.json``. Under ``torchrun`` only rank 0 writes files, and the
final parameters are checked to be identical on every rank.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..bundle import CHECKPOINT as MODEL_FILE
from ..checkpoint import save_checkpoint
from ..data import ImageFolder
from ..errors import ConfigError, DataError, TrainingError, TrainingInterrupted
from ..models import ModelInfo, backbone_blocks, build_model
from ..progress import log
from .config import TrainConfig, TrainResult
from .device import Distributed, _torch, amp_dtype
from .features import Features, head_features, head_forward
from .freeze import apply_freeze, train_modes
from .loop import NonFiniteLoss, epoch_indices, evaluate, image_batches, model_forward, train_one_epoch
from .optim import make_loss, param_groups, warmup_cosine
from .state import LAST_CHECKPOINT, RunState, load_state, restore, save_state, write_metrics

EVAL_FEATURE_BATCH = 512  # validation batches on cached features (the head alone: large batches are cheap)


@dataclass
class Phase:
    name: str  # head | train | finetune
    epochs: int
    trainable: list[int]  # indices of trainable backbone stages
    lr: float  # head lr


@dataclass
class Run:
    """One training run: the model, the data and the state shared by the phases."""

    cfg: TrainConfig
    train_set: ImageFolder
    val_set: ImageFolder
    out: Path
    d: Distributed
    model: Any
    info: ModelInfo
    blocks: list[list[str]]
    phases: list[Phase]
    amp: Any  # autocast dtype or None
    scaler: Any  # torch.amp.GradScaler for fp16 autocast, else None
    channels_last: bool
    loss_fn: Any
    eval_loss: Any
    state: RunState = field(default_factory=RunState)
    features: Features | None = None
    train_seconds: float | None = None
    dist_info: dict[str, Any] | None = None

    @property
    def device(self) -> str:
        return self.d.device

    @property
    def head_path(self) -> str:
        return self.info.head_path


def check_data(train_set: ImageFolder, val_set: ImageFolder, cfg: TrainConfig) -> None:
    """Raise :class:`DataError` (what to fix) before any long work: undecodable images with
    ``strict``, a class without training images, an empty or differently-classed validation set."""
    skipped = train_set.skipped + [s for s in val_set.skipped if s not in train_set.skipped]
    if cfg.strict and skipped:
        listing = "; ".join(f"{s['path']} ({s['reason']})" for s in skipped[:10])
        raise DataError(f"{len(skipped)} image(s) cannot be decoded: {listing}{' ...' if len(skipped) > 10 else ''}; "
                        "fix or remove them, or drop --strict to skip them")
    counts = train_set.counts()
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"class(es) {empty} have no training images in {train_set.root}; add images or remove the class")
    if len(val_set) == 0:
        raise DataError(f"the validation set {val_set.root} is empty; pass --val DIR or a larger dataset")
    if val_set.class_names != train_set.class_names:
        raise DataError(f"validation classes {val_set.class_names} differ from training classes {train_set.class_names}")


def prepare(train_set: ImageFolder, val_set: ImageFolder, out: Path, cfg: TrainConfig, d: Distributed) -> Run:
    """Build the model (seeded), its phases, the loss and the autocast settings."""
    torch = _torch()
    dev_type = d.device.split(":")[0]
    amp = amp_dtype(cfg.amp, dev_type, dev_type == "cuda" and torch.cuda.is_bf16_supported())
    scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
    channels_last = cfg.channels_last and dev_type == "cuda"
    if dev_type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    model, info = build_model(cfg.model, len(train_set.class_names), head=cfg.head, hidden=cfg.hidden,
                              dropout=cfg.dropout, arch=cfg.arch, pretrained=cfg.pretrained, class_names=train_set.class_names)
    if cfg.input_size:
        pre = info.preprocessing
        info.preprocessing = dataclasses.replace(
            pre, input_size=cfg.input_size, resize_size=max(cfg.input_size, round(cfg.input_size * pre.resize_size / pre.input_size)))
    info.preprocessing = dataclasses.replace(info.preprocessing, image=cfg.image_policy())
    blocks = backbone_blocks(model, info.head_path)
    nb = len(blocks)
    if cfg.trainable_blocks > nb:
        raise ConfigError(f"--trainable-blocks {cfg.trainable_blocks}: {cfg.model} has only {nb} backbone stages")
    if cfg.finetune_epochs and cfg.unfreeze.startswith("last:") and int(cfg.unfreeze[5:]) > nb:
        raise ConfigError(f"--unfreeze {cfg.unfreeze}: {cfg.model} has only {nb} backbone stages; use --unfreeze all")
    first = list(range(nb)) if cfg.freeze == "none" else list(range(nb - cfg.trainable_blocks, nb))
    phases = [Phase("head" if not first else "train", cfg.epochs, first, cfg.lr)]
    if cfg.finetune_epochs:
        k = cfg.unfreeze_blocks(nb)
        phases.append(Phase("finetune", cfg.finetune_epochs, list(range(nb - k, nb)), cfg.head_lr_finetune()))
    model.to(d.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return Run(cfg, train_set, val_set, Path(out), d, model, info, blocks, phases, amp, scaler, channels_last,
               make_loss(cfg, list(train_set.counts().values()), d.device), torch.nn.CrossEntropyLoss())


def cpu_state(model, prefix: str | None = None) -> dict[str, Any]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
            if prefix is None or k == prefix or k.startswith(prefix + ".")}


def model_state(run: Run, p: int) -> dict[str, Any]:
    """Weights that may differ from a freshly built model: only the head while the backbone has
    never trained, everything after."""
    only_head = p == 0 and not run.phases[0].trainable
    return cpu_state(run.model, run.head_path if only_head else None)


def save_last(run: Run, p: int, opt, sched) -> None:
    """``OUT/last.pt`` after an epoch (rank 0 only)."""
    if run.d.main:
        save_state(run.out / LAST_CHECKPOINT, cfg=run.cfg, class_names=run.train_set.class_names, info=run.info,
                   state=run.state, model_state=model_state(run, p), optimizer=opt, scheduler=sched, scaler=run.scaler)


def resume(run: Run) -> dict | None:
    """With ``cfg.resume``: load OUT/last.pt (checked to belong to this run) into the run and the
    global RNG. Returns the loaded state, or None (not resuming, or nothing to resume)."""
    torch = _torch()
    p = run.out / LAST_CHECKPOINT
    if not run.cfg.resume:
        if p.is_file() and run.d.main:
            log(f"[yellow]{p} holds the training state of an earlier run; this run starts over (pass --resume to continue an interrupted one)")
        return None
    if not p.is_file():
        log(f"[yellow]--resume: no {p}; starting a fresh run")
        return None
    obj = load_state(p, run.cfg, run.train_set.class_names)
    restore(run.state, obj)
    run.model.load_state_dict(obj["model_state"], strict=False)
    torch.set_rng_state(obj["rng"])  # nothing below draws from the global generator before training resumes
    if obj.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(obj["cuda_rng"])
    log(f"resumed {p}: phase {run.phases[run.state.phase].name}, {run.state.epoch} epoch(s) done")
    return obj


def run_phase(run: Run, p: int, resumed: dict | None) -> None:
    """Freeze for phase ``p``, build its optimizer and schedule (or restore them), run its epochs."""
    torch = _torch()
    cfg, d, s = run.cfg, run.d, run.state
    ph = run.phases[p]
    here = resumed is not None and resumed["phase"] == p
    if here and (s.epoch >= ph.epochs or s.stopped):
        return  # resumed a run whose last phase had already finished
    if p > 0 and s.best_state is not None and not here:
        # start from the best model so far; from here on the backbone moves, so "best" is a full state
        run.model.load_state_dict(s.best_state, strict=False)
        s.best_state = {**cpu_state(run.model), **s.best_state}
    n_train = apply_freeze(run.model, run.head_path, run.blocks, ph.trainable, cfg.freeze_bn)
    if not ph.trainable and cfg.feature_cache and run.features is None:
        run.features = head_features(run.model, run.info, run.train_set, run.val_set, cfg, d, run.amp)
    cached = not ph.trainable and cfg.feature_cache and run.features is not None
    nb = len(run.blocks)
    what = "head" if not ph.trainable else ("all stages" if len(ph.trainable) == nb else f"last {len(ph.trainable)} of {nb} stages") + " + head"
    log(f"phase {ph.name}: {ph.epochs} epoch(s), trainable: {what} ({n_train} parameters), head lr {ph.lr:g}"
        + (f", backbone lr {ph.lr * cfg.backbone_lr_factor:g}" + (f" x {cfg.layer_decay}^depth" if cfg.layer_decay else "") if ph.trainable else "")
        + (", on cached features" if cached else ", whole network every step"))
    head = run.model.get_submodule(run.head_path)
    module = head if cached else run.model
    if d.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        module = DDP(module, device_ids=[torch.device(run.device).index] if run.device.startswith("cuda") else None)
    opt = torch.optim.AdamW(param_groups(run.model, run.head_path, run.blocks, ph.trainable, ph.lr, cfg))
    per_rank_batch = max(1, cfg.batch_size // d.world)
    steps = math.ceil(math.ceil(len(run.train_set.labels) / d.world) / per_rank_batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(ph.epochs * steps, round(cfg.warmup_epochs * steps)))
    if here and s.epoch > 0:
        opt.load_state_dict(resumed["optimizer"])
        sched.load_state_dict(resumed["scheduler"])
        if run.scaler and resumed.get("scaler"):
            run.scaler.load_state_dict(resumed["scaler"])
    else:
        s.epoch, s.stale, s.stopped = 0, 0, False
    threads = torch.get_num_threads()
    if cached and not run.device.startswith("cuda"):
        # steps on cached features are tiny: one thread beats OpenMP fork/join, which collapses on a busy machine
        torch.set_num_threads(1)
    try:
        run_epochs(run, p, cached, module, head, opt, sched)
    finally:
        torch.set_num_threads(threads)
    run.model.eval()


def run_epochs(run: Run, p: int, cached: bool, module, head, opt, sched) -> None:
    """The epochs of phase ``p``: train, evaluate, keep the best, early-stop, save the state."""
    torch = _torch()
    cfg, d, s, dev = run.cfg, run.d, run.state, run.device
    ph = run.phases[p]
    per_rank_batch = max(1, cfg.batch_size // d.world)
    trainable = [q for q in run.model.parameters() if q.requires_grad]
    modes = train_modes(run.model)
    spec = run.info.preprocessing
    F = run.features
    while s.epoch < ph.epochs and not s.stopped:
        epoch = s.epoch + 1
        t0 = time.perf_counter()
        order = epoch_indices(run.train_set.labels, epoch + 1000 * p, cfg.seed, d.rank, d.world, cfg.balanced_sampler)
        if cached:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 7919 * p + epoch)
            view = torch.randint(F.train.shape[1], (F.train.shape[0],), generator=g).to(dev)
            index = (torch.as_tensor(order[i : i + per_rank_batch], device=dev) for i in range(0, len(order), per_rank_batch))
            batches = ((F.train[a, view[a]], F.train_labels[a]) for a in index)
            forward, progress = head_forward, None
        else:
            aug = (lambda i, e=epoch: (cfg.seed, p, e, i)) if cfg.augment else None
            batches = image_batches(run.train_set.samples, spec, per_rank_batch, dev, indices=order, aug_key=aug,
                                    channels_last=run.channels_last)
            forward, progress = model_forward, (f"{ph.name} epoch {epoch}", len(order))
        try:
            stats = train_one_epoch(module, run.loss_fn, opt, batches, dev, scheduler=sched, scaler=run.scaler, amp=run.amp,
                                    clip_grad_norm=cfg.clip_grad_norm, params=trainable, modes=modes, forward=forward,
                                    dist=d, progress=progress)
        except NonFiniteLoss as exc:
            raise diverged(run, ph.name, epoch, exc.step, exc.value) from None
        d.sync_buffers(run.model)
        train_seconds = time.perf_counter() - t0
        if cached:
            n = len(F.val_labels)
            val = ((F.val[i : i + EVAL_FEATURE_BATCH], F.val_labels[i : i + EVAL_FEATURE_BATCH]) for i in range(0, n, EVAL_FEATURE_BATCH))
            ev = evaluate(head, run.eval_loss, val, dev, forward=head_forward)
        else:
            idx = list(range(d.rank, len(run.val_set), d.world))
            val = image_batches(run.val_set.samples, spec, cfg.batch_size, dev, indices=idx, channels_last=run.channels_last)
            ev = evaluate(run.model, run.eval_loss, val, dev, amp=run.amp, dist=d)
        top1, vloss = ev.top1, ev.loss
        seconds = time.perf_counter() - t0
        row = {"phase": ph.name, "epoch": epoch, "train_loss": stats.loss, "val_loss": vloss, "val_top1": top1,
               "lr": max(g_["lr"] for g_ in opt.param_groups), "seconds": seconds,
               "images_per_s": stats.images / max(train_seconds, 1e-9)}
        s.history.append(row)
        s.epoch = epoch
        better = (top1, -vloss) > (s.best_key[0], -s.best_key[1])
        if better:
            s.best_key = (top1, vloss)
            s.best_state, s.best_phase, s.best_epoch = model_state(run, p), ph.name, epoch
            s.stale = 0
        else:
            s.stale += 1
        log(f"  {ph.name} epoch {epoch:>3}/{ph.epochs}  loss {row['train_loss']:.4f}  val loss {vloss:.4f}  "
            f"val top-1 {top1:.4f}{'  *' if better else ''}  lr {row['lr']:.2e}  {seconds:.2f} s")
        if cfg.early_stopping and s.stale >= cfg.early_stopping and s.epoch < ph.epochs:
            s.stopped = True
            log(f"  early stopping: {s.stale} epoch(s) without a better validation result")
        save_last(run, p, opt, sched)
        if d.main:
            write_metrics(run.out, s.history)


def diverged(run: Run, phase: str, epoch: int, step: int, value: float) -> TrainingError:
    """After a non-finite loss: keep the best model so far in OUT/model.pt (rank 0) and return the
    error naming the phase, epoch and step and what was kept."""
    msg = f"non-finite loss ({value}) in phase {phase}, epoch {epoch}, step {step}"
    kept = ""
    if run.state.best_state is not None and run.d.main:
        run.model.load_state_dict(run.state.best_state, strict=False)
        ck = save_best(run, final=False)
        kept = f"; the best model so far (phase {run.state.best_phase}, epoch {run.state.best_epoch}) is kept in {ck}"
    if (run.out / LAST_CHECKPOINT).is_file():
        kept += f" and the last good training state in {run.out / LAST_CHECKPOINT}"
    return TrainingError(f"{msg}{kept}; lower --lr (or --finetune-lr), add --clip-grad-norm, or check the data")


def interrupted(run: Run, seconds: float) -> TrainingInterrupted:
    """After Ctrl-C: write the best model so far to OUT/model.pt (rank 0; ``metrics.complete``
    false) and return the error (exit code 130) saying so and how to continue."""
    s = run.state
    run.train_seconds = seconds
    where = f"interrupted in phase {run.phases[s.phase].name} after epoch {s.epoch}"
    resume_hint = "continue with --resume" if (run.out / LAST_CHECKPOINT).is_file() else "no epoch finished, so nothing to resume"
    if s.best_state is None:
        return TrainingInterrupted(f"{where}; no epoch finished, nothing written")
    kept = ""
    if run.d.main:
        run.model.load_state_dict(s.best_state, strict=False)
        run.model.eval()
        ck = save_best(run, final=False)
        kept = f"; best so far (phase {s.best_phase}, epoch {s.best_epoch}, val top-1 {s.best_key[0]:.4f}) written to {ck}"
    return TrainingInterrupted(f"{where}{kept}; {resume_hint}")


def save_best(run: Run, final: bool = True) -> Path:
    """``OUT/model.pt`` from the model's current weights, with the run's metrics and dataset."""
    s, ts, vs = run.state, run.train_set, run.val_set
    metrics = {"best_epoch": s.best_epoch, "best_phase": s.best_phase, "phase": s.best_phase, "val_top1": s.best_key[0],
               "val_loss": s.best_key[1], "history": s.history, "train_seconds": run.train_seconds,
               "device": run.device, "amp": str(run.amp).replace("torch.", "") if run.amp else None,
               "feature_cache": (run.features.info if run.features else None) or None, "phases": [asdict(ph) for ph in run.phases],
               "num_blocks": len(run.blocks), "distributed": run.dist_info, "complete": final}
    dataset = {"train_root": str(ts.root), "val_root": str(vs.root), "num_train": len(ts), "num_val": len(vs),
               "train_counts": ts.counts(), "val_counts": vs.counts(),
               "skipped": ts.skipped + [x for x in vs.skipped if x not in ts.skipped]}
    ck = run.out / MODEL_FILE
    save_checkpoint(ck, run.model, run.info, ts.class_names, run.cfg, metrics, dataset)
    return ck


def check_replicas(run: Run) -> None:
    """Under DDP: record the largest |difference| between any rank's weights and rank 0's."""
    if run.d.world == 1:
        return
    diff = run.d.max_replica_diff(run.model)
    run.dist_info = {"world_size": run.d.world, "backend": run.d.backend, "max_abs_param_diff_across_ranks": diff}
    if diff != 0.0:
        log(f"[yellow]ranks disagree: max |weight difference| {diff:.3g}")


def train(train_set: ImageFolder, val_set: ImageFolder, out: Path, cfg: TrainConfig) -> TrainResult:
    """Build the model, run the head phase (and the fine-tune phase when asked), write
    ``out/model.pt`` (best model + manifest), ``out/last.pt`` (training state for ``resume``),
    ``out/metrics.csv`` and ``out/metrics.json``.

    Works under ``torchrun`` (DDP; only rank 0 writes files). Raises :class:`ConfigError` /
    :class:`ModelSourceError` / :class:`DataError` before any long work on bad settings, and
    :class:`TrainingError` on a non-finite loss (after keeping the best model so far).
    """
    check_data(train_set, val_set, cfg)
    if cfg.cache_dir:
        cd = Path(cfg.cache_dir).resolve()
        for root in {Path(train_set.root).resolve(), Path(val_set.root).resolve()}:
            if cd == root or root in cd.parents:
                raise ConfigError(f"--cache-dir {cfg.cache_dir} is inside the dataset {root}; never write next to the data: "
                                  "use a directory under --out or ~/.cache/edgetransfer")
    d = Distributed(cfg.device)
    try:
        return _train(train_set, val_set, Path(out), cfg, d)
    finally:
        d.close()


def _train(train_set: ImageFolder, val_set: ImageFolder, out: Path, cfg: TrainConfig, d: Distributed) -> TrainResult:
    torch = _torch()
    r = prepare(train_set, val_set, out, cfg, d)
    log(f"model: {r.info.source}; new {cfg.head} head at '{r.head_path}' ({r.info.feature_dim} -> {r.info.num_classes}); "
        f"{len(r.blocks)} backbone stages; device {r.device}" + (f", {d.world} processes ({d.backend})" if d.world > 1 else "")
        + (f", autocast {str(r.amp).replace('torch.', '')}" if r.amp else ""))
    resumed = resume(r)
    t0 = time.perf_counter()
    try:
        for p in range(len(r.phases)):
            s = r.state
            if p < s.phase:  # finished before the interruption
                continue
            if p > s.phase:
                s.phase, s.epoch, s.stopped = p, 0, False
            run_phase(r, p, resumed)
    except KeyboardInterrupt:
        raise interrupted(r, time.perf_counter() - t0) from None
    r.train_seconds = time.perf_counter() - t0
    s = r.state
    if s.best_state is not None:
        r.model.load_state_dict(s.best_state, strict=False)
    r.model.eval()
    check_replicas(r)
    r.model.cpu()
    if r.channels_last:
        r.model.to(memory_format=torch.contiguous_format)
    first = [h for h in s.history if h["phase"] == r.phases[0].name]
    head_best = max((h["val_top1"] for h in first), default=float("nan"))
    log(f"best: phase {s.best_phase}, epoch {s.best_epoch}, val top-1 {s.best_key[0]:.4f} ({r.train_seconds:.1f} s)"
        + (f"; best {r.phases[0].name}-phase top-1 {head_best:.4f}" if len(r.phases) > 1 else ""))
    ck = out / MODEL_FILE
    if d.main:
        save_best(r)
    d.barrier()
    return TrainResult(ck, s.best_epoch, s.best_key[0], s.history, r.info, s.best_phase, r.model, out / LAST_CHECKPOINT)
