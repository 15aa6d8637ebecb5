"""Apply a hardware profile (configs/trainer/*.yaml) before the Trainer is built.

Everything device-specific happens here: which device `accelerator` means on this machine,
whether it is really there, which precision it runs, TF32 and cudnn switches, channels_last,
the optimizer kernel, and the callbacks a device needs. Model and data code never ask which
device they are on.
"""

from __future__ import annotations

import logging
import os
import sys

from omegaconf import DictConfig, open_dict

from xtune.errors import XtuneConfigError

log = logging.getLogger("xtune")

#: precisions each kind of device runs well; the first is what precision=auto picks
#: (for CUDA, auto picks bf16-mixed only where the GPU has bf16)
PRECISIONS = {
    "cpu": ("32-true", "64-true", "bf16-mixed", "bf16-true"),
    "cuda": ("bf16-mixed", "16-mixed", "32-true", "bf16-true", "16-true", "64-true",
             "transformer-engine", "transformer-engine-float16"),
    "tpu": ("bf16-true", "32-true"),
    "mps": ("32-true", "16-mixed", "bf16-mixed"),
}
WHY_NOT = {
    ("tpu", "bf16-mixed"): "Lightning's XLA precision refuses it; use bf16-true",
    ("tpu", "16-true"): "torch_xla 2.9 ignores it and silently runs fp32; use bf16-true",
    ("tpu", "16-mixed"): "XLA has no fp16 autocast; use bf16-true",
    ("cpu", "16-mixed"): "fp16 is not accelerated on CPUs; use 32-true (or bf16-mixed on CPUs with AMX)",
    ("cpu", "16-true"): "fp16 is not accelerated on CPUs; use 32-true",
}


def xla_available() -> bool:
    """torch_xla importable? (checked without importing Lightning's XLA code)"""
    import importlib.util

    return importlib.util.find_spec("torch_xla") is not None


def device_kind(accelerator) -> str:
    """cpu, cuda, tpu (any XLA device) or mps: what `trainer.accelerator` means on this machine."""
    if isinstance(accelerator, (dict, DictConfig)):  # an Accelerator instance from its config
        target = str(accelerator.get("_target_", ""))
        return "tpu" if "xla" in target.lower() else "cpu"
    name = str(accelerator or "auto").lower()
    if name == "auto":
        import torch

        if xla_available():
            from xtune.hardware import xla

            if xla.tpu_attached():
                return "tpu"
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return {"gpu": "cuda", "xla": "tpu"}.get(name, name)


def check_available(kind: str, accelerator) -> None:
    """Refuse a device this machine does not have, saying what to do instead."""
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda} build" if torch.version.cuda else "CPU-only build"
        raise XtuneConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible (torch {torch.__version__}, "
            f"{build}); use trainer=cpu here, or run on a machine with a GPU"
        )
    if kind == "mps" and not torch.backends.mps.is_available():
        raise XtuneConfigError("trainer.accelerator=mps but Apple MPS is not available; use trainer=cpu")
    if kind == "tpu":
        if not xla_available():
            if isinstance(accelerator, (dict, DictConfig)):  # trainer=xla_cpu / xtune-xla-check
                raise XtuneConfigError(
                    "XLA on this CPU (trainer=xla_cpu, xtune-xla-check) needs torch_xla, which is not installed: "
                    "in a separate venv run pip install -e \".[tpu]\" (pins torch==2.9.0, torch_xla==2.9.0), "
                    "then run the same command there (PJRT_DEVICE=CPU is set for you)"
                )
            raise XtuneConfigError(
                "trainer=tpu needs torch_xla: on the TPU VM run pip install -e \".[tpu]\" "
                "(pins torch==2.9.0, torchvision==0.24.0, torch_xla[tpu]==2.9.0)"
            )
        if isinstance(accelerator, (dict, DictConfig)):
            return  # xla_cpu: our accelerator finds the XLA:CPU device itself
        from xtune.hardware import xla

        if not xla.tpu_attached():
            raise XtuneConfigError(
                f"trainer=tpu but no TPU is attached to this machine (torch_xla {xla.version()}); "
                "run on a TPU VM, or check XLA readiness here with xtune-xla-check (XLA on CPU)"
            )


