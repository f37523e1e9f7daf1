"""The measurement layer of record and promote: an untimed warm-up decode before anything
is recorded, and run.json provenance (whether the checkout was dirty)."""
import json
import subprocess

import pytest

from specreplay.traces.identity import git_dirty


def test_git_dirty_reports_uncommitted_changes(tmp_path):
    assert git_dirty(tmp_path) is None  # no checkout: unknown, never an error
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path)}
    run = lambda *a: subprocess.run(["git", *a], cwd=tmp_path, check=True, capture_output=True, env=env)  # noqa: E731
    run("init", "-q")
    (tmp_path / "f.py").write_text("x = 1\n")
    run("add", "f.py")
    run("commit", "-qm", "c")
    assert git_dirty(tmp_path) is False
    (tmp_path / "f.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True
    run("checkout", "-q", "f.py")
    (tmp_path / "new.py").write_text("")
    assert git_dirty(tmp_path) is True


def test_run_json_records_git_dirty(tmp_path):
    from specreplay.traces.synthetic import make_trace
    t = make_trace(tmp_path / "t", output_lengths=(20,), block_sizes=(4,), live_policy="fixed(b=4)")
    run = json.loads((t / "run.json").read_text())
    assert "git_dirty" in run and run["git_dirty"] in (True, False, None)
    assert run["git_dirty"] == git_dirty()


def test_a_copied_tree_states_its_commit(tmp_path, monkeypatch):
    """A tree copied without its git metadata records the commit its copier states,
    with the stated dirtiness (unknown when not stated), never the copy's stale git."""
    from specreplay.traces.synthetic import make_trace
    sha = "ab" * 20
    monkeypatch.setenv("SPECREPLAY_GIT_COMMIT", sha)
    monkeypatch.setenv("SPECREPLAY_GIT_DIRTY", "0")
    run = json.loads((make_trace(tmp_path / "a", output_lengths=(20,), block_sizes=(4,),
                                 live_policy="fixed(b=4)") / "run.json").read_text())
    assert (run["git_commit"], run["git_dirty"]) == (sha, False)
    monkeypatch.setenv("SPECREPLAY_GIT_COMMIT", "abc1234")  # a short sha: not a stated commit
    run = json.loads((make_trace(tmp_path / "b", output_lengths=(20,), block_sizes=(4,),
                                 live_policy="fixed(b=4)") / "run.json").read_text())
    assert (run["git_commit"], run["git_dirty"]) == (None, None)


@pytest.mark.live
@pytest.mark.parametrize("warmup", [True, False])
def test_record_warms_up_once_untimed_before_the_first_sample(tmp_path, warmup):
    pytest.importorskip("torch")
    from specreplay.live.recorder import ModelInfo, RecordSettings, Recorder
    from specreplay.traces.reader import Trace
    from live_pair import PROMPTS, VOCAB, tiny_pair

    class P:
        def __init__(self, i, ids):
            self.dataset_index, self.ids = i, ids
    prompts = [P(i, p) for i, p in enumerate(PROMPTS)]
    target, draft = tiny_pair()
    info = ModelInfo(target={"id": "t", "files": {}},
                     draft={"id": "d", "files": {}, "block_size": 8, "mask_token_id": VOCAB - 1},
                     setup={"device": "cpu"}, dataset={"name": "unit", "indices": [0, 1]})
    rec = Recorder(target, draft, RecordSettings(out=tmp_path / "t", policy="fixed(b=6)",
                                                 max_new_tokens=16, oracle=False, warmup=warmup), info)
    calls = []
    run = rec.decoder.run

    def counted(sample, ids, progress=None):
        calls.append(list(ids))
        return run(sample, ids, progress)
    rec.decoder.run = counted
    rec.record(prompts, progress=False)
    # the warm-up decodes the first prompt once more, and nothing of it is recorded
    assert calls == ([PROMPTS[0]] if warmup else []) + [PROMPTS[0], PROMPTS[1]]
    t = Trace.open(tmp_path / "t")
    assert t.samples.num_rows == 2 and sorted(t.cycles.column("sample").to_pylist())[-1] == 1
