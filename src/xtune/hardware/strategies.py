"""Strategy factories for configs/trainer/*.yaml where Lightning needs Python objects."""

from __future__ import annotations


def fsdp(
    min_num_params: int = 1_000_000,
    sharding_strategy: str = "FULL_SHARD",
    activation_checkpointing: bool = False,
    cpu_offload: bool = False,
    **kwargs,
):
    """Lightning's FSDPStrategy with a size-based wrap policy (works for any timm backbone).

    Every submodule holding >= `min_num_params` parameters becomes its own FSDP unit; with
    `activation_checkpointing`, those units recompute activations in the backward pass.
    Checkpoints are saved as one full state dict, loadable by eval.py on any hardware.
    """
    import functools

    from pytorch_lightning.strategies import FSDPStrategy
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy

    policy = functools.partial(size_based_auto_wrap_policy, min_num_params=int(min_num_params))
    return FSDPStrategy(
        auto_wrap_policy=policy,
        sharding_strategy=sharding_strategy,
        activation_checkpointing_policy=policy if activation_checkpointing else None,
        cpu_offload=cpu_offload,
        state_dict_type="full",
        **kwargs,
    )