def resolve_precision(kind: str, precision) -> str:
    """precision=auto made concrete, and precisions the device cannot run refused."""
    import torch

    precision = str(precision)
    if precision == "auto":
        if kind == "cuda":
            return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
        return PRECISIONS.get(kind, ("32-true",))[0]
    allowed = PRECISIONS.get(kind)
    if allowed is not None and precision not in allowed:
        why = WHY_NOT.get((kind, precision), f"{kind} runs {', '.join(allowed)}")
        raise XtuneConfigError(f"trainer.precision={precision} is not supported on {kind}: {why}")
    if kind == "cuda" and precision.startswith("bf16") and not torch.cuda.is_bf16_supported():
        raise XtuneConfigError(
            f"trainer.precision={precision} but {torch.cuda.get_device_name()} has no bf16; "
            "use trainer.precision=16-mixed (or precision=auto)"
        )
    return precision


def prepare(cfg: DictConfig) -> str:
    """Check and complete cfg.trainer for this machine; set global backend switches.

    Returns the device kind. Called before the Trainer is built.
    """
    import torch

    accelerator = cfg.trainer.get("accelerator")
    kind = device_kind(accelerator)
    check_available(kind, accelerator)
    precision = resolve_precision(kind, cfg.trainer.get("precision", "32-true"))
    with open_dict(cfg):
        cfg.trainer.precision = precision
    hardware = cfg.get("hardware") or {}
    if hardware.get("matmul_precision"):
        torch.set_float32_matmul_precision(hardware.matmul_precision)
        torch.backends.cudnn.allow_tf32 = hardware.matmul_precision != "highest"
    if kind == "tpu":
        from xtune.hardware import xla_profile

        # XLA on this CPU for trainer=xla_cpu (its accelerator is a config node), else the TPU
        os.environ.setdefault("PJRT_DEVICE", "CPU" if isinstance(accelerator, (dict, DictConfig)) else "TPU")
        # the strategy (SPMD by default) and the device count, fixed before torch_xla's runtime starts
        xla_profile.configure(cfg)
    return kind


def wants_channels_last(cfg: DictConfig, kind: str, backbone) -> bool:
    """hardware.channels_last: true/false, or auto = convolutional backbones on a GPU."""
    import torch

    setting = (cfg.get("hardware") or {}).get("channels_last")
    if setting in (True, "true", "True"):
        return True
    if setting != "auto" or kind not in ("cuda", "mps"):
        return False
    convolutions = sum(isinstance(m, torch.nn.Conv2d) for m in backbone.modules())
    return convolutions > 1  # a ViT has one (its patch embedding)


def apply_memory_format(cfg: DictConfig, kind: str, module) -> None:
    """NHWC weights and batches for the module when the profile asks for it (wants_channels_last)."""
    if wants_channels_last(cfg, kind, module.backbone):
        module.use_channels_last()


#: devices with torch's fused (single-kernel) optimizer steps for Adam, AdamW, SGD and Adagrad
FUSED_KINDS = ("cpu", "cuda")


