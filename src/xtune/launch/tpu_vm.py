"""xtune-tpu: run one xtune command on every worker of a Cloud TPU VM or pod slice.

    xtune-tpu --name my-v4 --zone us-central2-b --accelerator-type v4-32 --create --spot --setup \\
        -- python train.py trainer=tpu model=vit run_name=vit-pets paths.log_dir=/mnt/gcs/xtune

Steps (each printed, and only printed with --dry-run): create the TPU through a queued resource
(spot or reserved) and wait until it is ACTIVE; copy the code (the git-tracked files) to every
worker; install it with the [tpu] extra; run the same command on all workers at once
(`gcloud compute tpus tpu-vm ssh --worker=all`), which is how torch_xla runs on a multi-host pod:
one process per host (trainer=tpu's default strategy, xla_spmd, drives every chip of its host and
the hosts form one mesh), or with trainer.strategy=xla_spawn one process per chip on every host.
A spot TPU that is preempted is deleted: run the same xtune-tpu command again - with --create it
queues a new one - and the run continues from its last checkpoint (resume=auto), provided the
run directory is on storage that outlives the VM (a GCS bucket mounted with gcsfuse, a filestore).
A training command without `run_name=` gets one made of the TPU name and a hash of the command, so
every worker of a pod writes to the same run directory and the same command finds it again.
This is a thin wrapper over gcloud on purpose: every command is one a user could type.
"""

from __future__ import annotations

import argparse
import hashlib
import shlex
import shutil
import subprocess
import sys
import time

REMOTE_DIR = "~/xtune"


#: TPU VM software per TPU generation (https://cloud.google.com/tpu/docs/runtimes)
RUNTIMES = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5p": "v2-alpha-tpuv5",
            "v6e": "v2-alpha-tpuv6e"}


def default_runtime(accelerator_type: str) -> str:
    return RUNTIMES.get(accelerator_type.split("-")[0], "tpu-ubuntu2204-base")


def gcloud(*args: str, project: str | None) -> list[str]:
    command = ["gcloud", "compute", "tpus", *args]
    return command + ([f"--project={project}"] if project else [])


