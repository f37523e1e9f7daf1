"""Recording: a run interrupted mid-way and resumed equals an uninterrupted one; the
record and oracle commands write traces that `trace check` accepts."""
import json
from dataclasses import dataclass

import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.live.recorder import ModelInfo, RecordSettings, Recorder, first_divergence  # noqa: E402
from live_pair import PROMPTS, VOCAB, save_pair, tiny_pair  # noqa: E402


@dataclass
class P:
    dataset_index: int
    ids: list


PROMPT_SET = [P(10 + i, p) for i, p in enumerate(PROMPTS + [[2, 7, 1, 8, 2, 8]])]


class Interrupt(Exception):
    pass


def _settings(out, **kw):
    base = dict(out=out, policy="fixed(b=6)+recycle(mode=dense)", max_new_tokens=24,
                oracle_block_sizes=(4, 6), probes=("refine(steps=2, only_below=1.0)",), check_ar=True)
    return RecordSettings(**{**base, **kw})


def _info():
    return ModelInfo(target={"id": "tiny-target", "files": {}}, draft={"id": "tiny-draft", "files": {},
                     "block_size": 8, "mask_token_id": VOCAB - 1},
                     setup={"device": "cpu", "backend": "hf", "dtype": "float32"},
                     dataset={"name": "unit", "split": None, "indices": [p.dataset_index for p in PROMPT_SET],
                              "template": "raw"})


def _table(d, name, cols):
    rows = pq.read_table(d / name, columns=cols).to_pylist()
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def test_resume_after_an_interrupted_recording(tmp_path):
    from specreplay.traces.check import check_trace
    target, draft = tiny_pair()
    whole = tmp_path / "whole"
    summary = Recorder(target, draft, _settings(whole), _info()).record(PROMPT_SET, progress=False)
    assert summary["recorded"] == 3 and summary["divergent"] == 0

    cut = tmp_path / "cut"

    def die_after_first(result):
        if result.sample == 1:
            raise Interrupt
    with pytest.raises(Interrupt):
        Recorder(target, draft, _settings(cut), _info()).record(PROMPT_SET, progress=False,
                                                                after_sample=die_after_first)
    assert json.loads((cut / "run.json").read_text())["complete"] is False
    with pytest.raises(Exception, match="--resume"):
        Recorder(target, draft, _settings(cut), _info()).record(PROMPT_SET, progress=False)
    summary = Recorder(target, draft, _settings(cut, resume=True), _info()).record(PROMPT_SET, progress=False)
    assert summary["skipped"] == 2 and summary["recorded"] == 1
    for name, cols in (("samples", ["sample", "output_ids", "ar_divergence", "n_cycles"]),
                       ("cycles", ["sample", "cycle", "tau", "drafted", "probe"]),
                       ("oracle", ["sample", "start", "block_size", "probe", "prev_offset", "true_rank"])):
        assert _table(cut, name, cols) == _table(whole, name, cols)
    report = check_trace(cut)
    assert report["ok"], report


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) == -1
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """The tiny pair saved as model folders, with a one-character-per-token tokenizer."""
    return save_pair(tmp_path_factory.mktemp("models"))


def _cli(*argv):
    from specreplay.cli import main
    return main([str(a) for a in argv])


def test_record_and_oracle_commands_end_to_end(model_dirs, tmp_path, capsys):
    from specreplay.traces.check import check_trace
    out = tmp_path / "trace"
    rc = _cli("record", "--target", model_dirs / "target", "--draft", model_dirs / "draft",
              "--dataset", model_dirs / "prompts.jsonl", "--policy", "fixed(b=6)+tree(topk=2, depth=2)",
              "--out", out, "--max-new-tokens", 16, "--oracle-block-sizes", "4,6", "--probes", "recycle,refine",
              "--check-ar", "--device", "cpu", "--quiet")
    assert rc == 0, capsys.readouterr().err
    assert "plain AR decoding: 0" in capsys.readouterr().out
    run = json.loads((out / "run.json").read_text())
    assert run["complete"] and run["live_policy"].startswith("fixed(b=6)+tree(")
    assert len(run["oracle"]["probes"]) == 3 and run["target"]["files"]
    assert check_trace(out)["ok"]
    rc = _cli("oracle", out, "--block-sizes", "4,8", "--probes", "refine", "--device", "cpu")
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["oracle"]["block_sizes"] == [4, 6, 8]  # added to, nothing dropped
    sizes = set(pq.read_table(out / "oracle", columns=["block_size"]).column("block_size").to_pylist())
    assert sizes == {4, 6, 8}
    assert check_trace(out)["ok"]
    rc = _cli("oracle", out, "--block-sizes", "4,8", "--replace", "--device", "cpu")
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["oracle"]["block_sizes"] == [4, 8]
    assert run["oracle"]["dropped"][-1]["block_sizes"] == [6]
    sizes = set(pq.read_table(out / "oracle", columns=["block_size"]).column("block_size").to_pylist())
    assert sizes == {4, 8}
    assert check_trace(out)["ok"]


