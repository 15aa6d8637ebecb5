"""XLA SPMD through Lightning (xtune.hardware.spmd) on 1, 2 and 4 XLA:CPU devices - not a TPU.

The number of XLA:CPU devices is fixed when torch_xla starts (CPU_NUM_DEVICES) and SPMD cannot be
switched off again, so every run is a process of its own: this file run as a script is the worker
(`python test_spmd.py JOB.json`, forked from the tests' server of preloaded modules). The runs are
xtune's own recipe (run_training on the composed config, as train.py runs it: trainer=xla_cpu,
whose default strategy is xla_spmd, on hardware.xla_cpu_devices devices) with probes attached; the
tests compare what they recorded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

pytest.importorskip("torch_xla", reason="torch_xla is not installed here: the XLA tests run in their own "
                    "environment with the [tpu] extra and PJRT_DEVICE=CPU (see .ci/run)")

pytestmark = pytest.mark.slow

#: quickstart-like: digits 0-4 (586 training images = 9 batches of 64 + a ragged 10, which does not
#: split evenly over 4 devices), test_resnet at 32 px from scratch, AdamW, fp32 so that device counts
#: can be compared; data loaded in the main process (a mid-epoch resume with loader workers replays
#: epoch 0's order: Lightning 2.6 starts the loader iterator before it sets the sampler's epoch);
#: the step loss logged at step 0 only (a step that logs it is another graph, compiled the first time:
#: at step 50 with the profile's log_every_n_steps, which would look like a late recompile here)
EPOCHS, STEPS = 5, 10  # optimizer steps per epoch: 9 of 64 images and the ragged 10
COMMON = ["experiment=quickstart", "trainer=xla_cpu", "data.classes=[0,1,2,3,4]", "data.batch_size=64",
          "data.drop_last=false", "data.num_workers=0", f"trainer.max_epochs={EPOCHS}", "trainer.precision=32-true",
          "trainer.log_every_n_steps=100", "logger=csv", "~callbacks.early_stopping"]


def strategy(fsdp: bool = False) -> str:
    """The names configs use (registered by xtune.hardware.spmd.register_names at Trainer build)."""
    return f"trainer.strategy={'xla_spmd_fsdp' if fsdp else 'xla_spmd'}"


def spmd_run(tmp, name: str, devices: int, *overrides: str, job: str = "fit", run_dir: Path | None = None,
             stop_at_step: int | None = None) -> dict:
    """Run the worker in a process of its own on `devices` XLA:CPU devices (hardware.xla_cpu_devices:
    the profile sets CPU_NUM_DEVICES, not the test); return what it recorded.

    stop_at_step: the run sends itself SIGTERM after that optimizer step (a preempted TPU VM).
    """
    from helpers import offline_env, run

    out = tmp / f"{name}.json"
    if devices:
        overrides = (*overrides, f"hardware.xla_cpu_devices={devices}")
    spec = {"job": job, "overrides": list(overrides), "run_dir": str(run_dir or tmp / name), "out": str(out),
            "stop_at_step": stop_at_step}
    (tmp / f"{name}.job.json").write_text(json.dumps(spec))
    env = offline_env(tmp, PJRT_DEVICE="CPU", TF_CPP_MIN_LOG_LEVEL=2)
    env.pop("CPU_NUM_DEVICES", None)
    started = time.time()
    result = run(["python", __file__, str(tmp / f"{name}.job.json")], tmp_path=tmp, env=env, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    recorded = json.loads(out.read_text())
    recorded["wall_s"] = round(time.time() - started, 1)
    return recorded


def split(spec: str) -> list[int] | None:
    """How many pieces each dimension is cut into, from an HLO sharding like {devices=[4,1]0,1,2,3};
    None for {replicated}."""
    match = re.search(r"devices=\[([\d,]+)\]", spec)
    return [int(n) for n in match.group(1).split(",")] if match else None


# ---------------------------------------------------------------------------------------------
# data parallel on 1, 2 and 4 devices: the same run


@pytest.fixture(scope="module")
def dp(tmp_path_factory):
    """The same run (same global batch) on 1, 2 and 4 devices data parallel, on 4 with FSDPv2
    ("fsdp"), and the 2-device run preempted at step 15 ("first", continued by the resume test):
    five processes at once (each is mostly one core; two cores are kept busy)."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("spmd_dp")
    jobs = {1: (1, False), 2: (2, False), 4: (4, False), "fsdp": (4, True)}
    with ThreadPoolExecutor(len(jobs) + 1) as pool:
        runs = {key: pool.submit(spmd_run, tmp, f"run_{key}", n, *COMMON, strategy(fsdp))
                for key, (n, fsdp) in jobs.items()}
        runs["first"] = pool.submit(spmd_run, tmp, "first", 2, *COMMON, strategy(), run_dir=tmp / "preempted",
                                    stop_at_step=15)
        return {key: run.result() for key, run in runs.items()}


