"""promote end to end on the tiny pair (CPU, float32): record a trace with the oracle and
a profile, promote policies on the same and on held-out prompts, and check the ledger.
Greedy on CPU is exact, so the predicted tau must equal the measured tau."""
import pytest

pytest.importorskip("torch")
pytestmark = pytest.mark.live

from specreplay.reports.ledger import SHIPPED_LEDGER, ledger_summary, read_ledger  # noqa: E402
from live_pair import save_pair  # noqa: E402


def _cli(*argv):
    from specreplay.cli import main
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = save_pair(tmp_path_factory.mktemp("pair"))
    trace = root / "trace"
    assert _cli("record", "--target", root / "target", "--draft", root / "draft",
                "--dataset", root / "prompts.jsonl", "--policy", "fixed(b=6)", "--out", trace,
                "--max-samples", 2, "--max-new-tokens", 24, "--oracle-block-sizes", "4,6,8",
                "--device", "cpu", "--quiet") == 0
    assert _cli("profile", "--target", root / "target", "--draft", root / "draft",
                "--out", trace, "--quick", "--device", "cpu") == 0
    return root, trace


def test_promote_same_prompts_matches_predicted_tau_exactly(recorded, tmp_path):
    root, trace = recorded
    ledger = tmp_path / "ledger.csv"
    ledger.write_text(SHIPPED_LEDGER.read_text().splitlines()[0] + "\n")
    specs = ["fixed(b=4)", "fixed(b=8)+gate(min_prob=0.3)"]
    argv = ["promote", "--trace", trace, "--ledger", ledger, "--out", tmp_path / "runs",
            "--device", "cpu"]
    for s in specs:
        argv += ["--policy", s]
    assert _cli(*argv) == 0
    rows = read_ledger(ledger)
    assert [r["policy"] for r in rows] == specs
    for r in rows:
        assert r["prompts"] == "same"
        assert r["measured_tau"] == pytest.approx(r["predicted_tau"], abs=1e-12)
        assert r["measured_tokens_per_s"] > 0 and r["predicted_tokens_per_s"] > 0
    summary = ledger_summary(rows)
    assert summary  # the report's error table can be built from promoted rows


def test_promote_heldout_prompts_and_refuses_unreplayable(recorded, tmp_path, capsys):
    root, trace = recorded
    ledger = tmp_path / "ledger.csv"
    ledger.write_text(SHIPPED_LEDGER.read_text().splitlines()[0] + "\n")
    assert _cli("promote", "--trace", trace, "--ledger", ledger, "--out", tmp_path / "runs",
                "--policy", "fixed(b=4)", "--prompts", "heldout", "--device", "cpu") == 0
    (row,) = read_ledger(ledger)
    assert row["prompts"] == "heldout" and row["measured_tau"] >= 1
    # block size 12 has no oracle rows: one sentence, no live run, nothing appended
    assert _cli("promote", "--trace", trace, "--ledger", ledger, "--out", tmp_path / "runs",
                "--policy", "fixed(b=12)", "--device", "cpu") == 2
    assert "not replayable" in capsys.readouterr().err
    assert len(read_ledger(ledger)) == 1


def test_interleaved_and_sequential_orders_decode_the_same(recorded, tmp_path):
    """The order of turns changes only when each cycle ran, never what it decoded: both
    orders give every policy the same outputs and cycles, and the ledger says which
    order measured a row."""
    from specreplay.traces.reader import Trace
    root, trace = recorded
    specs = ["fixed(b=4)", "fixed(b=8)+tree(topk=2, depth=2)"]
    outputs = {}
    for order in ("interleaved", "sequential"):
        ledger = tmp_path / f"ledger-{order}.csv"
        ledger.write_text(SHIPPED_LEDGER.read_text().splitlines()[0] + "\n")
        argv = ["promote", "--trace", trace, "--ledger", ledger, "--out", tmp_path / order,
                "--device", "cpu", "--order", order]
        for s in specs:
            argv += ["--policy", s]
        assert _cli(*argv) == 0
        rows = read_ledger(ledger)
        assert [r["policy"] for r in rows] == specs
        assert all(f"order={order}" in r["note"] for r in rows)
        outputs[order] = [
            (Trace.open(r["measured_trace"]).samples.column("output_ids").to_pylist(),
             Trace.open(r["measured_trace"]).cycles.column("accepted").to_pylist())
            for r in rows]
    assert outputs["interleaved"] == outputs["sequential"]


