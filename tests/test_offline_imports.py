"""The offline half must import without torch: a laptop user installs no CUDA."""
import subprocess
import sys
import textwrap


def test_offline_half_never_imports_torch():
    code = textwrap.dedent("""
        import sys, importlib, pkgutil
        for pkg in ("specreplay.traces", "specreplay.policies", "specreplay.sim", "specreplay.reports"):
            m = importlib.import_module(pkg)
            for info in pkgutil.walk_packages(m.__path__, pkg + "."):
                importlib.import_module(info.name)
        import specreplay.cli
        specreplay.cli.build_parser()
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=__file__.rsplit("/tests/", 1)[0])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"
