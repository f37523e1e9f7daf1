"""Exit statuses and messages of the command line: nothing replayable is a failure, a
load the trace cannot produce is refused, an unusable --out is refused before any replay,
a closed stdout pipe ends quietly, and the live commands without the live extra say what
to install. Offline: the live commands are run with torch made unimportable."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import specreplay.traces
from specreplay.cli import EXIT_PIPE_CLOSED, main

# the shipped sample, wherever the package is installed
SAMPLE = Path(specreplay.traces.__file__).parent / "samples" / "humaneval-fixed16"
N_PROMPTS = 24  # samples in the shipped trace


def _cli(*argv):
    return main([str(a) for a in argv])


def _env():
    # the subprocesses run this checkout's package, whatever the working directory
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


# -- nothing replayable


@pytest.mark.parametrize("command", ["replay", "sweep"])
def test_no_replayable_policy_exits_1(command, capsys):
    flag = "--policy" if command == "replay" else "--grid"
    spec = "fixed(b=7)" if command == "replay" else "fixed(b=5|7)"
    assert _cli(command, SAMPLE, flag, spec, "--bootstrap", 0) == 1
    out = capsys.readouterr().out
    assert "not replayable" in out and "record block size 7" in out


def test_one_replayable_policy_is_success(capsys):
    assert _cli("replay", SAMPLE, "--policy", "fixed(b=7)", "--policy", "ar",
                "--bootstrap", 0, "--json") == 0


def test_report_with_nothing_replayable_exits_1_and_writes_no_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert _cli("report", SAMPLE, "--policy", "fixed(b=7)", "--out", out) == 1
    err = capsys.readouterr().err
    assert "no requested policy could be replayed" in err
    assert not (out / "index.html").exists()


# -- concurrency


def test_concurrency_above_the_prompts_is_refused(capsys):
    assert _cli("replay", SAMPLE, "--policy", "ar", "--concurrency", N_PROMPTS + 1) == 2
    err = capsys.readouterr().err
    assert f"--concurrency {N_PROMPTS + 1} is more than the {N_PROMPTS} prompts" in err
    assert f"pass --concurrency {N_PROMPTS} or less" in err
    assert _cli("sweep", SAMPLE, "--grid", "fixed(b=4|8)", "--concurrency", 1000) == 2
    assert "--concurrency 1000 is more than" in capsys.readouterr().err


def test_concurrency_equal_to_the_prompts_is_allowed():
    import argparse

    from specreplay.sim.cli import _check_concurrency
    args = argparse.Namespace(concurrency=N_PROMPTS, trace=SAMPLE)
    _check_concurrency(args, N_PROMPTS)  # no error: every prompt in flight at once
    args.concurrency = None
    _check_concurrency(args, N_PROMPTS)


# -- --out


@pytest.fixture
def no_replay(monkeypatch):
    """Fail the test if any replay starts: the --out checks must come first."""
    import specreplay.reports.report as report

    def boom(*a, **k):
        raise AssertionError("a replay ran before --out was checked")
    monkeypatch.setattr(report, "replay_traces", boom)


@pytest.mark.parametrize("command", ["report", "demo"])
def test_out_onto_a_file_is_refused_before_any_replay(command, tmp_path, no_replay, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine\n")
    argv = [command, SAMPLE] if command == "report" else [command]
    assert _cli(*argv, "--out", f) == 2
    err = capsys.readouterr().err
    assert f"--out {f} is a file: give a folder" in err
    assert "Traceback" not in err and "not empty" not in err
    assert _cli(*argv, "--out", f / "sub" / "report") == 2
    err = capsys.readouterr().err
    assert f"cannot be created: {f} is a file, not a folder" in err
    assert f.read_text() == "mine\n"


@pytest.mark.parametrize("command", ["replay", "report"])
def test_profile_that_is_a_file_is_called_a_file(command, tmp_path, no_replay, capsys):
    f = tmp_path / "profile.parquet"
    f.write_bytes(b"")
    argv = [command, SAMPLE, "--profile", f] + (["--policy", "ar"] if command == "replay"
                                                else ["--out", tmp_path / "r"])
    assert _cli(*argv) == 2
    err = capsys.readouterr().err
    assert f"--profile {f} is a file: give the profile directory" in err
    assert "does not exist" not in err
    assert _cli(*argv[:3], tmp_path / "none", *argv[4:]) == 2
    assert f"--profile {tmp_path / 'none'} does not exist" in capsys.readouterr().err


def test_out_in_a_read_only_folder_is_refused(tmp_path, no_replay, capsys):
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert _cli("report", SAMPLE, "--out", ro / "report") == 2
        assert f"no write permission in {ro}" in capsys.readouterr().err
    finally:
        ro.chmod(0o755)


def test_merge_out_onto_a_file_says_file(tmp_path, capsys):
    f = tmp_path / "merged"
    f.write_text("")
    assert _cli("trace", "merge", f, SAMPLE) == 2
    err = capsys.readouterr().err
    assert f"{f} is a file" in err and "not empty" not in err


@pytest.mark.live
def test_record_out_onto_a_file_is_refused_before_models_load(tmp_path, capsys):
    pytest.importorskip("torch")  # without it, record says to install the live extra
    f = tmp_path / "trace"
    f.write_text("")
    # the model paths do not exist: reaching them would be a different error
    assert _cli("record", "--target", tmp_path / "no-target", "--draft", tmp_path / "no-draft",
                "--dataset", "humaneval", "--policy", "fixed(b=8)", "--out", f) == 2
    assert f"--out {f} is a file" in capsys.readouterr().err


# -- a closed pipe


def _closed_stdout(argv, cwd):
    """Run the command with its stdout pipe closed by the reader from the start, as
    `... | head -0` does."""
    p = subprocess.Popen([sys.executable, "-m", "specreplay", *map(str, argv)], cwd=cwd,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    p.stdout.close()
    err = p.stderr.read().decode()
    return p.wait(timeout=300), err


def test_closed_pipe_exits_141_without_a_traceback(tmp_path):
    rc, err = _closed_stdout(["replay", SAMPLE, "--policy", "ar", "--bootstrap", 0], tmp_path)
    assert rc == EXIT_PIPE_CLOSED == 141
    assert err == ""


@pytest.mark.slow
def test_closed_pipe_still_writes_the_report(tmp_path):
    out = tmp_path / "report"
    rc, err = _closed_stdout(["report", SAMPLE, "--policy", "ar", "--out", out], tmp_path)
    assert rc == EXIT_PIPE_CLOSED
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert (out / "index.html").stat().st_size > 0


def test_head_reads_the_first_lines(tmp_path):
    """A real shell pipeline into head: the first line is the table's header."""
    cmd = (f"set -o pipefail; {sys.executable} -m specreplay replay {SAMPLE} --policy ar "
           f"--bootstrap 0 | head -n 1")
    r = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, capture_output=True, text=True,
                       env=_env(), timeout=300)
    assert r.stdout.split() == ["tokens/s", "95%", "CI", "TPOT", "ms", "tau", "speedup",
                                "fidelity", "policy"]
    assert r.returncode in (0, EXIT_PIPE_CLOSED)  # 0 when the table fit the pipe's buffer
    assert "Traceback" not in r.stderr


