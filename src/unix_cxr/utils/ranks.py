"""This process's place among torchrun's processes, and the little the batch jobs need to agree between them.

`Ranks.from_env()` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``; one plain process
without it). Used as a context manager it joins the process group over gloo when there are several processes (and
none is up yet), so `barrier` and `sum` work on the CPU whatever device the model runs on; it leaves the group on
exit. With one process both are no-ops. The group's timeout is long (`GROUP_TIMEOUT`): after a resume one process
may have much more left to do than the others, which then wait at the barrier; a process that dies makes torchrun
stop the others.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP_TIMEOUT = datetime.timedelta(hours=24)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


@dataclass
class Ranks:
    """``rank`` of ``world_size`` processes (``local_rank`` on this machine); see the module doc."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _joined: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"bad process ranks: RANK={self.rank}, WORLD_SIZE={self.world_size}, "
                             f"LOCAL_RANK={self.local_rank}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Ranks:
        return cls(_env_int(env, "RANK", 0), _env_int(env, "WORLD_SIZE", 1), _env_int(env, "LOCAL_RANK", 0))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, spec: str | None) -> str | None:
        """The `--device` of this process: under torchrun a bare ``cuda`` (or no choice, on a CUDA machine) becomes
        ``cuda:LOCAL_RANK``, one GPU per process; anything else is kept."""
        if self.world_size == 1 or spec not in (None, "cuda"):
            return spec
        import torch

        return f"cuda:{self.local_rank}" if spec == "cuda" or torch.cuda.is_available() else spec

    def __enter__(self) -> Ranks:
        import torch.distributed as dist

        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)
            self._joined = True
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch.distributed as dist

        if self._joined and dist.is_initialized():
            dist.destroy_process_group()
        self._joined = False

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, value: int) -> int:
        """The sum of `value` over the processes (every process gets it)."""
        if self.world_size == 1:
            return value
        import torch
        import torch.distributed as dist

        total = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(total)
        return int(total.item())