def test_turns_interleave_every_run_on_every_prompt_of_every_repeat():
    from specreplay.live.promote import turns
    t = turns(3, 2, 2, "interleaved")
    assert sorted(t) == [(k, r, i) for k in range(3) for r in range(2) for i in range(2)]
    # each (repeat, prompt) is decoded by all runs back to back, the first one rotating
    blocks = [t[j:j + 3] for j in range(0, len(t), 3)]
    assert all(len({(r, i) for _, r, i in b}) == 1 and sorted(k for k, _, _ in b) == [0, 1, 2]
               for b in blocks)
    assert [b[0][0] for b in blocks] == [0, 1, 1, 2]
    assert turns(2, 2, 2, "sequential")[:4] == [(0, 0, 0), (0, 0, 1), (0, 1, 0), (0, 1, 1)]


def test_promote_repeats_measure_noise_and_speedup_into_a_ledger_in_the_working_directory(
        recorded, tmp_path, monkeypatch):
    from specreplay.sim.replay import measured, replay
    from specreplay.traces.reader import Trace
    root, trace = recorded
    shipped = SHIPPED_LEDGER.read_bytes()
    monkeypatch.chdir(tmp_path)
    spec = "fixed(b=4)"
    assert _cli("promote", "--trace", trace, "--out", tmp_path / "runs", "--device", "cpu",
                "--policy", spec, "--repeats", 2) == 0
    assert SHIPPED_LEDGER.read_bytes() == shipped  # never written into the package
    (row,) = read_ledger(tmp_path / "ledger.csv")
    (pred,) = replay(trace, [spec])
    assert row["repeats"] == 2 and row["label"] == pred.label  # the quick profile extrapolates
    live = Trace.open(row["measured_trace"])
    n = Trace.open(trace).samples.num_rows
    assert live.samples.num_rows == 2 * n  # repeat r of prompt i is sample r * n + i
    outs = live.samples.column("output_ids").to_pylist()
    assert outs[:n] == outs[n:]
    m = measured(live, bootstrap=1000)
    assert row["measured_tokens_per_s"] == pytest.approx(m["tokens_per_s"])
    assert row["measured_ci_low"] == pytest.approx(m["ci_low"])
    assert row["measured_ci_low"] <= row["measured_tokens_per_s"] <= row["measured_ci_high"]
    # the speedup's baseline is the ar that ran in the same turns
    ar = measured(tmp_path / "runs" / "ar-same")
    assert Trace.open(tmp_path / "runs" / "ar-same").samples.num_rows == 2 * n
    assert row["measured_speedup"] == pytest.approx(ar["tpot_s"] / m["tpot_s"])
    assert row["predicted_speedup"] == pytest.approx(pred.speedup)


def test_promote_on_prompts_of_another_dataset(recorded, tmp_path, capsys):
    import json
    from specreplay.traces.reader import Trace
    root, trace = recorded
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in ("hgfedcba", "aabbccdd")))
    ledger = tmp_path / "l.csv"
    assert _cli("promote", "--trace", trace, "--ledger", ledger, "--out", tmp_path / "runs",
                "--device", "cpu", "--policy", "fixed(b=4)", "--prompts", "heldout",
                "--dataset", other, "--repeats", 1) == 0
    (row,) = read_ledger(ledger)
    assert row["prompts"] == "heldout" and f"prompts from {other}" in row["note"]
    live = Trace.open(row["measured_trace"])
    assert live.run["dataset"]["name"] == str(other) and live.samples.num_rows == 2
    assert _cli("promote", "--trace", trace, "--ledger", ledger, "--out", tmp_path / "runs2",
                "--device", "cpu", "--policy", "fixed(b=4)", "--dataset", other) == 2
    assert "--prompts heldout" in capsys.readouterr().err
