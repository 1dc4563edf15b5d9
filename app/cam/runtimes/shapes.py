"""Which batch shapes a runtime takes at no extra cost, and padding a tail batch to one of them.

A batch loop ends with a tail smaller than its full batches, and a service's batches vary with
the requests that share them. What a new size costs depends on the runtime:

* ``ANY_SIZE``: nothing. Eager torch on a CPU runs any size; OpenVINO runs a tail on its dynamic
  model (its static one is compiled for the full size only). Padding would be wasted work.
* ``SIZE_BUCKETS``: eager torch on CUDA while ``torch.backends.cudnn.benchmark`` is on times
  every convolution's algorithms again for each new input shape (a pause of its own per shape). A
  tail is padded to the next power of two (at most the full size): a handful of shapes are timed
  once, and the padding never doubles a tail's work.
* ``STATIC_SIZE``: a runtime that compiled one batch shape (CUDA graphs, ``torch.compile`` without
  dynamic shapes) would capture or compile again for every other size: a tail is padded to the
  full size.

Padding rows are zeros and their outputs are dropped: in eval mode every row's logits depend on
that row only, so a map does not depend on how its batches were cut or padded.
"""

from __future__ import annotations

from typing import Literal

import torch

BatchShapes = Literal["any", "buckets", "static"]
ANY_SIZE: BatchShapes = "any"
SIZE_BUCKETS: BatchShapes = "buckets"
STATIC_SIZE: BatchShapes = "static"


def padded_rows(rows: int, full: int, shapes: BatchShapes) -> int:
    """How many rows a forward of ``rows`` inputs runs, with full batches of ``full``."""
    if rows >= full or shapes == ANY_SIZE:
        return rows
    if shapes == STATIC_SIZE:
        return full
    return min(full, 1 << (rows - 1).bit_length())


def pad_rows(batch: torch.Tensor, rows: int) -> torch.Tensor:
    """``batch`` followed by zero rows up to ``rows``, in the batch's memory layout."""
    if rows <= batch.shape[0]:
        return batch
    channels_last = batch.dim() == 4 and batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    layout = torch.channels_last if channels_last else torch.contiguous_format
    padded = torch.empty((rows, *batch.shape[1:]), dtype=batch.dtype, device=batch.device, memory_format=layout)
    padded[: batch.shape[0]] = batch
    padded[batch.shape[0] :] = 0
    return padded
