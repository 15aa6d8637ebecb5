import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# pytest-xdist runs one worker per core: each worker's torch (and every command it starts, which
# inherits the variable) then gets its share of the cores, set before anything imports torch or
# numpy. Two workers with two threads each on two cores spin against each other (~3x slower).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    share = (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, share)))

# No network and an empty Hugging Face cache for the whole session, set before anything imports
# huggingface_hub (it reads both at import) - including the fork server that runs CLI commands.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="xtune-tests-hf-home-")
os.environ.pop("HF_ENDPOINT", None)

from helpers import compose, offline_env  # noqa: E402


#: fixtures that train a model once for several tests (conftest.py, test_finetune.py)
SHARED_RUNS = ("main_job", "reference_run", "pretrained_0_to_4")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """README's `python -m pytest` runs on every core (pytest-xdist, --dist loadgroup): tests that
    read one shared run share a worker, so it is trained once; the SLURM tests join the reference
    run's worker (they compare against it, and preempt the single node's jobs: never side by side)."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        names = getattr(item, "fixturenames", ())  # every fixture the test needs, direct or not
        shared = [name for name in SHARED_RUNS if name in names]
        if item.path.parent.name == "cluster":
            shared = ["reference_run"]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))


def pytest_collection_finish(session):
    """pytest-xdist groups a test by renaming it "nodeid@group"; a pytest that ignores the rename
    (9.2, with xdist 3.8) would silently train the shared runs twice and run the SLURM tests side
    by side."""
    if not (os.environ.get("PYTEST_XDIST_WORKER") and session.config.getvalue("loadgroup")):
        return
    lost = [item.nodeid for item in session.items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"pytest-xdist could not group {lost[0]} under pytest {pytest.__version__}: "
                                "install the pytest version pyproject.toml's [dev] extra names, or run with -n 0")


@pytest.fixture
def env(tmp_path):
    return offline_env(tmp_path)


@pytest.fixture(autouse=True)
def _no_network_caches(tmp_path, monkeypatch):
    """In-process tests get the same offline, empty caches as the CLI tests."""
    for key, value in offline_env(tmp_path).items():
        if key in ("TORCH_HOME", "NETRC", "WANDB_DIR", "WANDB_CONFIG_DIR"):
            monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)


@pytest.fixture
def composed():
    return compose


@pytest.fixture(scope="session")
def repo(tmp_path_factory):
    """A copy of the repository (its tracked and new files) as a user's working directory: the
    README's commands run from here exactly as written, with the defaults a user gets (logs/,
    data/ relative to it). Holds the folders the README's examples name (data/pets, ...)."""
    import shutil
    import subprocess

    from helpers import ROOT, write_digit_scans, write_image_folder

    copy = tmp_path_factory.mktemp("repo") / "xtune"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    write_image_folder(copy / "data" / "pets", classes=("beagle", "persian", "pug"), per_class=16, size=40)
    write_digit_scans(copy / "data" / "digit_scans", per_class=6)
    return copy


@pytest.fixture(scope="session")
def main_job(repo, tmp_path_factory):
    """README's main job, exactly as written, in a fresh Python from the repo copy."""
    from helpers import run

    tmp = tmp_path_factory.mktemp("main_job")
    result = run(["python", "train.py", "experiment=quickstart"], cwd=repo, tmp_path=tmp, fresh=True)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]  # "run: RUN_DIR  test/acc ...": where the run went
    assert last.startswith("run: "), last
    return Path(last.split()[1]), result


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """One uninterrupted 3-epoch run (73 steps an epoch), shared by the resume and cluster tests."""
    from helpers import REFERENCE, run_cli

    tmp = tmp_path_factory.mktemp("reference")
    result = run_cli("train.py", *REFERENCE, f"paths.log_dir={tmp}", "run_name=ref", tmp_path=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / "train" / "runs" / "ref"
