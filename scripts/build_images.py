"""Build the project's images offline: a Debian base from debootstrap + ``docker import``, then
docker/<name>/Dockerfile on it for each image. All are tagged with a content hash of their inputs,
so a second build with the same inputs is a no-op (seconds: one ``docker image inspect`` each).

    python scripts/build_images.py                       # base (if missing) + trainer
    python scripts/build_images.py --images all --env    # + the production stack's images
    python scripts/build_images.py --base-image python:3.11-slim-bookworm   # registry users
    python scripts/build_images.py --extra-ca /path/corp-ca.pem

Images: trainer (the GPU-capable training container), airflow (every Python service of
docker-compose.yaml: Airflow, MLflow, SeaweedFS), postgres, redis, docker-proxy (the workers'
restricted view of the Docker engine).

Prints the last image's tag, then on the last line of stdout its id (``sha256:…``): for the
trainer, the digest the deployment pins (``MLOPS_TRAINER_IMAGE``; the operator runs no other
image). With ``--env``: one ``MLOPS_<NAME>_IMAGE=<tag>`` line per image instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO / "docker"
IMAGES = ("trainer", "airflow", "postgres", "redis", "docker-proxy")
DEBIAN_SUITE = "bookworm"  # Python 3.11, like the project's venv
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_REPO = "mlops-trainer-base"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sha(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def docker_available() -> None:
    result = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"Docker engine not reachable: {result.stderr.strip()[:300]}. Start "
                         "dockerd (./deploy.sh test starts it when it is installed)")


def build_base() -> str:
    """debootstrap a minimal Debian with Python and import it as an image."""
    recipe = f"debootstrap --variant=minbase --include={DEBOOTSTRAP_PACKAGES} {DEBIAN_SUITE}"
    tag = f"{BASE_REPO}:{DEBIAN_SUITE}-{sha(recipe.encode())}"
    if image_exists(tag):
        log(f"base image {tag} exists")
        subprocess.run(["docker", "tag", tag, f"{BASE_REPO}:{DEBIAN_SUITE}"], check=True)
        return tag
    if shutil.which("debootstrap") is None:
        raise SystemExit("debootstrap is not installed (apt-get install debootstrap), or pass "
                         "--base-image <a Debian bookworm image with python3 and python3-venv>")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trainer-rootfs-") as root:
        subprocess.run(["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_PACKAGES}",
                        DEBIAN_SUITE, root], check=True, stdout=subprocess.DEVNULL)
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", tag], stdin=tar.stdout, check=True,
                       stdout=subprocess.DEVNULL)
        if tar.wait() != 0:
            raise SystemExit("tar of the debootstrap root failed")
    subprocess.run(["docker", "tag", tag, f"{BASE_REPO}:{DEBIAN_SUITE}"], check=True)
    log(f"built base image {tag} in {time.monotonic() - started:.0f}s")
    return tag


def ml_source_hash() -> str:
    """The hash that enters every model's repro key (include/mlops_core/reproducibility.py)."""
    sys.path.insert(0, str(REPO))
    from include.mlops_core.reproducibility import source_hash

    return source_hash()


def _tree(*folders: str) -> dict[str, bytes]:
    files = {}
    for folder in folders:
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[str(path.relative_to(REPO))] = path.read_bytes()
    return files


def _dir_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


# Each image: its Docker context (name in the context -> bytes), built from docker/<name>/ on the
# base. The production stack (docker-compose.yaml) runs airflow (every Python service: Airflow,
# MLflow, SeaweedFS), postgres, redis and docker-proxy; the workers start trainer containers.
def image_files(name: str, extra_ca: Path | None) -> dict[str, bytes]:
    files = _dir_files(DOCKER_DIR / name)
    files["extra-ca.crt"] = extra_ca.read_bytes() if extra_ca else b""
    if name == "trainer":
        files.update(_tree("include"))
    elif name == "airflow":
        files["requirements.txt"] = (REPO / "requirements.txt").read_bytes()
        files.update(_tree("dags", "plugins", "include", "scripts"))
    return files


def trainer_inputs(base: str, extra_ca: Path | None) -> tuple[str, dict[str, bytes]]:
    """Everything that goes into the trainer image, and its content hash."""
    return _inputs("trainer", base, extra_ca)


def _inputs(name: str, base: str, extra_ca: Path | None) -> tuple[str, dict[str, bytes]]:
    files = image_files(name, extra_ca)
    digest = sha(base.encode(), *(key.encode() + b"\0" + data for key, data in files.items()))
    return digest, files


def build_image(name: str, base: str, extra_ca: Path | None) -> str:
    """docker/<name>/Dockerfile on ``base``, tagged mlops-<name>:<content hash> and :latest; a
    no-op when an image with that hash exists."""
    digest, files = _inputs(name, base, extra_ca)
    repo = f"mlops-{name}"
    tag = f"{repo}:{digest}"
    if image_exists(tag):
        log(f"{name} image {tag} exists (inputs unchanged)")
        # :latest follows the checkout (after a branch switch it may point at another build).
        subprocess.run(["docker", "tag", tag, f"{repo}:latest"], check=True)
        return tag
    started = time.monotonic()
    labels = []
    if name == "trainer":
        # The operator compares this label with the worker's code (a stale image retrains daily).
        labels = ["--label", f"mlops.source_hash={ml_source_hash()}"]
    with tempfile.TemporaryDirectory(prefix=f"{name}-context-") as context:
        for key, data in files.items():
            target = Path(context) / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            if data.startswith(b"#!"):
                target.chmod(0o755)
        subprocess.run(["docker", "build", "--network", "host", "--build-arg",
                        f"BASE_IMAGE={base}", *labels, "-t", tag, "-t", f"{repo}:latest", context],
                       check=True, stdout=sys.stderr)
    log(f"built {name} image {tag} in {time.monotonic() - started:.0f}s")
    return tag


def build_trainer(base: str, extra_ca: Path | None) -> str:
    return build_image("trainer", base, extra_ca)


def image_variable(name: str) -> str:
    """The docker-compose.yaml variable that names the image, e.g. MLOPS_AIRFLOW_IMAGE."""
    return f"MLOPS_{name.upper().replace('-', '_')}_IMAGE"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", help="use this base instead of building one offline")
    parser.add_argument("--extra-ca", type=Path,
                        default=Path(os.environ["MLOPS_EXTRA_CA"]) if os.environ.get(
                            "MLOPS_EXTRA_CA") else (HOST_CA if HOST_CA.exists() else None),
                        help="CA bundle trusted by pip inside the build (default: the host's)")
    parser.add_argument("--images", default="trainer",
                        help=f"comma-separated, from {', '.join(IMAGES)}, or 'all' "
                             "(default: trainer)")
    parser.add_argument("--env", action="store_true",
                        help="print VARIABLE=tag lines for docker-compose.yaml "
                             "(MLOPS_AIRFLOW_IMAGE=mlops-airflow:<hash>, ...) instead")
    args = parser.parse_args(argv)
    names = list(IMAGES) if args.images == "all" else [n.strip() for n in args.images.split(",")]
    unknown = sorted(set(names) - set(IMAGES))
    if unknown:
        parser.error(f"unknown image(s) {unknown}; choose from {', '.join(IMAGES)}")
    docker_available()
    base = args.base_image or build_base()
    tags = {name: build_image(name, base, args.extra_ca) for name in names}
    if args.env:
        for name, tag in tags.items():
            print(f"{image_variable(name)}={tag}")
        return 0
    tag = tags[names[-1]]
    image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag],
                              check=True, capture_output=True, text=True).stdout.strip()
    print(tag)
    print(image_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
