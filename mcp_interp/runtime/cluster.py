"""Heavy jobs on a Ray cluster (docs/architecture.md §3, "On a cluster"): the server stays the control plane.

The MCP server keeps the tools, validation, the job table, progress, cancellation and the index; a job's work
function runs on a Ray actor instead of a local thread. One named, detached actor per (model, dtype, device split,
store) holds that model resident (`runtime/ray_worker.py`): jobs on one model queue on its actor, different models
run on different workers at once. Actors are found again by name after a server restart, evicted least-recently-used
when a new one cannot be placed, and recreated when one died (its jobs fail with the reason).

The server thread that runs a job only waits here: it polls the actor for progress events, forwards a cancellation,
and records the run the worker wrote in the server's own index. Ray is imported on first use.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import ArtifactStore

log = logging.getLogger(__name__)

NAMESPACE = "mcp-interp"  # detached actors are found again by name only inside one namespace
ACTOR_PREFIX = "mcp-interp-worker"
# what a worker needs from the server's environment: the hub (HF_ENDPOINT, tokens, cache), object-store credentials
# and endpoint (AWS_*, GOOGLE_*), our own settings (MCP_INTERP_*)
FORWARDED_ENV = ("HF_", "HUGGINGFACE_", "AWS_", "GOOGLE_", "MCP_INTERP_")
RAY_HINT = ("start one with `ray start --head` (and `ray start --address=HEAD:6379` on each worker machine), or use "
            "--ray local for a cluster inside this process")


class ClusterError(RuntimeError):
    """The cluster cannot be reached or used; the message names the setting and the fix."""


class WorkerDied(RuntimeError):
    """The actor running a job died (killed, out of memory, its node lost)."""


def remote_error(names: list[str], message: str) -> Exception:
    """The exception a job raises for a worker's failure: `Cancelled` for a cancellation, otherwise one whose class
    name is the worker exception's, so the job table records the same error type (and a refusal reads as one)."""
    if "Cancelled" in names:
        from ..methods.core import Cancelled  # torch: imported when a job ends, not when the CLI checks an address

        return Cancelled(message)
    cls = type(names[0] if names else "RemoteError", (RuntimeError,), {})
    return cls(message)


def _probe(host: str, port: int, what: str) -> None:
    """Refuse an address nothing listens on now: ray.init would retry for minutes."""
    try:
        with socket.create_connection((host, port), timeout=3.0):
            return
    except OSError as e:
        raise ClusterError(f"--ray {what}: nothing answers at {host}:{port} ({e.strerror or e}). "
                           f"Fix: {RAY_HINT}") from None


