"""Hook for the Docker engine that runs trainer containers: the provider's DockerHook plus the
checks made before a container starts (engine reachable, image present, GPU visible)."""

from __future__ import annotations

from typing import Any

from airflow.providers.docker.hooks.docker import DockerHook

from include.mlops.errors import TrainerError

# nvidia-smi is mounted into the container by the NVIDIA container toolkit for a GPU request.
GPU_PROBE_COMMAND = ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version",
                     "--format=csv,noheader"]


def gpu_device_requests(gpus: int | str) -> list[Any]:
    """The engine's device request for ``gpus`` (a count or ``"all"``), as ``docker run --gpus``
    sends it: the NVIDIA driver picks the devices by the ``gpu`` capability."""
    from docker.types import DeviceRequest

    count = -1 if gpus == "all" else int(gpus)
    return [DeviceRequest(count=count, capabilities=[["gpu"]])]


class TrainerEngineHook(DockerHook):
    """A Docker engine (local socket, TCP or TLS, as the provider's DockerHook) with pre-flight
    checks that raise :class:`include.mlops.errors.TrainerError` with what to do.

    :param docker_conn_id: registry login connection (optional), as DockerHook
    :param base_url: engine URL, as DockerHook
    """

    hook_name = "MLOps trainer Docker engine"

    def __init__(self, *, base_url: str | list[str], **kwargs: Any) -> None:
        super().__init__(base_url=base_url, **kwargs)
        self.engine_url = base_url if isinstance(base_url, str) else ", ".join(base_url)

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

    def ensure_image(self, image: str, *, pull: str) -> dict[str, Any]:
        """The image's ``docker image inspect``; pulls it first when missing and allowed."""
        from docker.errors import APIError, ImageNotFound

        client = self.api_client
        try:
            return client.inspect_image(image)
        except ImageNotFound:
            pass
        how = ("build it on this engine with `python scripts/build_images.py` (it prints the "
               "tag), or set container.image to an image in a registry the engine can pull from")
        if pull == "never":
            raise TrainerError("image", f"trainer image {image!r} is not on the Docker engine "
                                        f"at {self.engine_url} and container.pull is 'never': {how}")
        self.log.info("Trainer image %s is not on the engine; pulling it", image)
        try:
            for _ in client.pull(image, stream=True, decode=True):
                pass
            return client.inspect_image(image)
        except (APIError, ImageNotFound) as err:
            reason = getattr(err, "explanation", None) or str(err)
            raise TrainerError("image", f"trainer image {image!r} is not on the Docker engine at "
                                        f"{self.engine_url} and could not be pulled "
                                        f"({reason}): {how}") from err

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
