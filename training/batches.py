"""Delivering training batches to the device without starving it.

Image datasets stay in CPU memory in their stored form (uint8 frames, float16 spectrograms;
training/prepare.py), read once from the preprocessed cache: no decoding and no copy per epoch
beyond the batch itself. For a CUDA device each batch is gathered straight into page-locked
(pinned) memory and copied with `non_blocking=True` on a stream of its own, so the copy runs on
the DMA engine while the GPU still computes the previous step (the compute stream waits for the
copy's event only where the step that reads the batch begins), and the next batch is gathered
meanwhile. This overlap needs a loop that does not wait for the GPU at each step (the training
step reads nothing back from the device: training/train.py). Two sets of pinned buffers
alternate; before one is refilled, the copy that read it is waited for (a CUDA event), so a batch
can never be overwritten while in flight. The images are standardised on the device
(training/encoders.py: Standardise), where float32 is made.

On the CPU, and for tensors already on the device (feature vectors), a batch is the rows
gathered in place (the same values, bit for bit, as indexing them); the row indices reach a GPU
through pinned memory too (`device_index`).
"""

from __future__ import annotations

import torch


def device_index(rows, device: torch.device) -> torch.Tensor:
    """Row indices drawn on the host, on `device`. To a GPU through pinned memory, without
    blocking: a copy from ordinary (pageable) memory would wait for the GPU's queue to drain."""
    index = torch.as_tensor(rows)
    if device.type != "cuda":
        return index.to(device)
    return index.pin_memory().to(device, non_blocking=True)


class BatchGatherer:
    """`gatherer(index)` → the rows `index` of each tensor, on `device`."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], device: torch.device, max_rows: int):
        self.tensors, self.device = tensors, device
        self.pinned = device.type == "cuda" and any(t.device.type == "cpu" for t in tensors)
        self._buffers: list[list[torch.Tensor]] = []
        self._events: list[torch.cuda.Event | None] = []
        self._turn = 0
        if self.pinned:
            # Copies run on a stream of their own: queued on the compute stream, a batch's copy
            # would wait for the previous step's kernels, and never overlap them.
            self._copy_stream = torch.cuda.Stream(device)
            for _ in range(2):
                self._buffers.append([torch.empty((max_rows, *t.shape[1:]), dtype=t.dtype, pin_memory=True)
                                      if t.device.type == "cpu" else None for t in tensors])
                self._events.append(None)

    def __call__(self, rows) -> tuple[torch.Tensor, ...]:
        if not self.pinned:
            # index_select, not t[index]: the same rows, but advanced indexing took 6× as long on
            # image batches on the CPU (17,700 vs 102,000 segments/s of 112² frames, one thread).
            index = device_index(rows, self.tensors[0].device)
            return tuple(torch.index_select(t, 0, index).to(self.device, non_blocking=True) for t in self.tensors)
        turn, self._turn = self._turn, 1 - self._turn
        if self._events[turn] is not None:
            self._events[turn].synchronize()  # the copy that last read these buffers is done
        index = torch.as_tensor(rows)
        n = len(index)
        compute = torch.cuda.current_stream(self.device)
        batch = []
        for i, (tensor, buffer) in enumerate(zip(self.tensors, self._buffers[turn])):
            if buffer is None:  # already on the device
                batch.append(torch.index_select(tensor, 0, device_index(index, tensor.device)))
                continue
            if n > len(buffer):  # a stratified batch may exceed the nominal size
                buffer = torch.empty((n, *tensor.shape[1:]), dtype=tensor.dtype, pin_memory=True)
                self._buffers[turn][i] = buffer
            torch.index_select(tensor, 0, index, out=buffer[:n])
            with torch.cuda.stream(self._copy_stream):
                copied = buffer[:n].to(self.device, non_blocking=True)
            # Made on the copy stream, used on the compute stream: the allocator must not hand its
            # memory out again before the compute stream is done with it.
            copied.record_stream(compute)
            batch.append(copied)
        event = torch.cuda.Event()
        event.record(self._copy_stream)
        self._events[turn] = event
        compute.wait_event(event)  # the step that uses this batch starts once its copy is done
        return tuple(batch)
