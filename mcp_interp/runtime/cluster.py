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
# what a worker needs from the server's environment: the hub (HF_ENDPOINT, tokens, offline flag), object-store
# credentials and endpoint (AWS_*, GOOGLE_*) and the store's fsspec options; never the HTTP token or server-only paths
FORWARDED_PREFIXES = ("HF_", "HUGGINGFACE_", "AWS_", "GOOGLE_")
FORWARDED_NAMES = ("MCP_INTERP_STORE_OPTIONS", "MCP_INTERP_ALLOW_PICKLE")
RAY_HINT = ("start one with `ray start --head` (and `ray start --address=HEAD:6379` on each worker machine), or use "
            "--ray local for a cluster inside this process")


class ClusterError(RuntimeError):
    """The cluster cannot be reached or used; the message names the setting and the fix."""


class WorkerDied(RuntimeError):
    """The actor running a job died (killed, out of memory, its node lost)."""


class _DiedBeforeStart(RuntimeError):
    """The actor was already dead when the job was sent to it: a new one may run it."""


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
        self._in_flight: dict[str, Any] = {}  # job id -> the actor running it (close() cancels them)
        self._cancel_sent: set[str] = set()
        if store.url is None:  # a directory: workers on other machines must see the same one (a shared path)
            from .ray_worker import STORE_MARK

            (store.root / STORE_MARK).write_text(self.store_key)
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
                    model = name.split(":", 2)[2].rsplit(":", 2)[0]
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

        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES) or k in FORWARDED_NAMES}
        options: dict[str, Any] = dict(name=name, namespace=self.namespace, lifetime="detached", get_if_exists=True,
                                       num_cpus=placement.num_cpus, max_restarts=0,
                                       runtime_env={"env_vars": env} if env else None)
        if placement.memory:
            options["memory"] = placement.memory
        if placement.num_gpus > 1:  # one model split over several GPUs: they must be on one node
            from ray.util.placement_group import placement_group
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            bundle = {"GPU": placement.num_gpus, "CPU": placement.num_cpus,
                      **({"memory": placement.memory} if placement.memory else {})}
            # detached and named like its actor: it outlives this server as the actor does, and goes with it
            pg = placement_group([bundle], strategy="STRICT_PACK", lifetime="detached", name=f"{name}:pg")
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=pg)
            options["num_gpus"] = placement.num_gpus
        elif placement.num_gpus:
            options["num_gpus"] = placement.num_gpus
        config = {"store": self.store_location, "storage_options": self.store.storage_options,
                  "memory_budget_mb": self.memory_budget_mb, "model_roots": self.model_roots, "model": model,
                  "settings": settings, "name": name, "store_key": self.store_key}
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
        """Stop idle actors, longest idle first, until the new one (`keep`) fits beside the others (caller holds the
        lock); actors of other stores count too (another server's, or one no server uses any more). Ray places an
        actor only where its CPUs / GPUs / memory are free, so without this a new model would wait behind idle ones
        forever. What the actors hold is counted from their names and placements, not read from Ray's live resource
        view, which lags behind actors just created or stopped. (Counted over the cluster, not per node: a model that
        fits the total but no single node's free part waits until a job's end lets the next request evict.)"""
        import ray

        total = ray.cluster_resources()
        held = self._held(exclude=keep)

        def room() -> bool:
            return all(held.get(k, 0.0) + need <= total.get(k, 0.0) + 1e-9
                       for k, need in (("CPU", placement.num_cpus), ("GPU", placement.num_gpus),
                                       ("memory", placement.memory)) if need)

        for name, handle in self._idle_actors(keep):
            if room():
                return
            log.info("evicting idle Ray worker %s to place %s", name, keep)
            self._kill(name, handle, held)

    def _idle_actors(self, keep: str, min_idle_s: float = 2.0) -> list[tuple[str, Any]]:
        """Worker actors of any store that run nothing, longest idle first (least recently used). One this server has
        a job on is busy; the others say themselves whether they run a job and for how long they have been idle (a
        call another server just queued is invisible, so an actor idle for less than `min_idle_s` is left alone)."""
        import ray
        from ray.util import list_named_actors

        found = []
        for entry in list_named_actors(all_namespaces=True):
            name = entry.get("name", "")
            if entry.get("namespace") != self.namespace or not name.startswith(f"{ACTOR_PREFIX}:") or name == keep:
                continue
            slot = self._slots.get(name)
            if slot is not None and slot.busy:
                continue
            handle = slot.handle if slot is not None else self._lookup(name)
            if handle is None:
                continue
            try:
                info = ray.get(handle.info.remote(), timeout=2)
            except Exception:  # still starting, or gone: not a candidate
                continue
            if not info.get("running") and info.get("idle_seconds", 0.0) >= min_idle_s:
                found.append((info["idle_seconds"], name, handle))
        return [(name, handle) for _, name, handle in sorted(found, key=lambda t: t[0], reverse=True)]

    def _actor_resources(self, name: str) -> dict[str, float]:
        """What the worker actor `name` holds: its placement if this server created it, else what one of its
        settings would be given (the device split is the name's last part)."""
        import ray

        slot = self._slots.get(name)
        if slot is not None and slot.placement is not None:
            p = slot.placement
        else:
            try:
                n = int(name.rsplit(":", 1)[1])
            except (IndexError, ValueError):
                n = 1
            p = Placement(self.cpus_per_worker, n if ray.cluster_resources().get("GPU") else 0, 0)
        return {"CPU": p.num_cpus, "GPU": p.num_gpus, "memory": p.memory}

    def _held(self, exclude: str) -> dict[str, float]:
        """CPUs, GPUs and memory held by every live worker actor (of any store) but `exclude`."""
        from ray.util import list_named_actors

        held: dict[str, float] = {}
        for entry in list_named_actors(all_namespaces=True):
            name = entry.get("name", "")
            if entry.get("namespace") == self.namespace and name.startswith(f"{ACTOR_PREFIX}:") and name != exclude:
                for k, v in self._actor_resources(name).items():
                    held[k] = held.get(k, 0.0) + v
        return held

    def _kill(self, name: str, handle, held: dict[str, float]) -> None:
        import ray

        for k, v in self._actor_resources(name).items():
            held[k] = held.get(k, 0.0) - v
        ray.kill(handle)
        self._slots.pop(name, None)
        try:  # a split model's GPUs are reserved by its placement group until that goes too
            from ray.util import get_placement_group, remove_placement_group

            remove_placement_group(get_placement_group(f"{name}:pg"))
        except Exception:  # none: a model on one device
            pass

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
        progress and cancellation; the run the worker stored is recorded in this server's index. An actor found dead
        before it started the job (it died while idle) is replaced once."""
        for attempt in (0, 1):
            slot = self.worker(model, settings, estimate_bytes)
            dead = False
            try:
                reply = self._run_on(slot, model, fn, job, tasks or {})
                break
            except _DiedBeforeStart:
                dead = True
                if attempt:
                    raise WorkerDied(f"the Ray worker for {model} died twice before starting this job. Fix: check "
                                     f"the worker nodes (`ray status`, their logs) and call the tool again") from None
                log.info("Ray worker %s was gone; starting a new one", slot.name)
            except WorkerDied:
                dead = True
                raise
            finally:
                self._release(slot, dead)
        if reply.get("run"):
            self.store.adopt_run(reply["run"])
        if not reply.get("ok"):
            if reply.get("traceback") and not {"Cancelled", "ToolError"} & set(reply.get("error_types") or []):
                log.warning("job %s failed on the Ray worker:\n%s", job.job_id, reply["traceback"])
            raise remote_error(reply.get("error_types") or [], reply.get("error") or "failed on the Ray worker")
        return reply["result"]

    def _run_on(self, slot: Slot, model: str, fn: Callable, job, tasks: dict) -> dict:
        """One job on one actor: its reply, or WorkerDied / _DiedBeforeStart / Cancelled."""
        import ray
        from ray.exceptions import RayActorError

        job.progress(0.0, f"queued on the Ray worker for {model}")
        ref = slot.handle.run.remote(job.job_id, fn, tasks)
        self._in_flight[job.job_id] = slot.handle
        seen, asked, started = 0, None, False
        waited_since = time.monotonic()
        try:
            while True:
                ready, _ = ray.wait([ref], timeout=self.poll)
                if job.cancelled and not ready:
                    self._cancel_on(slot, job, ref)
                asked = asked or slot.handle.events.remote(job.job_id, seen)  # one question in flight at a time
                answered, _ = ray.wait([asked], timeout=0 if ready else self.poll)
                if answered:
                    (seen, events), asked, started = ray.get(asked), None, True
                    for fraction, message in events:
                        job.progress(fraction, message)
                elif not started and slot.placement is not None and time.monotonic() - waited_since > 10.0:
                    with self._lock:  # not placed yet, perhaps: workers that were busy at its creation may be idle now
                        self._evict_for(slot.placement, keep=slot.name)
                    waited_since = time.monotonic()
                if ready:
                    return ray.get(ref)
        except RayActorError as e:
            if getattr(e, "actor_init_failed", False):
                raise WorkerDied(f"the Ray worker for {model} could not start: {_init_error(e)}. Fix: the store "
                                 f"({self.store_location}) must be reachable from every worker node (a shared "
                                 f"directory or an object-store URL whose credentials the workers have), and the "
                                 f"nodes must run this mcp-interp") from None
            if not started:
                raise _DiedBeforeStart() from None
            raise WorkerDied(f"the Ray worker {slot.name} holding {model} died while running this job "
                             f"({_death_reason(e)}); what it was computing is lost and nothing it wrote is served "
                             f"as a finished run. Fix: call the tool again: the next request starts a new worker") \
                from None
        finally:
            self._in_flight.pop(job.job_id, None)
            self._cancel_sent.discard(job.job_id)

    def _cancel_on(self, slot: Slot, job, ref) -> None:
        """Tell the actor; a job it has not started ends now (the actor skips it when its turn comes)."""
        import ray

        if job.job_id not in self._cancel_sent:
            slot.handle.cancel.remote(job.job_id)
            self._cancel_sent.add(job.job_id)
        try:
            running = ray.get(slot.handle.info.remote(), timeout=2).get("running", [])
        except Exception:  # not placed or not started yet: it has not started this job either
            running = []
        if job.job_id not in running and not ray.wait([ref], timeout=0)[0]:
            from ..methods.core import Cancelled

            raise Cancelled(f"job {job.job_id} was cancelled before its Ray worker started it")

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
        """Leave the cluster (the detached actors stay resident for the next server); a local cluster ends. Jobs still
        running on actors are cancelled there: nobody would collect them."""
        import ray

        for job_id, handle in list(self._in_flight.items()):
            try:
                handle.cancel.remote(job_id)
            except Exception:
                log.debug("could not cancel %s on its worker", job_id, exc_info=True)
        if self.started and ray.is_initialized():  # a driver that joined Ray itself (Lab in a script) stays joined
            ray.shutdown()


def _init_error(e: Exception) -> str:
    """The exception an actor's constructor raised, from Ray's message (its last lines)."""
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    return " ".join(lines[-3:])[:1200] or type(e).__name__


def _death_reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    reason = next((line.strip() for line in text if "died" in line.lower() or "killed" in line.lower()), None)
    return (reason or (text[0] if text else type(e).__name__))[:300]
