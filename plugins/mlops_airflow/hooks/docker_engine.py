"""Hook for the Docker engine that runs trainer containers: the provider's DockerHook plus what a
trainer run needs from the engine, in one place: pre-flight checks (engine reachable, image
pinned and present, GPU visible), then one container run with hard limits, credentials handed
over as a file (never in the container's environment, so ``docker inspect`` shows none), the
log streamed line by line, a timeout, the result file read back, and the container removed."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from airflow.providers.docker.hooks.docker import DockerHook

from include.mlops_core.errors import TrainerError
from include.mlops_core.trainer import SECRETS_FILE

# nvidia-smi is mounted into the container by the NVIDIA container toolkit for a GPU request.
GPU_PROBE_COMMAND = ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                     "--format=csv,noheader"]
WORK_DIR = "/work"  # the trainer's work directory in the image (owned by its user)
RESULT_PATH = f"{WORK_DIR}/result.json"


def gpu_device_requests(gpus: int | str) -> list[Any]:
    """The engine's device request for ``gpus`` (a count or ``"all"``), as ``docker run --gpus``
    sends it: the NVIDIA driver picks the devices by the ``gpu`` capability."""
    from docker.types import DeviceRequest

    count = -1 if gpus == "all" else int(gpus)
    return [DeviceRequest(count=count, capabilities=[["gpu"]])]


def image_digests(inspect: dict[str, Any]) -> set[str]:
    """What identifies an image: its id (the config digest, also for images never pushed) and
    the registry digests it was pulled or pushed by."""
    found = {inspect.get("Id", "")}
    found.update(ref.rpartition("@")[2] for ref in inspect.get("RepoDigests") or [])
    return {digest for digest in found if digest}


def secrets_archive(secrets: dict[str, str], user: str | None) -> bytes:
    """A tar holding ``secrets.json`` (mode 0400, owned by the image's numeric user) for the
    engine's archive API: it lands in the container's filesystem, not in its configuration."""
    payload = json.dumps(secrets).encode()
    uid, _, gid = (user or "").partition(":")
    info = tarfile.TarInfo(SECRETS_FILE)
    info.size, info.mode, info.mtime = len(payload), 0o400, int(time.time())
    if uid.isdigit():
        info.uid = info.gid = int(uid)
        if gid.isdigit():
            info.gid = int(gid)
    else:
        info.mode = 0o444  # a named user we cannot map: readable, still deleted on start
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        archive.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


@dataclass
class TrainerSpec:
    """One trainer container: what runs (an image id), with what, and within which limits."""

    image: str
    name: str
    environment: dict[str, str]
    labels: dict[str, str]
    network_mode: str
    memory_limit: str
    nano_cpus: int
    timeout_seconds: float
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    user: str | None = None  # the image's user (uid:gid), owner of the secrets file
    device_requests: list[Any] | None = None


@dataclass
class TrainerRun:
    """How a trainer container ended: its final state, its parsed result file ({} when it
    wrote none), and whether it was stopped at its timeout."""

    container_id: str
    state: dict[str, Any]
    result: dict[str, Any]
    timed_out: bool


class TrainerEngineHook(DockerHook):
    """A Docker engine (local socket, TCP or TLS, as the provider's DockerHook) that runs
    trainer containers. Pre-flight checks raise :class:`include.mlops_core.errors.TrainerError` with
    what to do.

    :param docker_conn_id: registry login connection (optional), as DockerHook
    :param base_url: engine URL, as DockerHook
    """

    hook_name = "MLOps trainer Docker engine"

    def __init__(self, *, base_url: str | list[str], **kwargs: Any) -> None:
        super().__init__(base_url=base_url, **kwargs)
        self.engine_url = base_url if isinstance(base_url, str) else ", ".join(base_url)

    # -- pre-flight ------------------------------------------------------------------------------
    def check_engine(self) -> dict[str, Any]:
        """``docker version`` of the engine, or a retryable TrainerError when it is down."""
        try:
            return self.api_client.version()
        except Exception as err:  # noqa: BLE001 - AirflowException, DockerException, OSError
            raise TrainerError(
                "engine",
                f"Docker engine at {self.engine_url} is not reachable ({err}). Start it "
                "(systemctl start docker, or dockerd) or point DOCKER_HOST / the operator's "
                "docker_url at a running engine") from err

    def resolve_image(self, reference: str, *, digests: list[str], pull: str) -> dict[str, Any]:
        """The ``docker image inspect`` of ``reference`` once it is known to be one of the
        pinned ``digests``. Only a digest reference (``repo@sha256:…``) is ever pulled, and only
        when ``pull`` is ``missing``: a tag can be moved, a digest cannot."""
        from docker.errors import APIError, ImageNotFound

        how = ("build it on this engine with `python scripts/build_images.py` and set "
               "MLOPS_TRAINER_IMAGE (or trainer_image in the policy file) to the sha256 id it "
               "prints, or pin a registry image by digest")
        client = self.api_client
        try:
            found = client.inspect_image(reference)
        except ImageNotFound:
            pullable = "@sha256:" in reference and pull == "missing"
            if not pullable:
                why = ("trainer_pull is 'never'" if "@sha256:" in reference else
                       "only an image pinned by registry digest (repo@sha256:…) is pulled")
                raise TrainerError("image", f"trainer image {reference!r} is not on the Docker "
                                            f"engine at {self.engine_url} and is not pulled "
                                            f"({why}): {how}") from None
            self.log.info("Trainer image %s is not on the engine; pulling it", reference)
            try:
                for _ in client.pull(reference, stream=True, decode=True):
                    pass
                found = client.inspect_image(reference)
            except (APIError, ImageNotFound) as err:
                reason = getattr(err, "explanation", None) or str(err)
                raise TrainerError("image", f"trainer image {reference!r} is not on the Docker "
                                            f"engine at {self.engine_url} and could not be "
                                            f"pulled ({reason}): {how}") from err
        have = image_digests(found)
        if not digests or not have & set(digests):
            pinned = ", ".join(d[:19] + "…" for d in digests) or "none"
            raise TrainerError(
                "image_not_pinned",
                f"trainer image {reference!r} (id {found.get('Id', '?')[:19]}…) is not one the "
                f"deployment pinned (digests: {pinned}): the operator runs only a pinned image. "
                "Set MLOPS_TRAINER_IMAGE to the image's sha256 id, or list its digest in "
                "trainer_image_digests of the policy file",
                runbook="refused-by-policy.md#a-trainer-image-that-is-not-pinned")
        return found

    def probe_gpus(self, image: str, device_requests: list[Any]) -> tuple[bool, str]:
        """Start ``nvidia-smi`` in a throwaway container of ``image`` with ``device_requests``:
        ``(True, its GPU list)`` when the engine gives the container a GPU, else
        ``(False, why)``. About a second; only runs when a task asks for GPUs."""
        from docker.errors import APIError

        client = self.api_client
        container = client.create_container(
            image=image, entrypoint=GPU_PROBE_COMMAND, labels={"mlops.role": "gpu-probe"},
            host_config=client.create_host_config(device_requests=device_requests))
        try:
            try:
                client.start(container["Id"])
            except APIError as err:  # no NVIDIA runtime: "could not select device driver"
                return False, getattr(err, "explanation", None) or str(err)
            status = client.wait(container["Id"], timeout=60)
            output = client.logs(container["Id"]).decode(errors="replace").strip()
            if status.get("StatusCode") != 0 or not output:
                return False, f"nvidia-smi in the container exited {status.get('StatusCode')}: " \
                              f"{output[-500:] or 'no output'}"
            return True, output
        finally:
            client.remove_container(container["Id"], force=True)

    def remove_leftovers(self, *, labels: list[str], name: str) -> list[str]:
        """Remove containers with all of ``labels`` or named ``name`` (left by an earlier try
        whose worker died, maybe holding a GPU); returns their names."""
        import re

        client = self.api_client
        found = {c["Id"]: c["Names"] for c in client.containers(all=True,
                                                                filters={"label": labels})}
        found.update({c["Id"]: c["Names"] for c in client.containers(
            all=True, filters={"name": f"^/{re.escape(name)}$"})})
        for container_id in found:
            client.remove_container(container_id, force=True)
        return [n.lstrip("/") for names in found.values() for n in names]

    # -- the run ---------------------------------------------------------------------------------
    def run_trainer(self, spec: TrainerSpec, *, on_log: Callable[[str], None],
                    on_created: Callable[[str], None] | None = None) -> TrainerRun:
        """Create, hand over the secrets file, start, stream the log to ``on_log``, wait up to
        ``spec.timeout_seconds`` (then stop it), read the result file, remove the container.

        An engine refusal (``APIError`` at create or start, e.g. no NVIDIA runtime) propagates.
        """
        from docker.errors import APIError  # noqa: F401 - documented: propagates to the caller

        client = self.api_client
        host_config = client.create_host_config(
            mem_limit=spec.memory_limit, memswap_limit=spec.memory_limit,  # no swap: a hard cap
            nano_cpus=spec.nano_cpus, network_mode=spec.network_mode,
            device_requests=spec.device_requests,
            init=True)  # the trainer is not PID 1: a stop ends it at once, not after 10 s
        container_id = client.create_container(
            image=spec.image, name=spec.name, environment=spec.environment, labels=spec.labels,
            host_config=host_config)["Id"]
        if on_created is not None:
            on_created(container_id)
        try:
            if spec.secrets:
                client.put_archive(container_id, WORK_DIR,
                                   secrets_archive(spec.secrets, spec.user))
            client.start(container_id)
            streamer = threading.Thread(target=self._stream_log, args=(container_id, on_log),
                                        name="trainer-log", daemon=True)
            streamer.start()
            timed_out = False
            try:
                client.wait(container_id, timeout=spec.timeout_seconds)
            except Exception as err:  # noqa: BLE001 - requests' ReadTimeout / ConnectionError
                if "timed out" not in str(err).lower() and "timeout" not in type(err).__name__.lower():
                    raise
                timed_out = True
                self.stop(container_id)
            streamer.join(timeout=30)
            state = client.inspect_container(container_id)["State"]
            return TrainerRun(container_id, state, self.read_result(container_id), timed_out)
        finally:
            self.remove(container_id)

    def _stream_log(self, container_id: str, on_log: Callable[[str], None]) -> None:
        pending = b""
        try:
            for chunk in self.api_client.logs(container_id, stream=True, follow=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    on_log(line.decode(errors="replace").rstrip("\r"))
        except Exception as err:  # noqa: BLE001 - the container was removed under us (on_kill)
            on_log(f"(log stream ended: {err})")
        if pending:
            on_log(pending.decode(errors="replace"))

    def read_result(self, container_id: str) -> dict[str, Any]:
        """The container's parsed ``result.json`` ({} when there is none or it is unreadable)."""
        from docker.errors import NotFound

        try:
            chunks, _ = self.api_client.get_archive(container_id, RESULT_PATH)
        except NotFound:
            return {}
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            member = archive.extractfile(archive.getmembers()[0])
            try:
                return json.loads(member.read()) if member else {}
            except ValueError:
                return {}

    def stop(self, container_id: str) -> None:
        try:
            self.api_client.stop(container_id, timeout=10)
        except Exception as err:  # noqa: BLE001 - it may have exited or gone meanwhile
            self.log.warning("Could not stop container %s: %s", container_id[:12], err)

    def remove(self, container_id: str) -> None:
        try:
            self.api_client.remove_container(container_id, force=True)
        except Exception as err:  # noqa: BLE001 - already gone (on_kill) or engine down
            if "No such container" not in str(err):
                self.log.warning("Could not remove container %s: %s", container_id[:12], err)