# -- the live commands without the live extra

_NO_TORCH = textwrap.dedent("""
    import sys

    class _NoTorch:
        # a machine where torch was never installed
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoTorch())
""")


def _without_torch(argv, tmp_path):
    site = tmp_path / "no-torch"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_NO_TORCH)
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return subprocess.run([sys.executable, "-m", "specreplay", *map(str, argv)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)


def _live_argv(command, tmp_path):
    models = ["--target", tmp_path / "target", "--draft", tmp_path / "draft"]
    if command == "record":
        return [*models, "--dataset", "humaneval", "--policy", "fixed(b=8)",
                "--out", tmp_path / "trace"]
    if command == "profile":
        return [*models, "--out", tmp_path / "profile", "--quick"]
    trace = tmp_path / "copy"
    if not trace.exists():
        shutil.copytree(SAMPLE, trace)
    if command == "promote":
        return ["--trace", trace, "--policy", "fixed(b=8)", "--out", tmp_path / "runs"]
    return [trace, "--block-sizes", "6"]  # oracle: a block size the trace lacks


@pytest.mark.parametrize("command", ["record", "profile", "promote", "oracle"])
def test_live_commands_without_torch_say_what_to_install(command, tmp_path):
    r = _without_torch([command, *_live_argv(command, tmp_path)], tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"specreplay {command}: this command runs models and needs the live extra "
        "(torch is not installed): pip install 'specreplay[live]'"]
    assert r.stdout == ""


def test_blocker_really_hides_torch(tmp_path):
    """The simulation is honest: torch cannot be imported under it, and the offline
    commands and every --help still work there."""
    site = tmp_path / "no-torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_TORCH)
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    r = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                       env=env)
    assert r.returncode == 1 and "No module named 'torch'" in r.stderr
    for argv in (["--help"], ["record", "--help"], ["oracle", "--help"], ["policies"]):
        r = _without_torch(argv, tmp_path)
        assert r.returncode == 0, (argv, r.stderr)


def test_other_missing_modules_still_raise():
    from specreplay.cli import missing_live_extra
    assert missing_live_extra(ModuleNotFoundError("x", name="torch.nn")) is not None
    assert missing_live_extra(ModuleNotFoundError("x", name="transformers")) is not None
    assert missing_live_extra(ModuleNotFoundError("x", name="torchvision")) is None
    assert missing_live_extra(ModuleNotFoundError("x", name="specreplay.nothing")) is None