def optimizer_kwargs(cfg: DictConfig, kind: str, factory) -> dict:
    """hardware.fused_optimizer: `fused=True` for the optimizer when the device has the kernel.

    torch's fused step updates every parameter in one kernel instead of ~6 small ops per
    parameter tensor: on 2 CPU cores AdamW's step takes 1.3 ms instead of 6.4 (test_resnet), 10.6
    instead of 92 (resnet18), the same update to float rounding. torch picks it by default
    nowhere (foreach on CUDA, one tensor at a time on CPUs), nor does timm. auto: on CPUs and
    CUDA GPUs (not XLA, MPS or FSDP's sharded parameters) for optimizers that take `fused`;
    true: the same, or one line saying why not; false: torch's default. An optim.fused or
    optim.foreach the user set wins.
    """
    setting = (cfg.get("hardware") or {}).get("fused_optimizer", "auto")
    if setting in (False, "false", "False", None):
        return {}
    if setting not in (True, "true", "True", "auto"):
        raise XtuneConfigError(f"hardware.fused_optimizer={setting} is not one of auto, true, false")
    keywords = getattr(factory, "keywords", None) or {}
    if "fused" in keywords or "foreach" in keywords:
        return {}
    optimizer_class = getattr(factory, "func", factory)
    if "opt" in keywords:  # timm's create_optimizer_v2: the class its registry maps the name to
        from timm.optim import get_optimizer_class

        try:
            optimizer_class = get_optimizer_class(str(keywords["opt"]), bind_defaults=False)
        except (ValueError, ImportError, AssertionError):
            optimizer_class = None
    why_not = _why_not_fused(cfg, kind, optimizer_class, keywords.get("opt"))
    if why_not is None:
        return {"fused": True}
    if setting != "auto":
        raise XtuneConfigError(f"hardware.fused_optimizer=true but {why_not}; use hardware.fused_optimizer=auto "
                               "(fused where it exists) or false")
    return {}


def _why_not_fused(cfg: DictConfig, kind: str, optimizer_class, name) -> str | None:
    import inspect

    if kind not in FUSED_KINDS:
        return f"{kind} has no fused optimizer kernels"
    if "fsdp" in str(cfg.trainer.get("strategy") or "").lower():
        return "FSDP shards the parameters"
    try:
        if "fused" in inspect.signature(optimizer_class).parameters:
            return None
    except (TypeError, ValueError):
        pass
    return f"optimizer {name or getattr(optimizer_class, '__name__', optimizer_class)} has no fused step"


def callbacks(cfg: DictConfig, kind: str) -> list:
    """Callbacks a device needs (not user options). XLA: one device in Lightning's view (one chip, or
    SPMD's one process per host, after prepare) gets the graph cut per evaluation batch."""
    hardware = cfg.get("hardware") or {}
    devices = cfg.trainer.get("devices")
    if kind == "tpu" and hardware.get("xla_sync_eval") and str(devices) in ("1", "[0]"):
        from xtune.hardware.xla import SyncEachEvalBatch

        return [SyncEachEvalBatch()]
    return []


def prepare_ddp_relaunch() -> None:
    """Make Lightning's DDP subprocess launcher re-run exactly this job.

    Lightning starts ranks 1..N-1 by re-running sys.argv plus hydra.run.dir=<hydra.run.dir>.
    That dir holds ${now:...}, which would be evaluated again (a different directory), and in a
    multirun sys.argv is the whole sweep (-m a=1,2). So: pin run.dir to this job's directory and
    make sys.argv this job's own overrides.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    with read_write(hydra_cfg.hydra.run):
        hydra_cfg.hydra.run.dir = hydra_cfg.hydra.runtime.output_dir
    sys.argv = [sys.argv[0], *hydra_cfg.hydra.overrides.task]


def is_rank_zero() -> bool:
    """Rank of this process from the launcher's environment (before Lightning sets anything up)."""
    for key in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(key, "0") not in ("", "0"):
            return False
    return True


class DistributedScope:
    """Leaves no distributed state behind a run: the process group is destroyed and the
    environment variables Lightning's DDP launcher set (MASTER_PORT, LOCAL_RANK, ...) are
    removed, so the next job of a multirun in the same process starts its own ranks."""

    def __enter__(self):
        self.environment = dict(os.environ)
        return self

    def __exit__(self, *exc) -> None:
        # a run refused before torch was imported has no process group (and importing torch.distributed
        # only to find that out would cost a config error ~2.5 s)
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key in set(os.environ) - set(self.environment):
            del os.environ[key]
        for key, value in self.environment.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
