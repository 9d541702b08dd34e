"""The heavy imports the tools defer (torch, TransformerLens, transformers, sae-lens, matplotlib, scipy; `lazy`),
done once per process by one background thread: it starts once the server has answered its first message (with
MCP_INTERP_WARMUP=0, only when a tool first needs it). Every tool but the light ones waits until it is done, so two
threads never import those packages at once: TransformerLens imports itself circularly, and two threads importing
it together fail with a _DeadlockError."""

from __future__ import annotations

import logging
import os
import threading
import time

import anyio
import anyio.to_thread

from .. import warm

ENV = "MCP_INTERP_WARMUP"
log = logging.getLogger("mcp_interp")


def eager() -> bool:
    """Start importing after the first answer (default), not only when a tool first needs it (MCP_INTERP_WARMUP=0)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class Importer:
    """The one thread that imports everything deferred (`mcp_interp.warm`). `done` is set once it has tried all."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start importing in the background, unless done or under way."""
        with self._lock:
            if self.done.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, name="mcp-interp-warm-up", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        t0 = time.perf_counter()
        failed = warm(self._stopping)
        if self._stopping.is_set():
            return  # a later start goes on from here
        if failed:  # the tool that needs it reports the failure when called
            log.warning("warm-up: %d imports failed; the first: %s", len(failed), failed[0])
        log.info("warm-up: heavy modules imported in %.1f s", time.perf_counter() - t0)
        self.done.set()

    async def ready(self) -> None:
        """Wait on the event loop, holding no thread, until the heavy modules are imported (starting that if needed)."""
        while not self.done.is_set():
            self.start()
            await anyio.sleep(0.05)

    async def stop(self) -> None:
        """Finish the import under way, then stop (the server exits): a thread still inside an extension module's
        import when the interpreter exits can abort the process."""
        self._stopping.set()
        if (thread := self._thread) is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join)


IMPORTER = Importer()  # imports are per process, however many servers it runs