def plan(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
    """The commands to run, in order, with what each is for."""
    where = [f"--zone={args.zone}"]
    steps = []
    if args.create:
        create = gcloud("queued-resources", "create", args.name, f"--node-id={args.name}", *where,
                        f"--accelerator-type={args.accelerator_type}", f"--runtime-version={args.runtime_version}",
                        project=args.project)
        if args.spot:
            create.append("--spot")
        if args.reserved:
            create.append("--reserved")
        steps.append(("create the TPU (queued resource)", create))
        steps.append(("wait until it is ACTIVE", gcloud("queued-resources", "describe", args.name, *where,
                                                        "--format=value(state.state)", project=args.project)))
    if not args.no_copy:
        steps.append(("pack the code (git-tracked files)",
                      ["git", "archive", "--format=tar.gz", f"--output={args.archive}", "HEAD"]))
        steps.append(("copy it to every worker", gcloud("tpu-vm", "scp", args.archive, f"{args.name}:xtune.tar.gz",
                                                        *where, "--worker=all", project=args.project)))
        unpack = f"mkdir -p {REMOTE_DIR} && tar -xzf ~/xtune.tar.gz -C {REMOTE_DIR}"
        steps.append(("unpack it", ssh(args, unpack)))
    if args.setup:
        install = (f"cd {REMOTE_DIR} && python3 -m venv .venv && . .venv/bin/activate && "
                   "pip install -q --upgrade pip && pip install -q -e '.[tpu]'")
        steps.append(("install xtune with the [tpu] extra on every worker", ssh(args, install)))
    run = f"cd {REMOTE_DIR} && . .venv/bin/activate && PJRT_DEVICE=TPU {shlex.join(args.command)}"
    steps.append((f"run the same command on every worker at once: {processes(args.command)}", ssh(args, run)))
    return steps


def processes(command: list[str]) -> str:
    """What runs on each worker, as the command's trainer.strategy decides (configs/trainer/tpu.yaml)."""
    strategy = next((word.split("=", 1)[1] for word in command if word.startswith("trainer.strategy=")), None)
    if strategy is None and "trainer=tpu" not in command:
        return "the command as given"
    if strategy in ("xla_spawn", "xla"):
        return "one process per chip on each host (Lightning's XLAStrategy, trainer.strategy=xla_spawn)"
    if strategy in (None, "xla_spmd", "xla_spmd_fsdp"):
        return "one process per host, SPMD over all chips of the slice (xtune's XLASPMDStrategy)"
    return f"trainer.strategy={strategy}"


def with_stable_run_name(command: list[str], tpu_name: str) -> list[str]:
    """A single training run gets `run_name=<tpu>-<hash of the command>` unless it names itself."""
    is_train = any(word.endswith(("train.py", "xtune-train")) for word in command)
    is_sweep = any(word in ("-m", "--multirun") for word in command)
    if not is_train or is_sweep or any(word.startswith("run_name=") for word in command):
        return command
    digest = hashlib.sha1(shlex.join(command).encode()).hexdigest()[:8]
    return [*command, f"run_name={tpu_name}-{digest}"]


def ssh(args: argparse.Namespace, remote: str) -> list[str]:
    return gcloud("tpu-vm", "ssh", args.name, f"--zone={args.zone}", "--worker=all", f"--command={remote}",
                  project=args.project)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="xtune-tpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="TPU (and queued resource) name")
    parser.add_argument("--zone", required=True, help="e.g. us-central2-b")
    parser.add_argument("--project", default=None, help="GCP project (default: gcloud's)")
    parser.add_argument("--accelerator-type", default="v5litepod-8", help="e.g. v5litepod-8, v4-32 (a pod slice)")
    parser.add_argument("--runtime-version", default=None, help="TPU VM software (default: per TPU generation)")
    parser.add_argument("--create", action="store_true", help="create the TPU through a queued resource first")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--spot", action="store_true", help="a spot TPU (cheaper, preemptible)")
    kind.add_argument("--reserved", action="store_true", help="use the project's reservation")
    parser.add_argument("--setup", action="store_true", help="create a venv and pip install -e '.[tpu]' on the workers")
    parser.add_argument("--no-copy", action="store_true", help="do not copy the code (already there)")
    parser.add_argument("--archive", default="/tmp/xtune-code.tar.gz", help=argparse.SUPPRESS)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--wait-timeout", type=int, default=3600, help="seconds to wait for ACTIVE")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- the xtune command to run on every worker")
    args = parser.parse_args(argv)
    if args.command and args.command[0] == "--":
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the command to run after --, e.g. -- python train.py trainer=tpu model=resnet")
    args.runtime_version = args.runtime_version or default_runtime(args.accelerator_type)
    args.command = with_stable_run_name(args.command, args.name)
    return args


def preflight(args: argparse.Namespace) -> str | None:
    """What stops gcloud before it starts, as one line: no gcloud, no account, no project."""
    if shutil.which("gcloud") is None:
        return ("gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) "
                "and run gcloud auth login, or see the commands with --dry-run")

    def value(*words: str) -> str:
        result = subprocess.run(["gcloud", *words], capture_output=True, text=True, timeout=60)
        return result.stdout.strip() if result.returncode == 0 else ""

    if not value("auth", "list", "--filter=status:ACTIVE", "--format=value(account)"):
        return "gcloud has no active account: run gcloud auth login (or activate a service account), or see --dry-run"
    if not args.project and value("config", "get-value", "project") in ("", "(unset)"):
        return ("gcloud has no project set: pass --project=MY_PROJECT or run gcloud config set project MY_PROJECT "
                "(see the commands with --dry-run)")
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    problem = None if args.dry_run else preflight(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    for what, command in plan(args):
        print(f"# {what}\n$ {shlex.join(command)}", flush=True)
        if args.dry_run:
            continue
        if what.startswith("wait"):
            deadline = time.time() + args.wait_timeout
            while True:
                state = subprocess.run(command, capture_output=True, text=True).stdout.strip()
                if state == "ACTIVE":
                    break
                if state in ("FAILED", "SUSPENDED") or time.time() > deadline:
                    print(f"error: queued resource {args.name} is {state or 'unknown'}; see gcloud compute tpus "
                          "queued-resources describe", file=sys.stderr)
                    return 2
                time.sleep(30)
            continue
        result = subprocess.run(command)
        if result.returncode != 0:
            print(f"error: step '{what}' failed with exit code {result.returncode}", file=sys.stderr)
            return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
