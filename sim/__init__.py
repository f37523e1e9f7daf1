"""Replay recorded speculative-decoding traces to predict any policy, on a CPU.

    from specreplay.sim.replay import replay
    preds = replay("traces/samples/humaneval-fixed16", ["fixed(b=8)", "ewma"])

* ``sim.acceptance``: what a cycle accepts, looked up in the trace's oracle (exact for
  greedy traces, Monte Carlo for sampled ones), and the DraftView policies see;
* ``sim.cost``: seconds of draft/verify passes from a latency profile, optionally scaled
  to the trace's own live cycles (``timing="calibrated"``), or the recorded seconds of
  the live cycles (``timing="recorded"``);
* ``sim.engine``: the SimPy discrete-event replay, single stream or serving (batched
  GPU steps); ``sim.fastpath``: the vectorised single-stream fixed-block replay;
* ``sim.replay``: ``replay()`` / ``Replayer`` and the ``Prediction`` they return;
* ``sim.sweep``: grids of knob values replayed in parallel processes;
* ``sim.cli``: ``specreplay replay`` and ``specreplay sweep``.
"""
