"""Processes, devices and FSDP2, applied from outside the model.

`Dist.from_env()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): one plain process without it,
else a process group (nccl on CUDA, gloo on CPU). `wrap_layers` adds activation checkpointing (non-reentrant,
per decoder layer and SigLIP layer) and `torch.compile` (per decoder layer) to a plain model; then `shard`
applies FSDP2 (`fully_shard` on every decoder layer, then on the root; `UniX.forward` runs every parameter
inside the root's forward) with an optional bf16 compute policy over fp32 master weights; `fill_shards` then gives
every rank its shard of rank 0's weights (only rank 0 reads the weight file; the others build on the meta
device and hold only their shard), and `full_state` gathers them back on rank 0. Reductions of token counts go
through `all_reduce_sum`.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

from ..utils.devices import resolve_device

log = logging.getLogger(__name__)


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized: bool = False  # a process group is up (we started it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str | None = None) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        dev = resolve_device(device)
        if dev.type == "cuda":  # one GPU per process, by torchrun's local rank
            torch.cuda.set_device(local)
            dev = torch.device("cuda", local)
        if world == 1:
            return cls(0, 1, 0, dev, False)
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        return cls(rank, world, local, dev, True)

    def all_reduce_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64 on the CPU for gloo, the device for nccl)."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self._reduce_device())
        dist.all_reduce(t)
        return t.tolist()

    def _reduce_device(self) -> torch.device:
        """Where reduction tensors live: the device for nccl, the CPU for gloo."""
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def min_over_ranks(self, value: int) -> int:
        if self.world_size == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self._reduce_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on some rank."""
        return bool(self.all_reduce_sum([float(flag)])[0]) if self.world_size > 1 else flag

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.initialized and dist.is_initialized():
            dist.destroy_process_group()


def shard(model: nn.Module, d: Dist, precision: str) -> nn.Module:
    """FSDP2 over the ranks: each decoder layer, then the root. bf16-mixed: bf16 compute, fp32 masters and
    fp32 gradient reduction."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if precision == "bf16-mixed" else MixedPrecisionPolicy()
    for layer in model.decoder.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    log.info("FSDP2 over %d ranks (%s): %d decoder layers + root", d.world_size, d.device.type,
             len(model.decoder.layers))
    return model


def wrap_layers(model: nn.Module, *, activation_checkpointing: bool, compile: bool) -> nn.Module:
    """Per layer, from outside the model (before `shard`): activation checkpointing recomputes each decoder and
    SigLIP layer in backward instead of keeping its activations; `torch.compile` compiles each decoder layer."""
    decoder = list(model.decoder.layers)
    vision = list(model.vision.tower.encoder.layers) if getattr(model, "vision", None) is not None else []
    if activation_checkpointing:
        from torch.distributed._composable import checkpoint

        for layer in decoder + vision:
            checkpoint(layer)
        log.info("activation checkpointing: %d decoder + %d SigLIP layers", len(decoder), len(vision))
    if compile:
        for layer in decoder:
            layer.compile()
        log.info("torch.compile: %d decoder layers", len(decoder))
    return model


def full_state(model: nn.Module) -> dict:
    """The full state dict of a model sharded by `shard`, gathered to rank 0's CPU (every rank takes part; the
    other ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def is_sharded(model: nn.Module | None) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def fill_shards(model: nn.Module, full_state: dict | None, d: Dist) -> nn.Module:
    """After `shard`: rank 0's full state dict (`full_state`, None on the other ranks) broadcast into every
    rank's shards; ranks whose model was built on the meta device get their storage here first."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if not d.is_main:
        model.to_empty(device=d.device)
    set_model_state_dict(model, full_state if d.is_main else {},
                         options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    model.reset_buffers()
    return model
