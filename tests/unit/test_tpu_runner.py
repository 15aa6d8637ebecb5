"""xtune-tpu prints (and would run) exactly the gcloud commands a user would type."""

import shlex

import pytest

from xtune.launch.tpu_vm import main, parse, plan

TRAIN = ["python", "train.py", "trainer=tpu", "model=vit", "data.root=/data/my pets", "run_name=vit-pets"]


def commands(*flags):
    return [command for _, command in plan(parse([*flags, "--", *TRAIN]))]


def test_single_vm_dry_run(capsys):
    assert main(["--name", "tpu-1", "--zone", "us-west4-a", "--accelerator-type", "v5litepod-8",
                 "--dry-run", "--", *TRAIN]) == 0
    out = capsys.readouterr().out
    lines = [line[2:] for line in out.splitlines() if line.startswith("$ ")]
    assert lines[0] == "git archive --format=tar.gz --output=/tmp/xtune-code.tar.gz HEAD"
    assert lines[1] == ("gcloud compute tpus tpu-vm scp /tmp/xtune-code.tar.gz tpu-1:xtune.tar.gz "
                        "--zone=us-west4-a --worker=all")
    run = shlex.split(lines[-1])
    assert run[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tpu-1", "--zone=us-west4-a", "--worker=all"]
    remote = run[8].removeprefix("--command=")
    assert remote.startswith("cd ~/xtune && . .venv/bin/activate && PJRT_DEVICE=TPU python train.py trainer=tpu")
    assert shlex.split(remote.split("PJRT_DEVICE=TPU ", 1)[1]) == TRAIN  # the user's words, quoting kept
    assert not any("queued-resources" in line for line in lines)


def test_pod_slice_created_as_spot_queued_resource():
    steps = commands("--name", "pod", "--zone", "us-central2-b", "--accelerator-type", "v4-32", "--project", "p1",
                     "--create", "--spot", "--setup")
    create = steps[0]
    assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod"]
    assert "--node-id=pod" in create and "--accelerator-type=v4-32" in create and "--spot" in create
    assert "--runtime-version=tpu-ubuntu2204-base" in create and "--project=p1" in create
    assert steps[1][:5] == ["gcloud", "compute", "tpus", "queued-resources", "describe"]
    install = [c for c in steps if any("pip install -q -e '.[tpu]'" in part for part in c)]
    assert install and "--worker=all" in install[0]
    # every command that touches the workers reaches all of them (a multi-host pod needs that)
    assert all("--worker=all" in c for c in steps if "tpu-vm" in c)


def test_reserved_and_runtime_choice():
    create = commands("--name", "r", "--zone", "z", "--accelerator-type", "v5p-8", "--create", "--reserved")[0]
    assert "--reserved" in create and "--runtime-version=v2-alpha-tpuv5" in create


def test_command_is_required(capsys):
    with pytest.raises(SystemExit):
        parse(["--name", "x", "--zone", "z"])
    assert "give the command to run after --" in capsys.readouterr().err


def test_a_training_run_gets_one_run_directory_across_workers_and_reruns():
    command = ["python", "train.py", "trainer=tpu", "model=vit"]
    first = parse(["--name", "pod", "--zone", "z", "--", *command]).command
    again = parse(["--name", "pod", "--zone", "z", "--", *command]).command
    other = parse(["--name", "pod", "--zone", "z", "--", *command, "optim.lr=1e-4"]).command
    assert first[:-1] == command and first[-1].startswith("run_name=pod-")
    assert again == first  # a rerun after a spot preemption finds the same run directory
    assert other[-1] != first[-1]
    # a name the user chose, a sweep, or another command is left alone
    assert parse(["--name", "pod", "--zone", "z", "--", *TRAIN]).command == TRAIN
    assert parse(["--name", "p", "--zone", "z", "--", "python", "train.py", "-m", "seed=1,2"]).command[-1] == "seed=1,2"
    assert parse(["--name", "p", "--zone", "z", "--", "python", "-c", "print(1)"]).command[-1] == "print(1)"


def test_without_gcloud_one_line_names_the_fix(monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert main(["--name", "t", "--zone", "z", "--", *TRAIN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: gcloud not found: install the Google Cloud CLI")
    assert main(["--name", "t", "--zone", "z", "--dry-run", "--", *TRAIN]) == 0  # a dry run needs no gcloud


def test_a_pod_slice_runs_the_same_command_on_every_host_one_spmd_process_each(capsys):
    """v4-32 is a pod slice of 4 hosts: one gcloud ssh --worker=all runs the identical command on each;
    trainer=tpu's default strategy (xla_spmd) makes that one process per host, and --dry-run says so."""
    command = ["python", "train.py", "trainer=tpu", "model=vit", "run_name=vit-pod"]
    assert main(["--name", "pod", "--zone", "us-central2-b", "--accelerator-type", "v4-32", "--no-copy",
                 "--dry-run", "--", *command]) == 0
    out = capsys.readouterr().out.splitlines()
    runs = [i for i, line in enumerate(out) if line.startswith("$ ")]
    assert len(runs) == 1  # --no-copy: only the run step, once for all workers
    assert out[runs[0] - 1] == ("# run the same command on every worker at once: one process per host, "
                                "SPMD over all chips of the slice (xtune's XLASPMDStrategy)")
    ssh = shlex.split(out[runs[0]][2:])
    assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"] and "--worker=all" in ssh
    remote = next(word for word in ssh if word.startswith("--command=")).removeprefix("--command=")
    assert shlex.split(remote.split("PJRT_DEVICE=TPU ", 1)[1]) == command  # no per-worker rank or address


def test_the_dry_run_says_when_each_chip_gets_a_process():
    spawn = plan(parse(["--name", "p", "--zone", "z", "--no-copy", "--", *TRAIN, "trainer.strategy=xla_spawn"]))
    assert spawn[-1][0].endswith("one process per chip on each host (Lightning's XLAStrategy, "
                                 "trainer.strategy=xla_spawn)")
    other = plan(parse(["--name", "p", "--zone", "z", "--no-copy", "--", "python", "-c", "print(1)"]))
    assert other[-1][0].endswith(": the command as given")
