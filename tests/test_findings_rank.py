"""reports.rank: Kendall's tau-b and its p-value without scipy, checked against examples
worked by hand and, where scipy is installed, against scipy.stats.kendalltau."""
import math
import subprocess
import sys

import numpy as np
import pytest

from specreplay.reports.rank import kendall_tau


def test_no_ties_exact_by_hand():
    # y = 3 1 2 5 4 against 1..5: discordant pairs (1,2) (1,3) (4,5), 7 concordant, so
    # tau = (7 - 3) / 10; the exact null distribution of inversions for n = 5 is the
    # Mahonian row 1 4 9 15 20 22 20 15 9 4 1 (120 permutations), and 3 inversions or
    # fewer happen in 1 + 4 + 9 + 15 = 29 of them: two-sided p = 2 * 29 / 120
    r = kendall_tau([1, 2, 3, 4, 5], [3, 1, 2, 5, 4])
    assert r.method == "exact"
    assert r.tau == pytest.approx(0.4, abs=1e-15)
    assert r.p == pytest.approx(58 / 120, abs=1e-15)


def test_perfect_and_reversed_order():
    r = kendall_tau([1, 2, 3, 4], [10, 20, 30, 40])
    assert (r.tau, r.p) == (1.0, pytest.approx(2 / math.factorial(4)))
    r = kendall_tau([1, 2, 3, 4], [4, 3, 2, 1])
    assert (r.tau, r.p) == (-1.0, pytest.approx(2 / math.factorial(4)))


def test_ties_tau_b_and_normal_p_by_hand():
    # x = 1 1 2 3, y = 1 2 2 3: of the 6 pairs, one is tied in x and one in y, the other
    # four concordant: tau-b = 4 / sqrt((6 - 1)(6 - 1)) = 0.8. Variance of S with ties:
    # (n(n-1)(2n+5) - sum t(t-1)(2t+5) - sum u(u-1)(2u+5)) / 18
    #   + sum t(t-1) * sum u(u-1) / (2 n(n-1)) = (156 - 18 - 18) / 18 + 2 * 2 / 24 = 41/6
    r = kendall_tau([1, 1, 2, 3], [1, 2, 2, 3])
    assert r.method == "normal"
    assert r.tau == pytest.approx(0.8, abs=1e-15)
    assert r.p == pytest.approx(math.erfc(4 / math.sqrt(41 / 6) / math.sqrt(2)), rel=1e-12)


def test_undefined_cases_and_bad_input():
    assert kendall_tau([1.0], [2.0]) is None
    assert kendall_tau([1, 2, 3], [5, 5, 5]) is None      # constant: tau undefined
    with pytest.raises(ValueError, match="one length"):
        kendall_tau([1, 2, 3], [1, 2])


def test_matches_scipy_on_random_data():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    methods = set()
    for _ in range(400):
        n = int(rng.integers(2, 50))
        x = rng.permutation(n).astype(float)
        y = x + rng.normal(0, rng.uniform(0.1, 30), n)
        if rng.random() < 0.5:  # ties in both variables
            x, y = np.round(x / 4), np.round(y / 6)
        ours, ref = kendall_tau(x, y), stats.kendalltau(x, y)
        if ours is None:
            assert not np.isfinite(ref.statistic)
            continue
        methods.add(ours.method)
        assert ours.tau == pytest.approx(ref.statistic, abs=1e-12)
        assert ours.p == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert methods == {"exact", "normal"}


def test_report_modules_do_not_import_scipy_stats():
    """The report path stays free of scipy.stats (it doubled the import time)."""
    code = ("import sys, specreplay.reports.report, specreplay.reports.findings; "
            "print(any(m.startswith('scipy.stats') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
