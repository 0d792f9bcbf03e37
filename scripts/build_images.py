"""Build the trainer image offline: a Debian base from debootstrap + ``docker import``, then
docker/trainer/Dockerfile on it. Both are tagged with a content hash, so a second build with the
same inputs is a no-op (seconds: one ``docker image inspect`` each).

    python scripts/build_images.py                       # base (if missing) + trainer
    python scripts/build_images.py --base-image python:3.11-slim-bookworm   # registry users
    python scripts/build_images.py --extra-ca /path/corp-ca.pem

Prints the trainer image's tag, then on the last line of stdout its id (``sha256:…``): the
digest the deployment pins (``MLOPS_TRAINER_IMAGE``; the operator runs no other image).
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
TRAINER_DIR = REPO / "docker" / "trainer"
DEBIAN_SUITE = "bookworm"  # Python 3.11, like the project's venv
DEBOOTSTRAP_PACKAGES = "python3,python3-venv,ca-certificates"
BASE_REPO, TRAINER_REPO = "mlops-trainer-base", "mlops-trainer"
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
    """The hash that enters every model's repro key (include/mlops/reproducibility.py)."""
    sys.path.insert(0, str(REPO))
    from include.mlops.reproducibility import source_hash

    return source_hash()


def trainer_inputs(base: str, extra_ca: Path | None) -> tuple[str, dict[str, bytes]]:
    """Everything that goes into the trainer image, and its content hash."""
    files = {"Dockerfile": (TRAINER_DIR / "Dockerfile").read_bytes(),
             "requirements.txt": (TRAINER_DIR / "requirements.txt").read_bytes(),
             "extra-ca.crt": extra_ca.read_bytes() if extra_ca else b""}
    for path in sorted((REPO / "include").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[str(path.relative_to(REPO))] = path.read_bytes()
    digest = sha(base.encode(), *(name.encode() + b"\0" + data for name, data in files.items()))
    return digest, files


def build_trainer(base: str, extra_ca: Path | None) -> str:
    digest, files = trainer_inputs(base, extra_ca)
    tag = f"{TRAINER_REPO}:{digest}"
    if image_exists(tag):
        log(f"trainer image {tag} exists (inputs unchanged)")
        # :latest follows the checkout (after a branch switch it may point at another build).
        subprocess.run(["docker", "tag", tag, f"{TRAINER_REPO}:latest"], check=True)
        return tag
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="trainer-context-") as context:
        for name, data in files.items():
            target = Path(context) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        # The operator compares this label with the worker's code (a stale image retrains daily).
        subprocess.run(["docker", "build", "--network", "host", "--build-arg",
                        f"BASE_IMAGE={base}", "--label", f"mlops.source_hash={ml_source_hash()}",
                        "-t", tag, "-t", f"{TRAINER_REPO}:latest", context],
                       check=True, stdout=sys.stderr)
    log(f"built trainer image {tag} in {time.monotonic() - started:.0f}s")
    return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", help="use this base instead of building one offline")
    parser.add_argument("--extra-ca", type=Path,
                        default=Path(os.environ["MLOPS_EXTRA_CA"]) if os.environ.get(
                            "MLOPS_EXTRA_CA") else (HOST_CA if HOST_CA.exists() else None),
                        help="CA bundle trusted by pip inside the build (default: the host's)")
    args = parser.parse_args(argv)
    docker_available()
    base = args.base_image or build_base()
    tag = build_trainer(base, args.extra_ca)
    image_id = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}}", tag],
                              check=True, capture_output=True, text=True).stdout.strip()
    print(tag)
    print(image_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