def test_record_refuses_bad_input_in_one_sentence(model_dirs, tmp_path, capsys):
    rc = _cli("record", "--target", model_dirs / "target", "--draft", model_dirs / "draft",
              "--dataset", model_dirs / "prompts.jsonl", "--policy", "fixed(b=6)+tree(topk=6)",
              "--out", tmp_path / "x", "--device", "cpu")
    assert rc == 2
    err = capsys.readouterr().err
    assert "--oracle-top-k 6" in err and "Traceback" not in err
    rc = _cli("record", "--target", model_dirs / "target", "--draft", model_dirs / "draft",
              "--dataset", model_dirs / "prompts.jsonl", "--policy", "fixed(b=6)",
              "--out", tmp_path / "y", "--oracle-block-sizes", "4,x", "--device", "cpu")
    assert rc == 2 and "comma-separated integers" in capsys.readouterr().err


def test_sharded_recording_merges_into_one_trace(model_dirs, tmp_path, monkeypatch, capsys):
    """Under torchrun each rank records prompts rank, rank+W, ... into OUT/rank-<r>
    (the ranks are run one after the other here, with the environment torchrun sets);
    `trace merge` joins them into a trace that holds every prompt once."""
    from specreplay.traces.check import check_trace
    from specreplay.traces.reader import Trace
    out = tmp_path / "run"
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        assert _cli("record", "--target", model_dirs / "target", "--draft", model_dirs / "draft",
                    "--dataset", model_dirs / "prompts.jsonl", "--policy", "fixed(b=6)",
                    "--out", out, "--max-new-tokens", 12, "--oracle-block-sizes", "6",
                    "--device", "cpu", "--quiet") == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    parts = [Trace.open(out / f"rank-{r}") for r in (0, 1)]
    assert [sorted(p.samples.column("dataset_index").to_pylist()) for p in parts] == [[0, 2], [1]]
    assert _cli("trace", "merge", tmp_path / "all", out / "rank-0", out / "rank-1") == 0
    merged = Trace.open(tmp_path / "all")
    assert sorted(merged.samples.column("dataset_index").to_pylist()) == [0, 1, 2]
    assert check_trace(tmp_path / "all")["ok"]


def test_cycle_logits_agree_with_the_cycles_they_describe(tmp_path):
    """Greedy: along the chosen path the target's top-1 at offset o is the token committed
    at S[start+o+1], the draft's top-1 at offset o >= 1 is the drafted token, and every
    kept logit lies below its row's log-sum-exp."""
    import numpy as np
    target, draft = tiny_pair()
    Recorder(target, draft, _settings(tmp_path / "t", policy="fixed(b=6)+tree(topk=2, depth=2)",
                                      check_ar=False), _info()).record(PROMPT_SET, progress=False)
    out = {r["sample"]: r["output_ids"] for r in _table(tmp_path / "t", "samples", ["sample", "output_ids"])}
    cycles = {(r["sample"], r["cycle"]): r for r in
              _table(tmp_path / "t", "cycles", ["sample", "cycle", "start", "tau", "block_size", "drafted"])}
    rows = _table(tmp_path / "t", "cycle_logits", None)
    assert len(rows) == sum(c["block_size"] for c in cycles.values())
    for r in rows:
        c = cycles[(r["sample"], r["cycle"])]
        o = r["offset"]
        if o < c["tau"]:
            assert r["target_ids"][0] == out[r["sample"]][c["start"] + o + 1]
            assert max(r["target_logits"]) <= r["target_lse"] + 1e-5
        if o >= 1:
            assert r["draft_ids"][0] == c["drafted"][o - 1]
            assert np.all(np.diff(r["draft_logits"]) <= 0) and max(r["draft_logits"]) <= r["draft_lse"] + 1e-5
        else:
            assert r["draft_ids"] is None
