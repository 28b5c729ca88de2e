"""Memory shared by a front-end process and the engine process (TRYON_WORKERS > 1), so that a
try-on's images do not cross the Unix socket: the message names a slot instead.

The engine process creates one arena for each front end (an anonymous in-memory file) and
hands it over as an inherited descriptor; both map it. An arena is ``slots`` equal slots,
each holding one try-on's pose, masked model and cloth, then its output, every one (3, H, W)
uint8 levels in pixel order (as decoded, and as the batch is stacked). The front end keeps the
free list: it takes a slot to submit, the engine reads the inputs and writes the output in
place, and the front end frees the slot once it has the answer or has abandoned the ``Work`` (the
engine then writes nothing more there: see service/processes/engine_server.py). A ``Work`` whose images are
not model-sized (a garments request), or for which no slot is free, crosses in its message.

Through the socket, reading three images in and writing one out made up most of what the
engine process spent per request: 0.42-0.48 ms against 0.12-0.14 with the slots, in full
batches (bench/engine_process.py); the message is now a header of a few dozen bytes.
"""
from __future__ import annotations

import mmap
import os
import tempfile

import torch

_IMAGES = 4  # pose, masked model, cloth, output


def _slot_bytes(image_hw: tuple[int, int]) -> int:
    return _IMAGES * image_hw[0] * image_hw[1] * 3


class Arena:
    def __init__(self, fd: int, image_hw: tuple[int, int]):
        """Maps the arena file ``fd`` (its size gives the number of slots) for images of ``image_hw``."""
        height, width = image_hw
        self.fd = fd
        self.image_shape = torch.Size((3, height, width))
        size = os.fstat(fd).st_size
        self.slots = size // _slot_bytes(image_hw)
        memory = (torch.frombuffer(mmap.mmap(fd, size), dtype=torch.uint8) if self.slots
                  else torch.empty(0, dtype=torch.uint8))
        images = memory[:self.slots * _slot_bytes(image_hw)].view(self.slots, _IMAGES, height, width, 3)
        self._views = [tuple(slot.permute(0, 3, 1, 2).unbind(0)) for slot in images]  # once, not per request
        # Taken from the end: the slot freed last goes first, so the pages in use stay the same few.
        self._free = list(range(self.slots))[::-1]

    @classmethod
    def create(cls, slots: int, image_hw: tuple[int, int]) -> Arena:
        """A new arena of ``slots`` slots; its pages take memory only once written."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("tryon-arena")
        else:  # an unlinked file: the same, where the system cannot make one in memory alone
            fd, path = tempfile.mkstemp(prefix="tryon-arena-")
            os.unlink(path)
        os.ftruncate(fd, slots * _slot_bytes(image_hw))
        return cls(fd, image_hw)

    @property
    def free(self) -> int:
        return len(self._free)

    def put(self, pose: torch.Tensor, masked_model: torch.Tensor, cloth: torch.Tensor) -> int | None:
        """The slot now holding these inputs; None when they are not model-sized or no slot is free."""
        if not self._free or any(t.shape != self.image_shape for t in (pose, masked_model, cloth)):
            return None
        slot = self._free.pop()
        for view, levels in zip(self._views[slot], (pose, masked_model, cloth)):
            view.copy_(levels)
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def inputs(self, slot: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pose, masked model, cloth) of ``slot``, in place."""
        return self._views[slot][:3]

    def output(self, slot: int) -> torch.Tensor:
        """Where the output of ``slot``'s try-on goes, in place."""
        return self._views[slot][3]
