"""The train task: fit the model in the worker process or in the trainer container.

``TrainModelOperator`` is a subclass of the Docker provider's ``DockerOperator`` (the provider
creates, starts, attaches to and waits for the container) that adds what training on a shared
GPU host needs: pre-flight checks, GPU requests with a CPU fallback, hard limits, a timeout,
secrets only in ``private_environment``, the parsed result file as XCom (not the last log line)
and a classified failure with a runbook. See docs/gpu-training.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import threading
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.hooks.docker import DockerHook
from airflow.providers.docker.operators.docker import DockerOperator
from docker.errors import APIError

from mlops.hooks.docker_engine import TrainerEngineHook, gpu_device_requests
from mlops.operators.training import MlopsStageOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from include.mlops.config import ContainerConfig
    from include.mlops.pipeline import Stage

TRAINERS = ("inprocess", "docker")
RESULT_PATH = "/work/result.json"


class _HardLimits:
    """The provider's API client with hard CPU and memory limits added to every host config:
    DockerOperator's ``cpus`` is only a relative share, and with swap the memory limit would not
    stop a runaway fit."""

    def __init__(self, client: Any, limits: dict[str, Any]) -> None:
        self._client = client
        self._limits = limits

    def create_host_config(self, **kwargs: Any) -> Any:
        return self._client.create_host_config(**kwargs, **self._limits)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


class TrainModelOperator(MlopsStageOperator, DockerOperator):
    """Fit features + model and log it to the DAG run's MLflow run, in-process or in a container.

    ``trainer=docker`` runs :mod:`include.mlops.trainer` (the same training code) in the
    trainer image. Before it starts: the engine must answer, the image must exist (or be
    pulled), and when ``container.gpus`` asks for GPUs one must be visible to a container, else
    the task trains on CPU with a loud warning (``container.gpu_fallback: cpu``) or fails.
    Memory, CPUs, GPUs and the timeout come from the dataset config's ``container`` section
    (``container`` Param overrides). The whole container log is streamed into the task log; the
    XCom is the parsed result file: model URI, MLflow run id, device, timings and resource use.

    :param features: the build_features task's XCom (templated)
    :param ingest_result: the ingest task's XCom (templated)
    :param trainer: ``inprocess`` or ``docker`` (templated; default the ``trainer`` Param)
    :param image: trainer image (templated); default ``container.image`` of the dataset config
    :param network_mode: the container's network; default ``$MLOPS_TRAINER_NETWORK`` or ``host``.
        The container reaches MLflow and S3 at the URLs of the Airflow connections, so use the
        network those names resolve on (``host`` for the local stack, the compose network in
        docker-compose)
    :param docker_url: the engine (default ``$DOCKER_HOST`` or the local socket), as
        DockerOperator; ``docker_conn_id`` logs in to a private registry
    :param kwargs: MlopsStageOperator and DockerOperator arguments
    """

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "features",
                                      "ingest_result", "trainer", "image")
    template_ext: Sequence[str] = ()  # DockerOperator's .sh/.env would read URIs as files
    ui_color = "#fde8d4"

    def __init__(self, *, features: Any, ingest_result: Any,
                 trainer: str = "{{ params.trainer }}", image: str = "",
                 network_mode: str | None = None, **kwargs: Any) -> None:
        super().__init__(image=image, mount_tmp_dir=False, auto_remove="never",
                         network_mode=network_mode or os.environ.get("MLOPS_TRAINER_NETWORK")
                         or "host", **kwargs)
        self.features = features
        self.ingest_result = ingest_result
        self.trainer = trainer
        self._limits: dict[str, Any] = {}
        self._watchdog: threading.Timer | None = None
        self._stopped_for: str | None = None  # "timeout" or "kill": why we stopped the container
        self._gpu_fallback: str | None = None  # why no GPU was used although one was asked for

    # -- the provider's plumbing, with our hook and hard limits ----------------------------------
    @cached_property
    def hook(self) -> TrainerEngineHook:
        tls = DockerHook.construct_tls_config(
            ca_cert=self.tls_ca_cert, client_cert=self.tls_client_cert,
            client_key=self.tls_client_key, verify=self.tls_verify,
            assert_hostname=self.tls_hostname, ssl_version=self.tls_ssl_version)
        return TrainerEngineHook(docker_conn_id=self.docker_conn_id, base_url=self.docker_url,
                                 version=self.api_version, tls=tls, timeout=self.timeout)

    @property
    def cli(self) -> Any:
        return _HardLimits(self.hook.api_client, self._limits)

    # -- the task ------------------------------------------------------------------------------
    def run(self, stage: Stage, context: Context) -> dict[str, Any]:
        if self.trainer not in TRAINERS:
            from include.mlops.errors import ConfigError

            raise ConfigError(f"trainer {self.trainer!r} is not one of {', '.join(TRAINERS)}")
        if self.trainer == "inprocess":
            return self.train_in_process(stage)
        return self.train_in_container(stage, context)

    def train_in_process(self, stage: Stage) -> dict[str, Any]:
        from include.mlops.pipeline import train
        from include.mlops.trainer import resources

        before, started = resources()["cpu_seconds"], time.monotonic()
        trained = train(stage, train_uri=self.features["train_uri"],
                        manifest_uri=self.ingest_result["manifest_uri"])
        usage = resources()
        usage.pop("container_peak_mb", None)  # the worker's cgroup, not this training's
        return self.record(stage, trained, trainer="inprocess", device="cpu",
                           wall_seconds=time.monotonic() - started,
                           resources={**usage, "cpu_seconds": usage["cpu_seconds"] - before})

    def train_in_container(self, stage: Stage, context: Context) -> dict[str, Any]:
        config = stage.config.container
        self.image = self.image or config.image
        device = self.preflight(config, family=stage.config.training.family)
        environment, secrets = self.container_environment(stage, device)
        self.environment = {**self.environment, **environment}
        self._private_environment = {**self._private_environment, **secrets}
        self.container_name = self.name_container(context)
        self.labels = {"mlops.dag_id": context["dag_run"].dag_id, "mlops.task_id": self.task_id,
                       "mlops.run_id": context["dag_run"].run_id,
                       "mlops.try": str(context["ti"].try_number),
                       "mlops.mlflow_run_id": stage.mlflow_run_id}
        self.log.info(
            "Trainer container %s: image %s on %s, device %s, memory %s, cpus %s, timeout %g min, "
            "network %s; MLflow run %s. Its log follows.", self.container_name, self.image,
            self.hook.engine_url, device, config.memory_limit, self._limits["nano_cpus"] / 1e9,
            config.timeout_minutes, self.network_mode, stage.mlflow_run_id)
        started = time.monotonic()
        result, state = self.run_container(config)
        wall = time.monotonic() - started
        self.log.info("Trainer container %s exited %s after %.1f s", self.container_name,
                      state.get("ExitCode"), wall)
        self.raise_for_failure(config, result, state)
        return self.record(stage, result, trainer="docker", device=result.get("device", device),
                           wall_seconds=wall, resources=result.get("resources", {}),
                           inside_seconds=result.get("timings", {}).get("wall_seconds"))

    # -- before the container ------------------------------------------------------------------
    def preflight(self, config: ContainerConfig, *, family: str) -> str:
        """Engine, image and GPU checks; sets limits and device requests. Returns the device."""
        from include.mlops.errors import TrainerError
        from include.mlops.reproducibility import source_hash

        version = self.hook.check_engine()
        image = self.hook.ensure_image(self.image, pull=config.pull)
        self.log.info("Docker engine %s (server %s); trainer image %s (%s)", self.hook.engine_url,
                      version.get("Version"), self.image, image.get("Id", "")[:19])
        built_from = ((image.get("Config") or {}).get("Labels") or {}).get("mlops.source_hash")
        if built_from and built_from != source_hash():
            # Its models get another repro key than check_changed computes here: every run
            # would look changed and retrain.
            self.log.warning("Trainer image %s was built from other ML code than this worker's "
                             "include/mlops (source hash %s, here %s): rebuild it with "
                             "`python scripts/build_images.py`, or run the same version on both",
                             self.image, built_from[:12], source_hash()[:12])
        ncpu = self.hook.api_client.info().get("NCPU") or config.cpus
        cpus = min(config.cpus, float(ncpu))
        if cpus < config.cpus:
            self.log.warning("container.cpus %s is more than the engine's %s CPUs; using %s",
                             config.cpus, ncpu, cpus)
        self.mem_limit, self.cpus = config.memory_limit, cpus
        # memswap = memory: no swap, so the limit is where the kernel's OOM killer acts. init: the
        # trainer is not PID 1, so `docker stop` (timeout, on_kill) ends it at once, not after 10 s.
        self._limits = {"nano_cpus": int(cpus * 1e9), "memswap_limit": config.memory_limit,
                        "init": True}
        self.device_requests = None
        self._gpu_fallback = None
        if not config.wants_gpu:
            return "cpu"
        if family != "xgboost":
            self.log.warning("container.gpus=%s, but model family %s trains on CPU only; the GPU "
                             "is requested anyway (use family xgboost to train on it)",
                             config.gpus, family)
        requests = gpu_device_requests(config.gpus)
        visible, detail = self.hook.probe_gpus(self.image, requests)
        if visible:
            self.device_requests = requests
            self.log.info("GPUs visible to the trainer container (container.gpus=%s): %s",
                          config.gpus, detail.replace("\n", "; "))
            return "cuda"
        if config.gpu_fallback == "fail":
            raise TrainerError("no_gpu", f"container.gpus={config.gpus} but no GPU is visible to "
                                         f"a container on {self.hook.engine_url}: {detail}. Run "
                                         "on a GPU worker with the NVIDIA container toolkit, or "
                                         "set container.gpu_fallback to 'cpu' (or gpus to 0)")
        self._gpu_fallback = detail
        banner = "!" * 78
        self.log.warning("%s\nNO GPU: container.gpus=%s but no GPU is visible to a container on "
                         "%s (%s).\nTraining ON CPU because container.gpu_fallback is 'cpu'; it "
                         "will be slower. Set gpu_fallback to 'fail' to stop instead.\n%s",
                         banner, config.gpus, self.hook.engine_url, detail, banner)
        return "cpu"

    def container_environment(self, stage: Stage, device: str
                              ) -> tuple[dict[str, str], dict[str, str]]:
        """``(environment, secrets)``: the job (URIs, ids, the dataset config) and where the
        services are; then the credentials, for DockerOperator's ``private_environment`` only."""
        mlflow_env, mlflow_secrets = self.mlflow_hook.container_environment()
        s3_env, s3_secrets = self.s3_hook.container_environment()
        job = {"dataset_config": json.loads(stage.config.model_dump_json()),
               "train_uri": self.features["train_uri"],
               "manifest_uri": self.ingest_result["manifest_uri"],
               "mlflow_run_id": stage.mlflow_run_id, "artifacts_uri": stage.artifacts_uri,
               "run_key": stage.run_key}
        return ({**mlflow_env, **s3_env, "MLOPS_TRAINER_CONFIG": json.dumps(job),
                 "MLOPS_TRAINER_DEVICE": device}, {**mlflow_secrets, **s3_secrets})

    def name_container(self, context: Context) -> str:
        """One name per task try, so an on-call engineer can ``docker logs`` it. Containers of
        earlier tries of this task that a dead worker left running (holding a GPU) go first."""
        dag_run = context["dag_run"]
        digest = hashlib.sha256(dag_run.run_id.encode()).hexdigest()[:10]
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"mlops-{dag_run.dag_id}-{self.task_id}")[:100]
        name = f"{name}-{digest}-try{context['ti'].try_number}"
        client = self.hook.api_client
        labels = [f"mlops.dag_id={dag_run.dag_id}", f"mlops.task_id={self.task_id}",
                  f"mlops.run_id={dag_run.run_id}"]
        leftovers = {c["Id"]: c["Names"] for c in client.containers(
            all=True, filters={"label": labels})}
        leftovers.update({c["Id"]: c["Names"] for c in client.containers(
            all=True, filters={"name": f"^/{re.escape(name)}$"})})
        for container_id, names in leftovers.items():
            self.log.warning("Removing container %s left by an earlier try of this task",
                             ", ".join(n.lstrip("/") for n in names))
            client.remove_container(container_id, force=True)
        return name

    # -- the container -------------------------------------------------------------------------
    def run_container(self, config: ContainerConfig) -> tuple[dict[str, Any], dict[str, Any]]:
        """Run it through DockerOperator (create, attach, start, stream the log, wait); returns
        the parsed result file ({} when there is none) and the container's final state."""
        self._stopped_for = None
        self._watchdog = threading.Timer(config.timeout_minutes * 60, self.stop_container,
                                         kwargs={"why": "timeout"})
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            try:
                DockerOperator.execute(self, context={})  # type: ignore[arg-type]
            except DockerContainerFailedException:
                pass  # classified below from the container's state and result file
            except APIError as err:  # create or start refused
                raise self.refused(err) from err
            finally:
                self._watchdog.cancel()
            if not self.container:
                raise RuntimeError("the Docker engine created no trainer container")
            state = self.cli.inspect_container(self.container["Id"])["State"]
            return self.read_result(self.container["Id"]), state
        finally:
            self.remove_container()

    def refused(self, err: Exception) -> Exception:
        from include.mlops.errors import TrainerError

        why = getattr(err, "explanation", None) or str(err)
        if "device driver" in why or "nvidia" in why.lower():
            return TrainerError("no_gpu", f"the Docker engine refused the trainer container's GPU "
                                          f"request ({why}); install the NVIDIA container toolkit "
                                          "on the worker, or set container.gpus to 0")
        return TrainerError("engine", f"the Docker engine at {self.hook.engine_url} refused the "
                                      f"trainer container ({why})")

    def read_result(self, container_id: str) -> dict[str, Any]:
        from docker.errors import NotFound

        try:
            chunks, _ = self.cli.get_archive(container_id, RESULT_PATH)
        except NotFound:
            return {}
        with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as archive:
            member = archive.extractfile(archive.getmembers()[0])
            try:
                return json.loads(member.read()) if member else {}
            except ValueError:
                return {}

    def stop_container(self, why: str) -> None:
        self._stopped_for = why
        if self.container:
            if why == "timeout":
                self.log.error("Trainer container %s ran past its timeout; stopping it",
                               self.container_name)
            try:
                self.cli.stop(self.container["Id"], timeout=10)
            except Exception as err:  # noqa: BLE001 - it may have exited meanwhile
                self.log.warning("Could not stop container %s: %s", self.container_name, err)

    def remove_container(self) -> None:
        if not self.container:
            return
        try:
            self.cli.remove_container(self.container["Id"], force=True)
        except Exception as err:  # noqa: BLE001 - already gone (on_kill) or engine down
            self.log.warning("Could not remove container %s: %s", self.container_name, err)

    def on_kill(self) -> None:
        """Task killed (marked failed, timed out, worker shutdown): stop and remove the
        container so no orphan keeps the GPU."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.container:
            self.log.info("Task killed: stopping trainer container %s", self.container_name)
            self.stop_container(why="kill")
            self.remove_container()

    # -- after the container -------------------------------------------------------------------
    def raise_for_failure(self, config: ContainerConfig, result: dict[str, Any],
                          state: dict[str, Any]) -> None:
        """Turn a failed container into a TrainerError of its class, with what to do."""
        from include.mlops.errors import TrainerError

        code = state.get("ExitCode")
        if self._stopped_for == "timeout":
            raise TrainerError("timeout", f"the trainer ran longer than container.timeout_minutes="
                                          f"{config.timeout_minutes:g} and was stopped (exit {code}); "
                                          "raise timeout_minutes, train on fewer days "
                                          "(lookback_days) or give it a GPU", exit_code=code)
        if state.get("OOMKilled") or (code == 137 and self._stopped_for is None):
            raise TrainerError("oom", f"the trainer container was killed by the kernel at its memory "
                                      f"limit container.memory_limit={config.memory_limit} (exit "
                                      f"{code}, OOMKilled={bool(state.get('OOMKilled'))}); raise "
                                      "memory_limit or train on fewer days (lookback_days)",
                                      exit_code=code)
        if result.get("status") == "error":
            error_class = result.get("error_class", "error")
            error_class = error_class if error_class in ("data", "cuda", "oom") else "error"
            hint = {"data": "fix what it names (the data, the dataset config or a credential); "
                            "a retry meets the same",
                    "cuda": "check the GPU with nvidia-smi on the host (driver vs CUDA version, Xid "
                            "errors), or set container.gpus to 0 to train on CPU",
                    "oom": f"raise container.memory_limit (now {config.memory_limit}) or train on "
                           "fewer days (lookback_days)",
                    "error": "the container's traceback is above"}[error_class]
            # A data error keeps its own page (schema-mismatch.md, ...): one link, the specific one.
            runbook = result.get("runbook") if error_class == "data" else None
            raise TrainerError(error_class, f"the trainer failed (exit {code}): {result.get('error')}; "
                                            f"{hint}", exit_code=code, runbook=runbook)
        if code != 0 or result.get("status") != "ok":
            raise TrainerError("error", f"the trainer container exited {code} "
                                        f"{'without a result file' if not result else 'with status ' + str(result.get('status'))}"
                                        f" ({state.get('Error') or 'no engine error'}); its log "
                                        "is above", exit_code=code)

    def record(self, stage: Stage, trained: dict[str, Any], *, trainer: str, device: str,
               wall_seconds: float, resources: dict[str, Any],
               inside_seconds: float | None = None) -> dict[str, Any]:
        """Log how training ran to the MLflow run; return the XCom (small values only)."""
        usage = {key: value for key, value in resources.items()
                 if isinstance(value, int | float) and not isinstance(value, bool)}
        metrics = {"trainer.wall_seconds": wall_seconds,
                   **{f"trainer.{key}": value for key, value in usage.items()}}
        if inside_seconds is not None:
            metrics["trainer.container_overhead_seconds"] = wall_seconds - inside_seconds
        stage.log_metrics(metrics)
        tags = {"mlops.trainer": trainer, "mlops.trainer.device": device}
        if trainer == "docker":
            tags["mlops.trainer.image"] = self.image
            if resources.get("gpu_name"):
                tags["mlops.trainer.gpu"] = str(resources["gpu_name"])
            if self._gpu_fallback:  # searchable: runs that wanted a GPU and trained on CPU
                tags["mlops.trainer.gpu_fallback"] = self._gpu_fallback[:500]
        for key, value in tags.items():
            stage.client.set_tag(stage.mlflow_run_id, key, value)
        self.log.info("Trained with the %s trainer on %s in %.1f s (%s)", trainer, device,
                      wall_seconds, ", ".join(f"{k} {v}" for k, v in usage.items()))
        return {"model_uri": trained["model_uri"], "repro_key": trained["repro_key"],
                "metrics": trained.get("metrics", {}),
                "mlflow_run_id": stage.mlflow_run_id, "trainer": trainer, "device": device,
                "wall_seconds": round(wall_seconds, 3), "resources": resources,
                **({"image": self.image} if trainer == "docker" else {})}
