"""One installed name: a wheel built from this tree holds the single top-level package
``specreplay``, and installed into a fresh virtual environment it passes offline tests run
from a folder that holds ``models/`` and ``sim/`` packages of its own (neither shadows the
other). Running it writes nothing into the installed package: ``promote``'s default ledger
is ``ledger.csv`` in the working directory, and the shipped ledger stays as installed."""
import base64
import csv
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# offline tests that take the package from wherever it is installed
SUITE = ["test_offline_imports.py", "test_policies_spec.py", "test_traces.py",
         "test_traces_errors.py", "test_sim_acceptance.py", "test_oracle_plan.py"]
USER_PACKAGE = "MINE = True  # a user's own package, not specreplay's\n"


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the tree as git sees it (tracked and new files), so
    the build leaves nothing in the checkout."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tmp = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    src = tmp / "src"
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", tmp / "dist", src], capture_output=True, text=True,
                       env=_clean_env())
    assert r.returncode == 0, r.stderr
    (whl,) = (tmp / "dist").glob("specreplay-*.whl")
    return whl


def test_wheel_has_one_top_level_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/RECORD"))
        top_level = z.read(f"{info}/top_level.txt").decode().split()
        record = [row[0] for row in csv.reader(z.read(f"{info}/RECORD").decode().splitlines())]
    assert top_level == ["specreplay"]
    assert {n.split("/")[0] for n in names} == {"specreplay", info}
    assert {n.split("/")[0] for n in record} == {"specreplay", info}
    # every stage is a subpackage; the offline demo's data ships, the checkpoints do not
    for stage in ("traces", "policies", "sim", "reports", "models", "live"):
        assert f"specreplay/{stage}/__init__.py" in names
    assert "specreplay/reports/ledger.csv" in names
    assert "specreplay/traces/samples/humaneval-fixed16/run.json" in names
    assert not [n for n in names if n.endswith(".safetensors")]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """(python of a fresh venv with the wheel installed, a user's folder to run in). The
    dependencies come from this interpreter's site-packages through a .pth file: added as
    plain path entries, their own .pth files (an editable specreplay) are not run."""
    tmp = tmp_path_factory.mktemp("venv")
    env_dir = tmp / "env"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site_dir = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    r = subprocess.run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q",
                        wheel], capture_output=True, text=True, env=_clean_env())
    assert r.returncode == 0, r.stderr
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p) != site_dir]
    (site_dir / "zz_deps.pth").write_text("\n".join(deps) + "\n")
    user = tmp / "user"
    for name in ("models", "sim", "tests"):
        (user / name).mkdir(parents=True)
    (user / "models" / "__init__.py").write_text(USER_PACKAGE)
    (user / "sim" / "__init__.py").write_text(USER_PACKAGE)
    for name in SUITE:
        shutil.copy2(ROOT / "tests" / name, user / "tests" / name)
    (user / "pytest.ini").write_text(textwrap.dedent("""\
        [pytest]
        markers =
            live: needs torch
            slow: takes more than a few seconds
    """))
    return py, user, site_dir


def _run(py, user, code):
    r = subprocess.run([py, "-c", code], cwd=user, capture_output=True, text=True,
                       env=_clean_env())
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_installed_package_and_user_packages_do_not_shadow_each_other(installed):
    py, user, site_dir = installed
    out = _run(py, user, textwrap.dedent("""
        import sys
        sys.path.insert(0, "")  # the user's folder first, as `python -m` and scripts have it
        import models, sim
        import specreplay, specreplay.models, specreplay.sim, specreplay.sim.replay
        print(models.MINE, sim.MINE)
        print(specreplay.__file__)
        print(specreplay.models.__file__)
        print(specreplay.sim.__file__)
    """)).split("\n")
    assert out[0] == "True True"
    for path in out[1:4]:
        assert Path(path).is_relative_to(site_dir / "specreplay"), path


def test_offline_suite_passes_against_the_installed_wheel(installed):
    py, user, site_dir = installed
    r = subprocess.run([py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-m", "not slow and not live", "tests",
                        "-o", "addopts=", "-W", "ignore::DeprecationWarning"],
                       cwd=user, capture_output=True, text=True, env=_clean_env())
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and " failed" not in r.stdout
    # the suite ran the installed package, not a checkout
    out = _run(py, user, "import specreplay.traces; print(specreplay.traces.__file__)")
    assert Path(out.strip()).is_relative_to(site_dir)


def test_promote_ledger_defaults_to_the_working_directory(installed):
    py, user, site_dir = installed
    out = _run(py, user, textwrap.dedent("""
        from pathlib import Path
        from specreplay.cli import build_parser
        from specreplay.reports.ledger import SHIPPED_LEDGER
        args = build_parser().parse_args(["promote", "--trace", "t", "--policy", "ar"])
        print(Path(args.ledger).resolve())
        print(SHIPPED_LEDGER.resolve())
    """)).split("\n")
    assert Path(out[0]) == (user / "ledger.csv").resolve()
    assert Path(out[1]).is_relative_to(site_dir / "specreplay")


def test_demo_runs_from_the_installed_wheel_and_changes_no_installed_file(installed):
    py, user, site_dir = installed
    r = subprocess.run([py.parent / "specreplay", "demo", "--out", user / "demo"], cwd=user,
                       capture_output=True, text=True, env=_clean_env())
    assert r.returncode == 0, r.stderr
    assert (user / "demo" / "index.html").stat().st_size > 0
    # every installed file still has the hash pip recorded
    (record,) = site_dir.glob("specreplay-*.dist-info/RECORD")
    changed = []
    for name, digest, _ in csv.reader(record.read_text().splitlines()):
        if not digest:
            continue
        algo, want = digest.split("=", 1)
        got = base64.urlsafe_b64encode(hashlib.new(algo, (site_dir / name).read_bytes())
                                       .digest()).rstrip(b"=").decode()
        if got != want:
            changed.append(name)
    assert changed == []
    new = [p for p in (site_dir / "specreplay").rglob("*")
           if p.is_file() and "__pycache__" not in p.parts]
    listed = {row[0] for row in csv.reader(record.read_text().splitlines())}
    assert [str(p.relative_to(site_dir)) for p in new
            if str(p.relative_to(site_dir)) not in listed] == []
