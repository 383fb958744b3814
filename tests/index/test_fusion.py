import numpy as np

from medret.index.fusion import rrf
from medret.index.select import merge_topk, select_topk


def test_rrf_matches_hand_computation():
    a = np.array([10, 20, 30])  # ranks 1, 2, 3
    b = np.array([30, 40, 10])
    scores, rows = rrf([a, b], k=4, rrf_k=100)
    # 10: 1/101 + 1/103; 30: 1/103 + 1/101; 20: 1/102; 40: 1/102
    assert rows.tolist() == [10, 30, 20, 40]  # 10 and 30 tie; 10 reached rank 1 first... both best rank 1 → row
    np.testing.assert_allclose(scores, [1/101 + 1/103, 1/103 + 1/101, 1/102, 1/102])


def test_rrf_k_changes_weights():
    a, b = np.array([1, 2]), np.array([2, 3])
    scores, rows = rrf([a, b], k=3, rrf_k=1)
    # 2: 1/3 + 1/2 = .833; 1: 1/2; 3: 1/3
    assert rows.tolist() == [2, 1, 3]
    np.testing.assert_allclose(scores, [1/3 + 1/2, 1/2, 1/3])


def test_select_topk_against_full_sort():
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = rng.integers(0, 5, size=int(rng.integers(1, 40))).astype(np.float32)  # many ties
        k = int(rng.integers(1, 45))
        got_s, got_r = select_topk(s, k)
        ref = sorted(range(len(s)), key=lambda i: (-s[i], i))[:k]
        assert got_r.tolist() == ref and got_s.tolist() == s[ref].tolist()


def test_merge_topk_orders_by_score_then_row():
    s = np.array([[1.0, 3.0, 3.0, 2.0]])
    r = np.array([[5, 9, 2, 7]])
    ms, mr = merge_topk(s, r, 3)
    assert mr.tolist() == [[2, 9, 7]] and ms.tolist() == [[3.0, 3.0, 2.0]]


def test_select_topk_rows_breaks_ties_by_row_whatever_the_candidate_order():
    from medret.index.select import select_topk_rows

    rng = np.random.default_rng(1)
    for _ in range(100):
        n = int(rng.integers(1, 60))
        rows = rng.permutation(1000)[:n]  # distinct rows, shuffled
        s = rng.integers(0, 4, size=n).astype(np.float32)  # many ties
        k = int(rng.integers(1, 65))
        got_s, got_r = select_topk_rows(s, rows, k)
        ref = sorted(range(n), key=lambda i: (-s[i], rows[i]))[:k]
        assert got_r.tolist() == rows[ref].tolist() and got_s.tolist() == s[ref].tolist()
