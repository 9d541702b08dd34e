"""Will it fit? The disk and memory rules applied before a model (or an SAE) is downloaded or loaded."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

DISK_MARGIN = 256 << 20  # keep this much disk free after a download
# Memory a loaded model needs beyond its weights (activation caches, rotary tables, the unembedding's float32
# copy in half precision): a fraction of the weights plus a constant.
ACTIVATION_MARGIN = (0.1, 256 << 20)


def free_disk(path: Path) -> int:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def check_disk(what: str, need: int, folder: Path) -> None:
    """Refuse a download of `need` bytes into `folder` that would leave less than DISK_MARGIN free."""
    if not need:
        return
    free = free_disk(folder)
    if need + DISK_MARGIN > free:
        raise ModelLoadError(
            f"{what}: downloading it takes {need / 2**30:.2f} GiB but {folder} has {free / 2**30:.2f} "
            f"GiB free (keeping {DISK_MARGIN >> 20} MiB spare). Fix: free disk space, or point HF_HUB_CACHE at a "
            f"larger disk and restart the server.")


def weight_dtype_bytes(config: dict[str, Any]) -> int:
    """Bytes per stored parameter, from config.json's dtype (float32 when it says nothing)."""
    name = str(config.get("torch_dtype") or config.get("dtype") or "float32").removeprefix("torch.")
    return 2 if name in ("bfloat16", "float16", "half") else 1 if name in ("int8", "uint8") else 4


def memory_needed(n_params: int, element_bytes: int) -> int:
    """A loaded model's resident bytes: its parameters at the dtype, plus the activation margin."""
    frac, const = ACTIVATION_MARGIN
    return int(n_params * element_bytes * (1 + frac) + const)


def check_fits(model_id: str, n_params: int, dtype: str, n_devices: int, budget: int, pinned: int, device: str,
               gpus: int, cuda_available: bool) -> None:
    """ModelLoadError, naming what would fit, when `n_params` in `dtype` (float32, bfloat16, float16; plus the margin)
    exceed what a pool with `budget` bytes per device can free (`pinned`: bytes of models jobs hold)."""
    elem = 4 if dtype == "float32" else 2
    room = budget * max(n_devices, 1) - pinned
    need = memory_needed(n_params, elem)
    if need <= room:
        return
    fits = []
    if elem > 2 and memory_needed(n_params, 2) <= room:
        fits.append("dtype='bfloat16'" + ("" if device.startswith("cuda") else " (slow on CPU)"))
    for k in range(max(n_devices, 1) + 1, gpus + 1):
        if need <= budget * k - pinned:
            fits.append(f"n_devices={k}")
            break
    if not device.startswith("cuda") and cuda_available:
        fits.append("a CUDA device (start the server with --device cuda)")
    raise ModelLoadError(
        f"{model_id} needs about {need / 2**30:.2f} GiB in {dtype} ({n_params / 1e9:.2f} B parameters plus "
        f"activations) but the pool's budget leaves {room / 2**30:.2f} GiB on {device}"
        + (f" ({pinned / 2**30:.2f} GiB held by models in use)" if pinned else "") + ". Nothing was downloaded. "
        + (f"Fix: load it with {' or '.join(fits)}." if fits else
           "Fix: use a machine with more memory, or raise the budget (serve --memory-budget-mb)."))
