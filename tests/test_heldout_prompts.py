"""scripts/heldout_prompts.py: held-out prompts of another kind (function headers and
docstrings) from files the fixture pair never trained on."""
import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("heldout_prompts", ROOT / "scripts" / "heldout_prompts.py")
hp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hp)

SOURCE = '''
import os

def short(x):
    """Too short."""
    return x


class Box:
    @staticmethod
    def area(w: float,
             h: float) -> float:
        """Area of a w by h box, in the units of w and h squared."""
        return w * h

def nodoc():
    return 1
'''


def test_header_prompts_cut_the_def_through_the_docstring():
    (name, prompt), = hp.header_prompts(SOURCE, limit=5, min_doc=20, max_chars=1000)
    assert name == "Box.area"
    assert prompt == ('def area(w: float,\n         h: float) -> float:\n'
                      '    """Area of a w by h box, in the units of w and h squared."""\n')
    assert hp.header_prompts("def broken(:\n", 5, 1, 100) == []


def test_written_prompts_come_from_held_out_files_only(tmp_path):
    out = tmp_path / "p.jsonl"
    assert hp.main([str(out), "--n", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    cut = hp.heldout_fraction() * 2**64
    assert all(hp.corpus.name_hash(r["source"], "split") < cut for r in rows)
    assert all(r["prompt"].lstrip().startswith(("def ", "async def ")) for r in rows)
    assert hp.main([str(tmp_path / "q.jsonl"), "--n", "100000"]) == 2  # more than exist
    assert not (tmp_path / "q.jsonl").exists()