def _host_port(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", str(default_port))
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise ClusterError(f"--ray {text}: not HOST:PORT. Fix: give e.g. 10.0.0.5:6379, ray://10.0.0.5:10001, "
                           f"auto or local") from None


def resolve_address(address: str) -> str | None:
    """The address ray.init gets (None: start a local cluster), after checking something listens there."""
    address = address.strip()
    if address == "local":
        return None
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS")
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if not found and current.is_file():
            found = current.read_text().strip()
        if not found:
            raise ClusterError(f"--ray auto: no running Ray cluster on this machine (no RAY_ADDRESS, no {current}). "
                               f"Fix: {RAY_HINT}")
        address = found
    if address.startswith("ray://"):
        _probe(*_host_port(address.removeprefix("ray://"), 10001), address)
    else:
        _probe(*_host_port(address, 6379), address)
    return address


def connect(address: str, namespace: str = NAMESPACE) -> bool:
    """Join (or start, for "local") the cluster as a driver in our namespace. True if this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    target = resolve_address(address)
    kwargs: dict[str, Any] = {"namespace": namespace, "logging_level": logging.WARNING, "log_to_driver": False}
    if target is None:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=target, **kwargs)
    except Exception as e:  # a version mismatch, a refused client connection ...
        raise ClusterError(f"--ray {address}: could not join the Ray cluster ({type(e).__name__}: {e}). "
                           f"Fix: {RAY_HINT}; the cluster must run the same Ray and Python versions") from e
    return True


@dataclass(frozen=True)
class Placement:
    """What a model's actor asks Ray for."""

    num_cpus: float
    num_gpus: int
    memory: int  # bytes (0: unknown, not requested)

    def fits(self, resources: dict[str, float]) -> bool:
        return (resources.get("CPU", 0.0) >= self.num_cpus and resources.get("GPU", 0.0) >= self.num_gpus
                and resources.get("memory", 0.0) >= self.memory)


@dataclass
class Slot:
    """One worker actor as this server knows it."""

    name: str
    model: str
    handle: Any
    placement: Placement | None = None  # None: adopted from an earlier server
    busy: int = 0
    last_used: float = field(default_factory=time.monotonic)


class RayCluster:
    """The server's view of the cluster: `run(model, settings, fn, job, tasks)` runs `fn(worker_app, job_context)` on
    the model's actor and returns what it returns; `workers()` lists the actors of this store."""

    def __init__(self, address: str, store: ArtifactStore, *, memory_budget_mb: float | None = None,
                 model_roots: list[str] | None = None, cpus_per_worker: float = 1.0, poll: float = 0.2,
                 namespace: str = NAMESPACE):
        self.address, self.store, self.namespace = address, store, namespace
        self.memory_budget_mb, self.model_roots = memory_budget_mb, model_roots
        self.cpus_per_worker, self.poll = cpus_per_worker, poll
        self.started = connect(address, namespace)
        self.store_location = store.location
        self.store_key = hashlib.sha256(store.location.encode()).hexdigest()[:8]
        self._slots: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._adopt_running_actors()

    # -- actors ---------------------------------------------------------------------------------
    def actor_name(self, model: str, settings: dict) -> str:
        return f"{ACTOR_PREFIX}:{self.store_key}:{model}:{settings['dtype']}:{settings['n_devices']}"

    def _adopt_running_actors(self) -> None:
        """Actors a previous server on this store left running: known (idle) from the start, so eviction sees them."""
        from ray.util import list_named_actors

        for entry in list_named_actors(all_namespaces=True):
            name = entry.get("name", "")
            if entry.get("namespace") == self.namespace and name.startswith(f"{ACTOR_PREFIX}:{self.store_key}:"):
                handle = self._lookup(name)
                if handle is not None:
                    model = name.split(":", 3)[3].rsplit(":", 2)[0]
                    self._slots[name] = Slot(name, model, handle, last_used=0.0)

    def _lookup(self, name: str):
        import ray

        try:
            return ray.get_actor(name, namespace=self.namespace)
        except ValueError:  # no such actor (never created, or it died and released its name)
            return None

    def placement(self, model: str, settings: dict, estimate_bytes: int) -> Placement:
        import ray

        gpus_in_cluster = ray.cluster_resources().get("GPU", 0.0)
        n_gpus = int(settings["n_devices"]) if gpus_in_cluster else 0
        return Placement(num_cpus=self.cpus_per_worker, num_gpus=n_gpus, memory=int(estimate_bytes * 1.2))

    def check_fits(self, model: str, settings: dict, placement: Placement) -> None:
        """Refuse, before any work, a model no node of the cluster could ever hold."""
        import ray

        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(placement.fits(r) for r in nodes):
            return
        from ..models.errors import ModelLoadError

        biggest = max(nodes, key=lambda r: (r.get("GPU", 0.0), r.get("memory", 0.0)), default={})
        need = (f"{placement.num_gpus} GPU(s), " if placement.num_gpus else "") + \
            f"{placement.num_cpus:g} CPU(s) and {placement.memory / 2**30:.1f} GiB"
        have = (f"{biggest['GPU']:g} GPU(s), " if biggest.get("GPU") else "") + \
            f"{biggest.get('CPU', 0.0):g} CPU(s) and {biggest.get('memory', 0.0) / 2**30:.1f} GiB"
        raise ModelLoadError(f"{model} needs a worker with {need}, but the largest node of the Ray cluster has {have}. "
                             f"Fix: add a larger node, load the model in a smaller dtype or over fewer devices "
                             f"(load_model), or use a smaller model")

    def _create(self, name: str, model: str, settings: dict, placement: Placement):
        from .ray_worker import ModelWorker

        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
        options: dict[str, Any] = dict(name=name, namespace=self.namespace, lifetime="detached", get_if_exists=True,
                                       num_cpus=placement.num_cpus, max_restarts=0,
                                       runtime_env={"env_vars": env} if env else None)
        if placement.memory:
            options["memory"] = placement.memory
        if placement.num_gpus > 1:  # one model split over several GPUs: they must be on one node
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            pg = placement_group([{"GPU": placement.num_gpus, "CPU": placement.num_cpus}], strategy="STRICT_PACK")
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=pg)
            options["num_gpus"] = placement.num_gpus
        elif placement.num_gpus:
            options["num_gpus"] = placement.num_gpus
        config = {"store": self.store_location, "storage_options": self.store.storage_options,
                  "memory_budget_mb": self.memory_budget_mb, "model_roots": self.model_roots, "model": model,
                  "settings": settings, "name": name}
        return ModelWorker.options(**options).remote(config)

    def worker(self, model: str, settings: dict, estimate_bytes: int = 0) -> Slot:
        """The model's actor (found by name, or created), marked busy; the caller releases it."""
        name = self.actor_name(model, settings)
        with self._lock:
            slot = self._slots.get(name)
            if slot is None:
                handle = self._lookup(name)
                if handle is None:
                    placement = self.placement(model, settings, estimate_bytes)
                    self.check_fits(model, settings, placement)
                    self._evict_for(placement, keep=name)
                    handle = self._create(name, model, settings, placement)
                    slot = Slot(name, model, handle, placement)
                else:
                    slot = Slot(name, model, handle)
                self._slots[name] = slot
            slot.busy += 1
            slot.last_used = time.monotonic()
            return slot

    def _evict_for(self, placement: Placement, keep: str) -> None:
        """Kill least-recently-used idle actors of this store until the new one can be placed (caller holds the
        lock). Ray places an actor only where its CPUs / GPUs / memory are free, so without this a new model would
        wait behind idle ones forever."""
        import ray

        for slot in sorted(self._slots.values(), key=lambda s: s.last_used):
            if placement.fits(ray.available_resources()):
                return
            if slot.busy or slot.name == keep:
                continue
            log.info("evicting Ray worker %s (least recently used) to place another model", slot.name)
            ray.kill(slot.handle)
            del self._slots[slot.name]
            deadline = time.monotonic() + 2.0  # resources come back asynchronously
            while time.monotonic() < deadline and not placement.fits(ray.available_resources()):
                time.sleep(0.05)

    def _release(self, slot: Slot, dead: bool = False) -> None:
        with self._lock:
            slot.busy = max(0, slot.busy - 1)
            slot.last_used = time.monotonic()
            if dead and self._slots.get(slot.name) is slot:
                del self._slots[slot.name]

    # -- running a job --------------------------------------------------------------------------
    def run(self, model: str, settings: dict, fn: Callable, job, tasks: dict | None = None,
            estimate_bytes: int = 0) -> dict:
        """Run `fn(worker_app, worker_job_context)` on `model`'s actor for server job `job` (a JobContext), relaying
        progress and cancellation; the run the worker stored is recorded in this server's index."""
        import ray
        from ray.exceptions import RayActorError

        slot = self.worker(model, settings, estimate_bytes)
        dead = False
        try:
            job.progress(0.0, f"queued on the Ray worker for {model}")
            ref = slot.handle.run.remote(job.job_id, fn, tasks or {})
            seen, cancel_sent, asked, started = 0, False, None, False
            while True:
                ready, _ = ray.wait([ref], timeout=self.poll)
                if job.cancelled and not cancel_sent:
                    slot.handle.cancel.remote(job.job_id)
                    cancel_sent = True
                asked = asked or slot.handle.events.remote(job.job_id, seen)  # one question in flight at a time
                answered, _ = ray.wait([asked], timeout=0 if ready else self.poll)
                if answered:
                    events, asked, started = ray.get(asked), None, True
                    for fraction, message in events:
                        job.progress(fraction, message)
                    seen += len(events)
                elif not started and slot.placement is not None:
                    with self._lock:  # the actor is not placed yet: idle actors may hold what it needs
                        self._evict_for(slot.placement, keep=slot.name)
                if ready:
                    break
            reply = ray.get(ref)
        except RayActorError as e:
            dead = True
            raise WorkerDied(f"the Ray worker {slot.name} holding {model} died while running this job "
                             f"({_death_reason(e)}); what it was computing is lost and nothing it wrote is served "
                             f"as a finished run. Fix: call the tool again: the next request starts a new worker") \
                from None
        finally:
            self._release(slot, dead)
        if reply.get("run"):
            self.store.adopt_run(reply["run"])
        if not reply.get("ok"):
            raise remote_error(reply.get("error_types") or [], reply.get("error") or "failed on the Ray worker")
        return reply["result"]

    # -- views ----------------------------------------------------------------------------------
    def workers(self) -> list[dict]:
        """The actors of this store: name, model, busy, and what each reports of itself (host, node, pid)."""
        import ray

        with self._lock:
            slots = list(self._slots.values())
        out = []
        for s in slots:
            row = {"name": s.name, "model": s.model, "busy": s.busy}
            try:
                row.update(ray.get(s.handle.info.remote(), timeout=5))
            except Exception as e:  # dead or unreachable: say so
                row["error"] = f"{type(e).__name__}: {e}"
            out.append(row)
        return out

    def close(self) -> None:
        """Leave the cluster (the detached actors stay resident for the next server); a local cluster ends."""
        import ray

        if self.started and ray.is_initialized():  # a driver that joined Ray itself (Lab in a script) stays joined
            ray.shutdown()


def _death_reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    reason = next((line.strip() for line in text if "died" in line.lower() or "killed" in line.lower()), None)
    return (reason or (text[0] if text else type(e).__name__))[:300]
