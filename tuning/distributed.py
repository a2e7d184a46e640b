"""The nightly job under ``accelerate launch`` (several GPUs, DeepSpeed ZeRO-2): rank 0 leads, every rank trains.

Rank 0 alone takes the lock, reads the store, writes markers, the run record and the report; it tells the other
ranks which run to train through a broadcast, and every stage ends with a barrier so no rank starts a stage
before rank 0 has recorded the previous one. The TRL trainers do the data-parallel part on their own: they pick
up the process group and the DeepSpeed plugin that ``accelerate launch`` sets up. Run alone (``ratchet tune
nightly``), there is one rank and all of this is a no-op.

Assumes one node: every rank reads the run directory rank 0 writes.
"""

from __future__ import annotations

import os
from typing import Any

import torch


class Ranks:
    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world_size > 1:
            # The process group the trainers will reuse (their Accelerator finds it initialised): set up now, since
            # rank 0 must tell the others which run to train before any trainer exists.
            from accelerate import PartialState

            PartialState(cpu=not torch.cuda.is_available())

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if self.world_size == 1:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