def test_the_same_run_on_1_2_and_4_devices_gives_the_same_losses_and_accuracy(dp):
    """XLA on CPU, not a TPU: SPMD data parallelism (and FSDPv2) is the single-device computation, split.

    Tolerance: the first loss (same weights, same batch) differs only by the order of the cross-device
    sums (measured 1e-7 relative). AdamW then turns rounding noise into whole updates where a gradient
    is noise (a conv weight direction that the following BatchNorm cancels: measured, the weights after
    step 1 differ by exactly +-2 lr in a few such elements), and training from scratch amplifies it
    (a plain torch_xla loop without Lightning does the same: 1e-7 -> 1e-2 in 12 steps). So later the
    runs are held to the same curve: each epoch's mean loss within 10 % + 0.02 (measured over 5 epochs:
    at most 0.0065 apart, 9 % of that allowance), and the same test accuracy within 2.5 points (4 of 180
    images) once converged (measured: 98.9 % on 1 device, 98.3 % on 2, 4 and with fsdp; 4 epochs
    reach only 91 %). On several devices BatchNorm runs xtune's partitionable version
    (hardware/spmd_batchnorm.py), on one XLA's own: the same computation, the same curve.
    """
    one = torch.tensor(dp[1]["losses"])
    assert len(one) == EPOCHS * STEPS and torch.isfinite(one).all()
    for key, n in ((2, 2), (4, 4), ("fsdp", 4)):
        run = dp[key]
        assert run["mesh_devices"] == n and run["runtime_devices"] == n
        assert run["lightning_world_size"] == 1 and run["torch_xla_world_size"] == 1  # one process
        losses = torch.tensor(run["losses"])
        relative = (losses - one).abs() / one
        assert relative[0] < 1e-5 and relative[:3].max() < 1e-3, (key, relative[:3])
        ours, theirs = losses.view(EPOCHS, STEPS).mean(1), one.view(EPOCHS, STEPS).mean(1)
        assert ((ours - theirs).abs() <= 0.1 * theirs + 0.02).all(), (key, ours, theirs)
        assert abs(run["test_acc"] - dp[1]["test_acc"]) <= 0.025, (key, run["test_acc"], dp[1]["test_acc"])
    assert dp[1]["test_acc"] > 0.95  # and it learned the digits
    assert one[-10:].mean() < one[:10].mean() / 5


def test_the_batch_is_split_along_the_data_axis_and_parameters_are_replicated(dp):
    """XLA on CPU, not a TPU: read back from torch_xla's sharding annotations, not assumed."""
    for n in (2, 4):
        specs = dp[n]["specs"]
        assert split(specs["images"]) == [n, 1, 1, 1], specs["images"]  # (batch, C, H, W): batch cut n ways
        assert split(specs["targets"]) == [n], specs["targets"]
        assert specs["images_shape"] == [64, 3, 32, 32]  # the module sees the global batch
        for name in ("largest_parameter", "head_bias", "largest_parameter_after", "optimizer_state_after"):
            assert specs[name] in ("{replicated}", ""), (name, specs[name])
        # the ragged last batch of 10: split over 2; over 4 it does not divide and goes replicated
        # (XLA's SPMD partitioner aborts on a scatter-add over unevenly split rows: see spmd.py)
        assert split(specs["ragged_images"]) == ([2, 1, 1, 1] if n == 2 else None), specs["ragged_images"]
        assert specs["ragged_images_shape"] == [10, 3, 32, 32]


