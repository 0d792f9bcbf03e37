"""The train task: fit the model in the worker process or in the trainer container.

``TrainModelOperator`` decides what to run and records the outcome; the engine work (pre-flight,
hard limits, the container run with its timeout, the result file, clean-up) is
:class:`mlops_airflow.hooks.docker_engine.TrainerEngineHook`'s. The container gets the job in its
environment and the credentials as a file it deletes on start, so ``docker inspect`` shows no
secret; it runs only the image the deployment pinned by digest (include/mlops_core/policy.py). A
failure is classified, with a runbook. See docs/gpu-training.md. The in-process path imports
nothing of Docker.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from mlops_airflow.operators.training import MlopsStageOperator, split_of

if TYPE_CHECKING:
    from airflow.sdk import Context

    from include.mlops_core.config import ContainerConfig
    from include.mlops_core.pipeline import RunContext
    from mlops_airflow.hooks.docker_engine import TrainerEngineHook, TrainerSpec

TRAINERS = ("inprocess", "docker")


class TrainModelOperator(MlopsStageOperator):
    """Fit features + model and log it to the DAG run's MLflow run, in-process or in a container.

    ``trainer=docker`` runs :mod:`include.mlops_core.trainer` (the same training code) in the
    trainer image. Before it starts: the engine must answer, the image must be the one the
    deployment pinned by digest (never one a run names; pulled only by digest), and when
    ``container.gpus`` asks for GPUs one must be visible to a container, else the task trains
    on CPU with a loud warning (``container.gpu_fallback: cpu``) or fails. Memory, CPUs, GPUs
    and the timeout come from the dataset config's ``container`` section, which no run can
    override. The whole container log is streamed into the task log; the XCom is the parsed
    result file: model URI, MLflow run id, device, timings and resource use.

    :param features: one entry of the build_features task's XCom (templated; the DAG maps one
        train task per entry, that is per candidate): the split and the candidate's label
    :param ingest_result: the ingest task's XCom (templated)
    :param candidate: which of the dataset's candidates to train (templated); default the
        ``candidate`` of ``features``, else the only or first one. With several, each trains in its
        own MLflow child run. A candidate with a search space trains with the best params of
        its study (the tune tasks'), read from the study database (``optuna_conn_id``)
    :param trainer: ``inprocess`` or ``docker`` (templated; default: the ``trainer`` Param when
        the policy lets runs choose it, else ``$MLOPS_TRAINER`` of the worker, else inprocess)
    :param image: trainer image reference; default the policy's ``trainer_image``
        (``$MLOPS_TRAINER_IMAGE``). Either way it must carry a digest the policy pinned
    :param network_mode: the container's network; default ``$MLOPS_TRAINER_NETWORK`` or ``host``.
        The container reaches MLflow and S3 at the URLs of the Airflow connections, so use the
        network those names resolve on (``host`` for the local stack, the compose network in
        docker-compose)
    :param docker_url: the engine (default ``$DOCKER_HOST`` or the local socket);
        ``docker_conn_id`` logs in to a private registry; ``tls_*`` as the Docker provider's
    :param kwargs: MlopsStageOperator arguments. ``queue`` defaults to ``$MLOPS_TRAINER_QUEUE``
        when the DAG file is parsed with it set: the production stack routes training to the
        Celery workers that reach a Docker engine (the ``gpu`` queue, docs/deployment.md)
    """

    template_fields: Sequence[str] = (*MlopsStageOperator.template_fields, "features",
                                      "ingest_result", "trainer", "candidate")
    ui_color = "#fde8d4"

    def __init__(self, *, features: Any, ingest_result: Any, candidate: str | None = None,
                 optuna_conn_id: str = "mlops_optuna", trainer: str | None = None,
                 image: str | None = None, network_mode: str | None = None,
                 docker_url: str | None = None, docker_conn_id: str | None = None,
                 tls_ca_cert: str | None = None, tls_client_cert: str | None = None,
                 tls_client_key: str | None = None, tls_verify: bool = True,
                 tls_hostname: str | bool | None = None, api_version: str | None = None,
                 **kwargs: Any) -> None:
        kwargs = {**self.routing(), **kwargs}
        super().__init__(**kwargs)
        self.features = features
        self.ingest_result = ingest_result
        self.candidate = candidate
        self.optuna_conn_id = optuna_conn_id
        self.tuned: dict[str, Any] = {}  # the study's best params, when the candidate was tuned
        self.tuning: dict[str, Any] | None = None  # the study's summary, for the card
        self.trainer = trainer
        self.image = image
        self.network_mode = network_mode
        self.docker_url = docker_url
        self.docker_conn_id = docker_conn_id
        self.tls = {"ca_cert": tls_ca_cert, "client_cert": tls_client_cert,
                    "client_key": tls_client_key, "verify": tls_verify,
                    "assert_hostname": tls_hostname}
        self.api_version = api_version
        self.image_id: str | None = None  # the pinned image that ran (sha256:…)
        self.container_id: str | None = None  # in flight, for on_kill
        self.container_name: str | None = None
        self._killed = False  # on_kill stopped the container: its exit is not an OOM
        self._gpu_fallback: str | None = None  # why no GPU was used although one was asked for

    @staticmethod
    def routing() -> dict[str, Any]:
        """``{"queue": $MLOPS_TRAINER_QUEUE}`` when the DAG file is parsed with it set, else {}.
        A mapped train task must be given it in ``partial()``: the scheduler routes a mapped
        task by its partial arguments, before any instance of the class exists."""
        queue = os.environ.get("MLOPS_TRAINER_QUEUE")
        return {"queue": queue} if queue else {}

    @cached_property
    def hook(self) -> TrainerEngineHook:
        from airflow.providers.docker.hooks.docker import DockerHook

        from mlops_airflow.hooks.docker_engine import TrainerEngineHook

        url = self.docker_url or os.environ.get("DOCKER_HOST") or "unix://var/run/docker.sock"
        tls = DockerHook.construct_tls_config(**self.tls) if self.tls["ca_cert"] else False
        return TrainerEngineHook(docker_conn_id=self.docker_conn_id, base_url=url,
                                 version=self.api_version, tls=tls)

    # -- the task ------------------------------------------------------------------------------
    def run(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        self.trainer = self.trainer or context["params"].get("trainer") \
            or os.environ.get("MLOPS_TRAINER") or "inprocess"
        if self.trainer not in TRAINERS:
            from include.mlops_core.errors import ConfigError

            raise ConfigError(f"trainer {self.trainer!r} is not one of {', '.join(TRAINERS)}")
        run_ctx = self.candidate_stage(run_ctx, context)
        if self.trainer == "inprocess":
            return self.train_in_process(run_ctx)
        return self.train_in_container(run_ctx, context)

    def candidate_stage(self, run_ctx: RunContext, context: Context) -> RunContext:
        """Which candidate, with which tuned params, in which MLflow run: its own child run
        when the dataset trains several candidates, the DAG run's run when it trains one."""
        from include.mlops_core.pipeline import candidate_stage

        candidates = run_ctx.config.training.all_candidates
        self.candidate = self.candidate or (self.features.get("candidate")
                                            if isinstance(self.features, dict) else None) \
            or candidates[0].label
        chosen = {c.label: c for c in candidates}.get(self.candidate)
        if chosen is not None and chosen.search_space:
            from include.mlops_core import tuning
            from mlops_airflow.hooks.optuna import OptunaStorageHook
            from mlops_airflow.operators.tuning import study_for

            url = OptunaStorageHook(self.optuna_conn_id).storage_url
            self.tuning = tuning.summary(url, study_for(run_ctx, context, self.candidate))
            self.tuned = dict(self.tuning.get("best_params") or {})
            self.log.info("Candidate %s: the study's best params %s (%s %s, trial %s)",
                          self.candidate, self.tuned, self.tuning.get("metric"),
                          self.tuning.get("best_value"), self.tuning.get("best_trial"))
        return candidate_stage(run_ctx, self.candidate) if len(candidates) > 1 else run_ctx

    def train_in_process(self, run_ctx: RunContext) -> dict[str, Any]:
        from include.mlops_core.pipeline import train
        from include.mlops_core.trainer import resources

        before, started = resources()["cpu_seconds"], time.monotonic()
        trained = train(run_ctx, train_uri=split_of(self.features)["train_uri"],
                        manifest_uri=self.ingest_result["manifest_uri"],
                        candidate=self.candidate, tuned=self.tuned)
        usage = resources()
        usage.pop("container_peak_mb", None)  # the worker's cgroup, not this training's
        return self.record(run_ctx, trained, trainer="inprocess", device="cpu",
                           wall_seconds=time.monotonic() - started,
                           resources={**usage, "cpu_seconds": usage["cpu_seconds"] - before})

    def train_in_container(self, run_ctx: RunContext, context: Context) -> dict[str, Any]:
        from docker.errors import APIError

        config = run_ctx.config.container
        spec = self.preflight(run_ctx, context)
        self.log.info(
            "Trainer container %s: image %s on %s, device %s, memory %s, cpus %s, timeout %g min, "
            "network %s; MLflow run %s. Its log follows.", spec.name, spec.image[:19],
            self.hook.engine_url, spec.environment["MLOPS_TRAINER_DEVICE"], config.memory_limit,
            spec.nano_cpus / 1e9, config.timeout_minutes, spec.network_mode, run_ctx.mlflow_run_id)
        started = time.monotonic()
        try:
            ran = self.hook.run_trainer(spec, on_log=lambda line: self.log.info("%s", line),
                                        on_created=self._created)
        except APIError as err:  # create or start refused
            raise self.refused(err) from err
        finally:
            self.container_id = None
        wall = time.monotonic() - started
        self.log.info("Trainer container %s exited %s after %.1f s", spec.name,
                      ran.state.get("ExitCode"), wall)
        self.raise_for_failure(config, ran.result, ran.state, timed_out=ran.timed_out,
                               killed=self._killed)
        result = ran.result
        return self.record(run_ctx, result, trainer="docker",
                           device=result.get("device", spec.environment["MLOPS_TRAINER_DEVICE"]),
                           wall_seconds=wall, resources=result.get("resources", {}),
                           inside_seconds=result.get("timings", {}).get("wall_seconds"))

    def _created(self, container_id: str) -> None:
        self.container_id = container_id

    # -- before the container ------------------------------------------------------------------
    def preflight(self, run_ctx: RunContext, context: Context) -> TrainerSpec:
        """Engine, pinned image and GPU checks; returns what to run, with limits and secrets."""
        from include.mlops_core.errors import TrainerError
        from include.mlops_core.policy import load_policy
        from include.mlops_core.reproducibility import source_hash
        from mlops_airflow.hooks.docker_engine import TrainerSpec

        config = run_ctx.config.container
        policy = load_policy()
        reference = self.image or policy.trainer_image
        if not reference:
            raise TrainerError("image", "no trainer image is configured: build it with `python "
                                        "scripts/build_images.py` and set MLOPS_TRAINER_IMAGE to "
                                        "the sha256 id it prints (or trainer_image in the policy "
                                        "file)")
        version = self.hook.check_engine()
        image = self.hook.resolve_image(reference, digests=policy.digests_for(reference),
                                        pull=policy.trainer_pull)
        self.image_id = image["Id"]
        self.log.info("Docker engine %s (server %s); trainer image %s (%s, pinned)",
                      self.hook.engine_url, version.get("Version"), reference, image["Id"][:19])
        built_from = ((image.get("Config") or {}).get("Labels") or {}).get("mlops.source_hash")
        if built_from and built_from != source_hash():
            # Its models get another repro key than check_changed computes here: every run
            # would look changed and retrain.
            self.log.warning("Trainer image %s was built from other ML code than this worker's "
                             "include/mlops_core (source hash %s, here %s): rebuild it with "
                             "`python scripts/build_images.py`, or run the same version on both",
                             reference, built_from[:12], source_hash()[:12])
        ncpu = self.hook.api_client.info().get("NCPU") or config.cpus
        cpus = min(config.cpus, float(ncpu))
        if cpus < config.cpus:
            self.log.warning("container.cpus %s is more than the engine's %s CPUs; using %s",
                             config.cpus, ncpu, cpus)
        device, requests = self.gpu_request(config, image["Id"],
                                            family=run_ctx.config.training.family)
        environment, secrets = self.container_environment(run_ctx, device)
        dag_run = context["dag_run"]
        labels = {"mlops.dag_id": dag_run.dag_id, "mlops.task_id": self.task_id,
                  "mlops.map_index": str(context["ti"].map_index),
                  "mlops.run_id": dag_run.run_id, "mlops.try": str(context["ti"].try_number),
                  "mlops.mlflow_run_id": run_ctx.mlflow_run_id}
        self.container_name = self.name_container(context)
        return TrainerSpec(
            image=image["Id"], name=self.container_name, environment=environment, labels=labels,
            network_mode=self.network_mode or os.environ.get("MLOPS_TRAINER_NETWORK") or "host",
            memory_limit=config.memory_limit, nano_cpus=int(cpus * 1e9),
            timeout_seconds=config.timeout_minutes * 60, secrets=secrets,
            user=(image.get("Config") or {}).get("User") or None, device_requests=requests)

    def gpu_request(self, config: ContainerConfig, image: str, *, family: str
                    ) -> tuple[str, list[Any] | None]:
        """``(device, device requests)``: ``cuda`` with the request when a GPU is visible to a
        container of ``image``; else CPU (with a banner) or a ``no_gpu`` failure."""
        from include.mlops_core.errors import TrainerError
        from mlops_airflow.hooks.docker_engine import gpu_device_requests

        self._gpu_fallback = None
        if not config.wants_gpu:
            return "cpu", None
        if family != "xgboost":
            self.log.warning("container.gpus=%s, but model family %s trains on CPU only; the GPU "
                             "is requested anyway (use family xgboost to train on it)",
                             config.gpus, family)
        requests = gpu_device_requests(config.gpus)
        visible, detail = self.hook.probe_gpus(image, requests)
        if visible:
            self.log.info("GPUs visible to the trainer container (container.gpus=%s): %s",
                          config.gpus, detail.replace("\n", "; "))
            return "cuda", requests
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
        return "cpu", None

    def container_environment(self, run_ctx: RunContext, device: str
                              ) -> tuple[dict[str, str], dict[str, str]]:
        """``(environment, secrets)``: the job (URIs, ids, the dataset config) and where the
        services are; then the credentials, which reach the container only as a file."""
        mlflow_env, mlflow_secrets = self.mlflow_hook.container_environment()
        s3_env, s3_secrets = self.s3_hook.container_environment()
        job = {"dataset_config": json.loads(run_ctx.config.model_dump_json()),
               "candidate": self.candidate, "tuned": self.tuned,
               "train_uri": split_of(self.features)["train_uri"],
               "manifest_uri": self.ingest_result["manifest_uri"],
               "mlflow_run_id": run_ctx.mlflow_run_id, "artifacts_uri": run_ctx.artifacts_uri,
               "run_key": run_ctx.run_key}
        return ({**mlflow_env, **s3_env, "MLOPS_TRAINER_CONFIG": json.dumps(job),
                 "MLOPS_TRAINER_DEVICE": device}, {**mlflow_secrets, **s3_secrets})

    def name_container(self, context: Context) -> str:
        """One name per task try, so an on-call engineer can ``docker logs`` it. Containers of
        earlier tries of this task that a dead worker left running (holding a GPU) go first."""
        dag_run = context["dag_run"]
        digest = hashlib.sha256(dag_run.run_id.encode()).hexdigest()[:10]
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", f"mlops-{dag_run.dag_id}-{self.task_id}")[:100]
        map_index = context["ti"].map_index
        mapped = f"-{map_index}" if map_index is not None and map_index >= 0 else ""
        name = f"{name}{mapped}-{digest}-try{context['ti'].try_number}"
        for left in self.hook.remove_leftovers(
                labels=[f"mlops.dag_id={dag_run.dag_id}", f"mlops.task_id={self.task_id}",
                        f"mlops.run_id={dag_run.run_id}", f"mlops.map_index={map_index}"],
                name=name):
            self.log.warning("Removed container %s left by an earlier try of this task", left)
        return name

    # -- the container -------------------------------------------------------------------------
    def refused(self, err: Exception) -> Exception:
        from include.mlops_core.errors import TrainerError

        why = getattr(err, "explanation", None) or str(err)
        if "device driver" in why or "nvidia" in why.lower():
            return TrainerError("no_gpu", f"the Docker engine refused the trainer container's GPU "
                                          f"request ({why}); install the NVIDIA container toolkit "
                                          "on the worker, or set container.gpus to 0")
        return TrainerError("engine", f"the Docker engine at {self.hook.engine_url} refused the "
                                      f"trainer container ({why})")

    def on_kill(self) -> None:
        """Task killed (marked failed, timed out, worker shutdown): stop and remove the
        container so no orphan keeps the GPU."""
        container_id = self.container_id
        if container_id:
            self._killed = True
            self.log.info("Task killed: stopping trainer container %s", self.container_name)
            self.hook.stop(container_id)
            self.hook.remove(container_id)

    # -- after the container -------------------------------------------------------------------
    def raise_for_failure(self, config: ContainerConfig, result: dict[str, Any],
                          state: dict[str, Any], *, timed_out: bool = False,
                          killed: bool = False) -> None:
        """Turn a failed container into a TrainerError of its class, with what to do."""
        from include.mlops_core.errors import TrainerError

        code = state.get("ExitCode")
        if timed_out:
            raise TrainerError("timeout", f"the trainer ran longer than container.timeout_minutes="
                                          f"{config.timeout_minutes:g} and was stopped (exit {code}); "
                                          "raise timeout_minutes, train on fewer days "
                                          "(lookback_days) or give it a GPU", exit_code=code)
        if state.get("OOMKilled") or (code == 137 and not killed):
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

    def record(self, run_ctx: RunContext, trained: dict[str, Any], *, trainer: str, device: str,
               wall_seconds: float, resources: dict[str, Any],
               inside_seconds: float | None = None) -> dict[str, Any]:
        """Log how training ran to the MLflow run; return the XCom (small values only)."""
        usage = {key: value for key, value in resources.items()
                 if isinstance(value, int | float) and not isinstance(value, bool)}
        metrics = {"trainer.wall_seconds": wall_seconds,
                   **{f"trainer.{key}": value for key, value in usage.items()}}
        if inside_seconds is not None:
            metrics["trainer.container_overhead_seconds"] = wall_seconds - inside_seconds
        run_ctx.log_metrics(metrics)
        tags = {"mlops.trainer": trainer, "mlops.trainer.device": device}
        if trainer == "docker":
            tags["mlops.trainer.image"] = str(self.image_id)
            if resources.get("gpu_name"):
                tags["mlops.trainer.gpu"] = str(resources["gpu_name"])
            if self._gpu_fallback:  # searchable: runs that wanted a GPU and trained on CPU
                tags["mlops.trainer.gpu_fallback"] = self._gpu_fallback[:500]
        for key, value in tags.items():
            run_ctx.client.set_tag(run_ctx.mlflow_run_id, key, value)
        self.log.info("Trained with the %s trainer on %s in %.1f s (%s)", trainer, device,
                      wall_seconds, ", ".join(f"{k} {v}" for k, v in usage.items()))
        return {"model_uri": trained["model_uri"], "repro_key": trained["repro_key"],
                "reproducibility_uri": trained.get("reproducibility_uri"),
                "candidate": trained.get("candidate", self.candidate),
                "family": trained.get("family"), "tuning": self.tuning,
                "metrics": trained.get("metrics", {}),
                "mlflow_run_id": run_ctx.mlflow_run_id, "trainer": trainer, "device": device,
                "wall_seconds": round(wall_seconds, 3), "resources": resources,
                **({"image": self.image_id} if trainer == "docker" else {})}

