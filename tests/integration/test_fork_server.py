"""The fork server that runs the tests' CLI commands (helpers.run) must look like a fresh `python`."""

from helpers import PRELOAD, run


def test_a_command_sees_what_a_fresh_python_sees(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import multiprocessing, os, sys\n"
                     "print(multiprocessing.get_start_method(), os.getcwd(), sys.argv, __name__)\n")
    fresh = run(["python", str(probe), "a=1"], tmp_path=tmp_path, cwd=tmp_path, fresh=True)
    forked = run(["python", str(probe), "a=1"], tmp_path=tmp_path, cwd=tmp_path)
    assert fresh.returncode == forked.returncode == 0, (fresh.stderr, forked.stderr)
    # a start method inherited from the server made every DataLoader start its workers through a
    # new fork server, re-importing torch in each: ~12 s per loader
    assert forked.stdout == fresh.stdout


def test_a_command_inherits_every_preloaded_module_frozen(tmp_path):
    """Every PRELOAD module is imported (the server skips one it cannot import without a word), and
    a forked run freezes the heap it inherits (helpers._run_in_child): its full collections then skip
    torch's, timm's and Lightning's objects (~0.7-1 s a run)."""
    probe = tmp_path / "probe.py"
    probe.write_text(f"import gc, sys\nprint(gc.get_freeze_count(), [m for m in {PRELOAD!r} if m not in sys.modules])\n")
    forked = run(["python", str(probe)], tmp_path=tmp_path, cwd=tmp_path)
    assert forked.returncode == 0, forked.stderr
    frozen, missing = forked.stdout.split(" ", 1)
    assert int(frozen) > 100_000
    assert missing.strip() == "[]"