def test_steady_state_compiles_nothing_and_a_ragged_batch_costs_one_compile(dp):
    """XLA on CPU, not a TPU: per device count, no step compiles after the first epoch and nothing at
    all in the last; the ragged last batch (10 of 64) compiles one graph, once; sharding adds no graphs."""
    for n in (1, 2, 4, "fsdp"):
        report = dp[n]["compiles"]
        assert report["step_compiles_per_epoch"][1:] == [0] * (EPOCHS - 1), (n, report)
        assert report["boundary_compiles_per_epoch"][-1] == 0, (n, report)
        assert report["unexpected_fallback_ops"] == []
        per_step = dp[n]["compiles_per_step"]
        # step 0 (creates the optimizer state), step 1 (the steady step), step 9 (the ragged batch)
        assert [(step, count) for step, count in enumerate(per_step) if count] == [(0, 1), (1, 1), (9, 1)], \
            (n, per_step)
    assert dp[1]["compiles"]["compiles_per_epoch"] == dp[2]["compiles"]["compiles_per_epoch"] \
        == dp[4]["compiles"]["compiles_per_epoch"] == dp["fsdp"]["compiles"]["compiles_per_epoch"]


# ---------------------------------------------------------------------------------------------
# checkpoints: CPU-loadable, and a resume under SPMD continues exactly


