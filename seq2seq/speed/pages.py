"""A model's CPU tensors moved onto transparent huge pages (Linux).

Decoding one sentence reads every decoder weight once a token (about 154 MB for a
transformer-base model in fp32) from memory, by default in 4 KB pages: each new page costs a TLB
miss and the hardware prefetcher stops at its edge. On our 2-core AMD EPYC (a VM), plain sums
over a step's weights on huge pages ran 1.06-1.27x as fast as on 4 KB pages in 11 of 12 paired
A/Bs (0.95x in the other); decoding cells ran 1.03-1.14x as fast in two runs of
bench/cpu_pages.py and 0.91-0.98x in a third (docs/RESULTS.md).

to_huge_pages copies every parameter and buffer into one private anonymous mapping advised with
MADV_HUGEPAGE, which the kernel backs with huge pages when
/sys/kernel/mm/transparent_hugepage/enabled is "always" or "madvise" (the usual default); it does
nothing elsewhere. Tensors that shared storage (tied embeddings) still share it.
"""
from __future__ import annotations

import mmap

import torch
from torch import Tensor, nn

ALIGN = 64  # bytes: each storage starts on its own cache line


def available() -> bool:
    """Whether this platform can advise huge pages for anonymous memory (Linux)."""
    return hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_PRIVATE")


def to_huge_pages(module: nn.Module) -> nn.Module:
    """Move module's CPU parameters and buffers into one huge-page mapping, in place; returns
    module. The values, dtypes, shapes, strides and sharing are unchanged; parameters keep their
    requires_grad. Opaque tensors (oneDNN's packed weights) stay where they are. A no-op where
    available() is False or there is nothing on the CPU."""
    if not available():
        return module
    slots = [(owner, table, name, tensor) for owner in module.modules()
             for table in (owner._parameters, owner._buffers) for name, tensor in table.items()
             if tensor is not None and tensor.device.type == "cpu" and tensor.layout == torch.strided
             and not tensor.is_mkldnn]  # oneDNN's packed weights are opaque: they stay where they are
    offsets: dict[int, int] = {}  # storage address -> offset in the mapping
    storages, total = [], 0
    for *_, tensor in slots:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in offsets:
            offsets[storage.data_ptr()] = total
            storages.append((total, storage))
            total += -(-storage.nbytes() // ALIGN) * ALIGN
    if total == 0:
        return module
    # Private, not shared: the kernel backs only private anonymous memory with transparent huge pages.
    area = mmap.mmap(-1, total, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:  # before the first write: pages are chosen as they are first touched
        area.madvise(mmap.MADV_HUGEPAGE)
    except OSError:  # a kernel built without transparent huge pages: ordinary pages, same values
        pass
    arena = torch.frombuffer(area, dtype=torch.uint8)  # keeps the mapping alive
    for offset, storage in storages:
        arena[offset : offset + storage.nbytes()].copy_(torch.empty(0, dtype=torch.uint8).set_(storage))
    moved: dict[tuple, Tensor] = {}
    for owner, table, name, tensor in slots:
        offset = offsets[tensor.untyped_storage().data_ptr()]
        key = (offset, tensor.dtype, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()))
        if key not in moved:
            moved[key] = torch.empty(0, dtype=tensor.dtype).set_(
                arena.untyped_storage(), offset // tensor.element_size() + tensor.storage_offset(), tensor.shape,
                tensor.stride())
        new = moved[key]
        if isinstance(tensor, nn.Parameter):  # one Parameter per tied one, so ties stay identical objects
            new = moved.setdefault((*key, id(tensor)), nn.Parameter(new, requires_grad=tensor.requires_grad))
        table[name] = new
    return module