def test_a_checkpoint_written_under_spmd_loads_into_a_cpu_model(dp):
    checkpoint = torch.load(Path(dp[4]["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu",
                            weights_only=True)
    state = checkpoint["state_dict"]
    final = torch.load(dp[4]["final_weights"], weights_only=True)  # gathered from the devices at the end
    assert state.keys() == final.keys()
    assert all(t.device.type == "cpu" for t in state.values())
    assert all(torch.equal(state[k], final[k]) for k in state)
    import timm

    model = timm.create_model("test_resnet", num_classes=5)
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    model.load_state_dict(backbone)  # strict: every key and shape of a plain CPU model


def test_eval_on_cpu_reproduces_the_spmd_test_accuracy(tmp_path, dp):
    """The laptop's view: eval.py on the CPU with the checkpoint of a 4-device SPMD run."""
    from helpers import offline_env, run_cli

    best = Path(dp[4]["run_dir"]) / "checkpoints" / "best.ckpt"
    result = run_cli("eval.py", f"ckpt_path={best}", "trainer=cpu", f"hydra.run.dir={tmp_path / 'eval'}",
                     tmp_path=tmp_path, env=offline_env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    evaluated = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert evaluated["metrics"]["test/acc"] == pytest.approx(dp[4]["test_acc"], abs=1 / 180)


def test_a_run_preempted_under_spmd_resumes_exactly(tmp_path, dp):
    """SIGTERM mid-epoch under SPMD (xtune's GracefulStop saves last.ckpt), then the run continued
    from it: the per-step losses and final weights are the uninterrupted 2-device run's, bit for bit."""
    first = dp["first"]
    run_dir = Path(first["run_dir"])
    assert first["interrupted"]
    last = run_dir / "checkpoints" / "last.ckpt"
    rest = spmd_run(tmp_path, "rest", 2, *COMMON, strategy(), f"ckpt_path={last}", run_dir=run_dir)
    stopped = rest["resumed_from_step"]
    assert 15 <= stopped < 20  # mid-epoch 1
    assert first["losses"][:stopped] + rest["losses"] == dp[2]["losses"]
    a = torch.load(last, weights_only=True)["state_dict"]
    b = torch.load(Path(dp[2]["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rest["test_acc"] == dp[2]["test_acc"]


def test_train_py_runs_spmd_on_two_devices_in_bf16(tmp_path):
    """Through the front door, as a user types it (XLA:CPU, not a TPU): trainer=xla_cpu runs what
    trainer=tpu runs, SPMD by default (XLASPMDStrategy + XLAPrecision, bf16-true), on 2 devices."""
    from helpers import offline_env, run_cli, summary

    run_dir = tmp_path / "run"
    env = offline_env(tmp_path, TF_CPP_MIN_LOG_LEVEL=2)
    env.pop("CPU_NUM_DEVICES", None)
    env.pop("PJRT_DEVICE", None)  # the profile sets it
    result = run_cli("train.py", "experiment=quickstart", "trainer=xla_cpu", "hardware.xla_cpu_devices=2",
                     "trainer.max_epochs=2", "logger=csv", f"hydra.run.dir={run_dir}", tmp_path=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ran = summary(run_dir)
    assert ran["hardware"]["strategy"] == "XLASPMDStrategy" and ran["hardware"]["world_size"] == 1
    assert ran["hardware"]["devices"] == 2  # the mesh; Lightning's own view is one device
    assert ran["hardware"]["device_type"] == "xla" and ran["hardware"]["device_name"].startswith("XLA:CPU")
    import yaml

    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]
    assert recorded["strategy"] == "xla_spmd" and recorded["devices"] == 1  # the profile's default, resolved
    assert ran["precision"] == "bf16-true"
    assert all(torch.isfinite(torch.tensor(row["train/loss"])) for row in ran["history"])
    assert ran["metrics"]["test/acc"] > 0.5  # ten digits, two epochs from scratch in bf16
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    weights = [t for k, t in state.items() if k.startswith("backbone.") and t.is_floating_point()]
    # XLAPrecision's bf16-true keeps float32 tensors whose device storage is bf16 (XLA_USE_BF16):
    # every weight comes back as a bf16 value
    assert all(t.dtype == torch.float32 and torch.equal(t, t.bfloat16().float()) for t in weights)
    import timm

    timm.create_model("test_resnet", num_classes=10).load_state_dict(
        {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})


# ---------------------------------------------------------------------------------------------
# FSDPv2: parameters and optimizer state sharded over the same axis


def test_fsdp_shards_parameters_and_optimizer_state(dp):
    """XLA on CPU, not a TPU: fsdp=True on 4 devices (its curve is checked with the data-parallel runs)."""
    fsdp = dp["fsdp"]
    specs, shape = fsdp["specs"], fsdp["largest_parameter_shape"]
    expected = [4 if d == shape.index(max(shape)) else 1 for d in range(len(shape))]  # FSDPv2's rule
    assert split(specs["largest_parameter"]) == expected, (specs["largest_parameter"], shape)
    assert split(specs["largest_parameter_after"]) == expected  # still sharded after the optimizer steps
    assert split(specs["optimizer_state_after"]) == expected  # AdamW's exp_avg follows its parameter
    assert split(specs["head_bias"]) == [4]  # 5 values over 4 devices: XLA pads
    assert split(specs["images"]) == [4, 1, 1, 1]
    # the checkpoint holds whole tensors, gathered from the shards, loadable into a CPU model
    state = torch.load(Path(fsdp["run_dir"]) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    final = torch.load(fsdp["final_weights"], weights_only=True)
    assert all(torch.equal(state[k], final[k]) for k in state)
    import timm

    timm.create_model("test_resnet", num_classes=5).load_state_dict(
        {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")})


def test_device_count_names_and_batch_size_refusals(tmp_path):
    """XLASPMDStrategy(cpu_devices=N) / hardware.xla_cpu_devices=N set the XLA:CPU device count; it is
    fixed when torch_xla's runtime starts, so another count later in the process is refused (one clear
    line, naming the fix); the registered names build the strategies; BatchNorm under SPMD computes what
    torch's does; a batch that does not split over the devices is refused instead of running replicated."""
    ran = spmd_run(tmp_path, "cpu_devices", 0, job="cpu_devices")
    assert ran["mesh_devices"] == 4
    for refused in (ran["second"], ran["second_profile"]):
        assert refused.startswith("XtuneConfigError: 2 XLA:CPU device(s) asked, but torch_xla already runs with "
                                  "4 XLA:CPU device(s) in this process"), refused
        assert refused.endswith("run in a fresh process") and "\n" not in refused
    # the strategy names register_names() gives configs (trainer.strategy=xla_spmd ...)
    assert ran["names"] == {"xla_spmd": ["XLASPMDStrategy", False], "xla_spmd_fsdp": ["XLASPMDStrategy", True],
                            "xla_spawn": "XLAStrategy"}
    # BatchNorm under SPMD (xtune.hardware.spmd_batchnorm) is torch's BatchNorm: outputs, running
    # statistics and gradients of a batch split over 4 devices match the CPU's within float rounding
    assert ran["batch_norm"]["installed"]
    assert max(ran["batch_norm"]["max_abs_diff"].values()) < 1e-4, ran["batch_norm"]
    assert ran["odd_batch"] == ("XtuneConfigError: batch size 6 (data.batch_size / data.eval_batch_size) does not "
                                "split over the 4 XLA devices of this host: SPMD cuts each batch along the data "
                                "axis; use a multiple of 4")


# ---------------------------------------------------------------------------------------------
# a pod slice: one process per host


def test_each_host_of_a_pod_loads_its_own_half_of_every_global_batch(tmp_path):
    """The per-host data sharding, in isolation: two hosts are simulated in one process (hosts() patched);
    XLA:CPU cannot form a real two-process mesh (see the next test)."""
    seen = spmd_run(tmp_path, "pod", 0, job="pod")  # two XLA:CPU devices per "host": XLASPMDStrategy(cpu_devices=2)
    host0, host1 = seen["hosts"]
    assert host0["is_global_zero"] and not host1["is_global_zero"]
    assert host0["sampler"] == host1["sampler"] == "DistributedSamplerWrapper"
    assert host0["batch_sizes"] == host1["batch_sizes"] == [8] * 4  # each host 8 of a global batch of 16
    a, b = set(host0["indices"]), set(host1["indices"])
    assert not a & b and a | b == set(range(64))
    assert host0["checkpoints"] == ["last.ckpt"] and host1["checkpoints"] == []  # only host 0 writes


def test_two_processes_on_xla_cpu_do_not_form_one_mesh(tmp_path):
    """Evidence for what is left: torch_xla 2.9's built-in CPU client (pjrt_registry.cc, CPU branch:
    GetTfrtCpuClient(async, CPU_NUM_DEVICES), no coordinator or key-value store) ignores
    PJRT_LOCAL_PROCESS_COUNT/RANK, MASTER_ADDR and XLA_COORDINATOR_PORT: each process is a pod of
    one. When this fails, torch_xla has learned multi-process CPU SPMD: test the pod for real."""
    from helpers import offline_env

    code = ("import torch_xla.runtime as xr; xr.use_spmd(); "
            "print(xr.process_index(), xr.process_count(), xr.global_runtime_device_count())")
    processes = []
    for rank in (0, 1):
        env = offline_env(tmp_path, PJRT_DEVICE="CPU", CPU_NUM_DEVICES=2, PJRT_LOCAL_PROCESS_COUNT=2,
                          PJRT_LOCAL_PROCESS_RANK=rank, LOCAL_WORLD_SIZE=2, LOCAL_RANK=rank, RANK=rank,
                          WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", XLA_COORDINATOR_PORT=29517,
                          TF_CPP_MIN_LOG_LEVEL=2)
        processes.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=300)[0].split() for p in processes]
    assert outputs == [["0", "1", "2"], ["0", "1", "2"]]  # two separate one-host meshes, not one of 4


# ---------------------------------------------------------------------------------------------
# the worker: one run in this process, with CPU_NUM_DEVICES devices


def _worker(job: dict) -> dict:
    import pytorch_lightning as pl
    import torch_xla
    import torch_xla.debug.metrics as met
    import torch_xla.runtime as xr

    from helpers import compose
    from xtune.errors import XtuneInterrupted
    from xtune.hardware import xla
    from xtune.hardware.xla import CompileWatch
    from xtune.tasks.train import run_training

    def spec(tensor) -> str:
        return torch_xla._XLAC._get_xla_sharding_spec(tensor) or "{replicated}"

    class Probe(pl.Callback):
        """Per-step losses (read after the run: no host sync inside it), sharding specs, step times."""

        def __init__(self):
            self.losses, self.compiles, self.specs, self.step_times, self.resumed_from_step = [], [], {}, [], None
            self._t0 = None

        def on_train_start(self, trainer, pl_module):
            self.resumed_from_step = trainer.global_step

        def _parameters(self, pl_module):
            named = dict(pl_module.named_parameters())
            largest = max(named, key=lambda k: named[k].numel())
            head_bias = [k for k in named if k.endswith("bias")][-1]
            return named, largest, head_bias

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._compiled = int(met.counter_value("UncachedCompile") or 0)
            images, targets = batch
            if "images" not in self.specs:
                named, largest, head_bias = self._parameters(pl_module)
                self.specs.update(images=spec(images), targets=spec(targets), images_shape=list(images.shape),
                                  largest_parameter=spec(named[largest]), head_bias=spec(named[head_bias]))
                self.largest_shape = list(named[largest].shape)
            if images.shape[0] != trainer.datamodule.batch_size and "ragged_images" not in self.specs:
                self.specs.update(ragged_images=spec(images), ragged_images_shape=list(images.shape))
            if trainer.current_epoch >= 1 and batch_idx == 1:  # steady state: time batches 1..8
                xla.wait()
                self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(outputs["loss"].detach())
            self.compiles.append(int(met.counter_value("UncachedCompile") or 0) - self._compiled)
            if trainer.global_step == job.get("stop_at_step"):
                os.kill(os.getpid(), signal.SIGTERM)
            if self._t0 is not None and batch_idx == 8:
                xla.wait()
                self.step_times.append((time.perf_counter() - self._t0) / 8)
                self._t0 = None

        def on_train_end(self, trainer, pl_module):
            named, largest, _ = self._parameters(pl_module)
            state = trainer.optimizers[0].state[named[largest]]  # momentum (SGD) or exp_avg (AdamW)
            buffer = next(v for v in state.values() if torch.is_tensor(v) and v.shape == named[largest].shape)
            self.specs.update(largest_parameter_after=spec(named[largest]), optimizer_state_after=spec(buffer))
            final = {k: v.cpu() for k, v in pl_module.state_dict().items()}
            torch.save(final, Path(job["run_dir"]) / "final_weights.pt")

    if job["job"] == "pod":
        return _pod(job)
    if job["job"] == "cpu_devices":
        return _cpu_devices(job)
    cfg = compose("train", job["overrides"], output_dir=Path(job["run_dir"]))
    probe, watch = Probe(), CompileWatch(warmup_epochs=1)
    resuming = any(o.startswith("ckpt_path=") for o in job["overrides"])  # CompileWatch counts whole epochs
    try:
        summary, interrupted = run_training(cfg, extra_callbacks=[probe] if resuming else [probe, watch]), False
    except XtuneInterrupted:
        summary, interrupted = {"metrics": {}}, True
    return {
        "losses": [float(loss) for loss in torch.stack(probe.losses).cpu()],
        "test_acc": summary["metrics"].get("test/acc"),
        "interrupted": interrupted,
        "specs": probe.specs,
        "largest_parameter_shape": probe.largest_shape,
        "compiles": None if resuming else watch.report(),
        "compiles_per_step": probe.compiles,
        "precision": summary.get("precision"),
        "step_time_s": sorted(probe.step_times)[len(probe.step_times) // 2] if probe.step_times else None,
        "step_times_s": probe.step_times,
        "resumed_from_step": probe.resumed_from_step,
        "mesh_devices": int(xr.global_runtime_device_count()),
        "runtime_devices": int(xr.addressable_runtime_device_count()),
        "torch_xla_world_size": int(xr.world_size()),
        "lightning_world_size": int(summary.get("hardware", {}).get("world_size", -1)),
        "run_dir": job["run_dir"],
        "final_weights": str(Path(job["run_dir"]) / "final_weights.pt"),
    }


def _cpu_devices(job: dict) -> dict:
    import pytorch_lightning as pl
    from pytorch_lightning.strategies import StrategyRegistry
    from torch.utils.data import DataLoader, TensorDataset

    from helpers import compose
    from xtune import hardware
    from xtune.errors import XtuneConfigError
    from xtune.hardware.spmd import XLASPMDStrategy
    from xtune.hardware.xla import XLACPUAccelerator

    def refusal(call) -> str:
        try:
            call()
        except XtuneConfigError as error:
            return f"{type(error).__name__}: {error}"
        return "accepted"

    assert "CPU_NUM_DEVICES" not in os.environ
    mesh_devices = XLASPMDStrategy(cpu_devices=4).num_devices
    second = refusal(lambda: XLASPMDStrategy(cpu_devices=2))
    # a multirun over device counts in one process: the profile refuses the second count
    cfg = compose("train", ["experiment=quickstart", "trainer=xla_cpu", "hardware.xla_cpu_devices=2"],
                  output_dir=Path(job["run_dir"]))
    second_profile = refusal(lambda: hardware.prepare(cfg))
    names = {}  # the names a config can hold as plain strings (hardware.prepare registered them)
    for name in ("xla_spmd", "xla_spmd_fsdp"):
        strategy = pl.Trainer(accelerator=XLACPUAccelerator(), devices=1, strategy=name, logger=False).strategy
        names[name] = [type(strategy).__name__, strategy.fsdp]
    names["xla_spawn"] = StrategyRegistry["xla_spawn"]["strategy"].__name__

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0][:, None]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    # torch's BatchNorm (CPU) against the one an SPMD process uses, on a batch split over the 4 devices
    import torch.nn.functional as F
    import torch_xla
    import torch_xla.distributed.spmd as xs

    from xtune.hardware import spmd_batchnorm

    torch.manual_seed(0)
    x, weight, bias = torch.randn(8, 3, 5, 5) * 3 + 1, torch.rand(3) + 0.5, torch.randn(3)
    results = {}
    for device in ("cpu", "xla"):
        target = torch_xla.device() if device == "xla" else "cpu"
        inputs = [t.detach().to(target).requires_grad_() for t in (x, weight, bias)]
        if device == "xla":
            xs.mark_sharding(inputs[0], xs.get_1d_mesh("data"), ("data", None, None, None))
        stats = [torch.zeros(3), torch.ones(3)]
        stats = [t.to(inputs[0].device) for t in stats]
        out = F.batch_norm(inputs[0], *stats, inputs[1], inputs[2], training=True, momentum=0.1, eps=1e-5)
        (out * torch.arange(out.numel(), device=out.device).view_as(out).float() / 100).sum().backward()
        results[device] = {"out": out, "running_mean": stats[0], "running_var": stats[1],
                           **{f"grad_{i}": t.grad for i, t in enumerate(inputs)}}
    differences = {k: float((results["xla"][k].cpu() - v).abs().max()) for k, v in results["cpu"].items()}
    batch_norm = {"installed": F.batch_norm is spmd_batchnorm.batch_norm, "max_abs_diff": differences}

    trainer = pl.Trainer(accelerator=XLACPUAccelerator(), devices=1, strategy="xla_spmd", max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(TensorDataset(torch.zeros(12)), batch_size=6)
    odd_batch = refusal(lambda: trainer.fit(Tiny(), loader))
    return {"mesh_devices": mesh_devices, "second": second, "second_profile": second_profile, "names": names,
            "odd_batch": odd_batch, "batch_norm": batch_norm}


def _pod(job: dict) -> dict:
    """Two hosts of a pod, one after the other in this process: hosts() says which one we are."""
    from unittest import mock

    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from xtune.data.datasets import EpochShuffle
    from xtune.hardware import spmd
    from xtune.hardware.xla import XLACPUAccelerator

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(1, 1)
            self.seen, self.sizes = [], []

        def training_step(self, batch, batch_idx):
            index, _ = batch
            self.seen.append(index)
            self.sizes.append(int(index.shape[0]))
            return self.layer(index.float()[:, None]).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    class Indexed(TensorDataset):
        def __getitem__(self, item):  # EpochShuffle yields (index, augmentation seed)
            return super().__getitem__(item[0])

    results = []
    for host in (0, 1):
        with mock.patch.object(spmd, "hosts", return_value=(host, 2)):
            folder = Path(job["run_dir"]) / f"host{host}"
            model = Tiny()
            data = Indexed(torch.arange(64), torch.zeros(64))
            loader = DataLoader(data, batch_size=8, sampler=EpochShuffle(64, 0, torch.Generator()))
            strategy = spmd.XLASPMDStrategy(cpu_devices=2)
            trainer = pl.Trainer(accelerator=XLACPUAccelerator(), devices=1, strategy=strategy,
                                 max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                                 default_root_dir=folder,
                                 callbacks=[pl.callbacks.ModelCheckpoint(dirpath=folder, save_top_k=0, save_last=True)])
            trainer.fit(model, loader)
            results.append({
                "is_global_zero": trainer.is_global_zero,
                "sampler": type(trainer.train_dataloader.sampler).__name__,
                "batch_sizes": model.sizes,
                "indices": [int(i) for i in torch.cat(model.seen).cpu()],
                "checkpoints": sorted(p.name for p in folder.glob("*.ckpt")),
            })
    return {"hosts": results}


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    Path(job["out"]).write_text(json.dumps(_worker(job)))
