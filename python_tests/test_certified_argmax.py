"""Tests of the native certified-argmax epilogue ``certified_argmax_fold``.

The epilogue folds tiles of APPROXIMATE scores s~ (fp32, |s~ - s| <= eps per row) and
re-scores exactly (fp64) only the columns with s~ >= running max - 2 eps. Every
result is checked against an independent float64 brute force (numpy argmax over
A Bᵀ + bias computed with numpy, first index on ties). The adversarial-noise cases
push the true maximum down by eps and every other score up by eps, so the approximate
argmax is wrong on many rows: an epilogue that skipped the exact re-scoring (or
re-scored too few columns) fails them; ``test_adversarial_case_discriminates`` checks
that this is so.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from gnc_ext._native import _C, native, stream_of, view

NEG_INF = float("-inf")


def _tiles(K, widths):
    """Uneven tile boundaries [(c0, c1)] covering [0, K), widths cycling through ``widths``."""
    out, c0, n = [], 0, 0
    while c0 < K:
        c1 = min(K, c0 + widths[n % len(widths)])
        out.append((c0, c1))
        c0, n = c1, n + 1
    return out


def _problem(R, K, d, dtype, with_bias, seed):
    g = np.random.default_rng(seed)
    A = g.standard_normal((R, d))
    B = g.standard_normal((K, d))
    bias = g.standard_normal(K) * 0.5 if with_bias else None
    npdt = np.float32 if dtype == torch.float32 else np.float64
    A, B = A.astype(npdt), B.astype(npdt)
    if bias is not None:
        bias = bias.astype(npdt)
    return A, B, bias


def _exact_scores(A, B, bias):
    S = A.astype(np.float64) @ B.astype(np.float64).T
    if bias is not None:
        S = S + bias.astype(np.float64)[None, :]
    return S


def _brute(S, y):
    """Float64 masked argmax (first index on ties) and max; y outside [0, K) masks nothing."""
    S = S.copy()
    R, K = S.shape
    if y is not None:
        for i in range(R):
            if 0 <= y[i] < K:
                S[i, y[i]] = -np.inf
    return S.argmax(axis=1), S.max(axis=1)


def _approx(S, eps_nom, mode, rng, y=None):
    """fp32 approximate tile and the per-row bound eps actually achieved (incl. fp32 rounding)."""
    R, K = S.shape
    if mode == "uniform":
        noise = rng.uniform(-1.0, 1.0, size=S.shape) * eps_nom[:, None]
    else:  # adversarial: true (masked) max down by eps, everything else up by eps
        kstar, _ = _brute(S, y)
        noise = np.repeat(eps_nom[:, None], K, axis=1)
        noise[np.arange(R), kstar] = -eps_nom
    T = (S + noise).astype(np.float32)
    eps = np.abs(T.astype(np.float64) - S).max(axis=1)
    return T, eps


def _fold(T, A, B, bias, y, eps, tiles, device, use_checked=True, a_dtype=None):
    R = A.shape[0]
    dt = torch.float32 if A.dtype == np.float32 else torch.float64
    tile_full = torch.from_numpy(T).to(device)
    At = torch.from_numpy(A).to(device)
    Bt = torch.from_numpy(B).to(device)
    biast = torch.from_numpy(bias).to(device) if bias is not None else torch.empty(0, dtype=dt, device=device)
    yt = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device) if y is not None else torch.empty(
        0, dtype=torch.int64, device=device)
    epst = torch.from_numpy(np.asarray(eps, dtype=np.float64)).to(device)
    am = torch.full((R,), NEG_INF, dtype=torch.float64, device=device)
    bv = torch.full((R,), NEG_INF, dtype=torch.float64, device=device)
    bi = torch.full((R,), -1, dtype=torch.int64, device=device)
    ch = torch.zeros(R, dtype=torch.int64, device=device) if use_checked else torch.empty(
        0, dtype=torch.int64, device=device)
    st = stream_of(tile_full)
    for c0, c1 in tiles:
        tile = tile_full[:, c0:c1]  # row stride K, column stride 1
        native.certified_argmax_fold(view(tile), view(At), view(Bt), view(biast), view(yt), c0, view(epst),
                                     view(am), view(bv), view(bi), view(ch), st)
    return (am.cpu().numpy(), bv.cpu().numpy(), bi.cpu().numpy(),
            ch.cpu().numpy() if use_checked else None)


def _assert_exact(bv, bi, S, y):
    kb, vb = _brute(S, y)
    np.testing.assert_array_equal(bi, kb)
    np.testing.assert_allclose(bv, vb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("mode", ["uniform", "adversarial"])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_float64_brute_force(device, dtype, with_bias, mode, masked):
    R, K, d = 48, 203, 12
    A, B, bias = _problem(R, K, d, dtype, with_bias, seed=zlib.crc32(f"{dtype}{with_bias}{mode}{masked}".encode()))
    S = _exact_scores(A, B, bias)
    rng = np.random.default_rng(7)
    y = None
    if masked:
        y = rng.integers(-3, K + 3, size=R)
        # half the rows mask their unmasked argmax (so the mask changes the answer)
        k_unmasked = S.argmax(axis=1)
        y[: R // 2] = k_unmasked[: R // 2]
        y[R // 2: R // 2 + 4] = [-1, K, K + 5, -7]
    eps_nom = np.abs(S).max() * rng.uniform(0.01, 0.2, size=R)
    T, eps = _approx(S, eps_nom, mode, rng, y)
    tiles = _tiles(K, [17, 5, 1, 40, 9])  # uneven, K not a multiple of any width
    am, bv, bi, ch = _fold(T, A, B, bias, y, eps, tiles, device)
    _assert_exact(bv, bi, S, y)
    # running approximate max = max of unmasked fp32 entries
    Tm = T.astype(np.float64).copy()
    if y is not None:
        for i in range(R):
            if 0 <= y[i] < K:
                Tm[i, y[i]] = -np.inf
    np.testing.assert_array_equal(am, Tm.max(axis=1))
    assert (ch >= 1).all() and (ch <= K).all()


def test_adversarial_case_discriminates(device):
    """The adversarial tiles really fool a plain argmax, and an epilogue told eps = 0
    (i.e. one that re-scores only the running-max candidates) gets rows wrong, while
    the certified fold with the true eps is exact."""
    R, K, d = 64, 150, 8
    A, B, bias = _problem(R, K, d, torch.float64, True, seed=11)
    S = _exact_scores(A, B, bias)
    rng = np.random.default_rng(3)
    eps_nom = np.full(R, 0.3 * np.abs(S).max())
    T, eps = _approx(S, eps_nom, "adversarial", rng)
    kb, _ = _brute(S, None)
    assert (T.argmax(axis=1) != kb).sum() >= R // 4
    tiles = _tiles(K, [23, 7, 31])
    _, _, bi0, _ = _fold(T, A, B, bias, None, np.zeros(R), tiles, device)
    assert (bi0 != kb).sum() >= 1
    _, bv, bi, _ = _fold(T, A, B, bias, None, eps, tiles, device)
    _assert_exact(bv, bi, S, None)


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
def test_fold_order_independent(device, order):
    R, K, d = 40, 97, 6
    A, B, bias = _problem(R, K, d, torch.float32, True, seed=5)
    S = _exact_scores(A, B, bias)
    rng = np.random.default_rng(9)
    T, eps = _approx(S, np.abs(S).max() * rng.uniform(0.05, 0.3, size=R), "adversarial", rng)
    tiles = _tiles(K, [11, 3, 20])
    if order == "reverse":
        tiles = tiles[::-1]
    elif order == "shuffled":
        tiles = [tiles[i] for i in rng.permutation(len(tiles))]
    _, bv, bi, _ = _fold(T, A, B, bias, None, eps, tiles, device)
    _assert_exact(bv, bi, S, None)


@pytest.mark.parametrize("order", ["forward", "reverse"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_exact_ties_lowest_index(device, order, with_bias):
    """Duplicate rows of B (and equal bias) tie exactly: the lowest class index wins
    whatever the tile order, even when the approximate tile favours a later copy."""
    R, K, d = 30, 60, 5
    g = np.random.default_rng(21)
    u = g.standard_normal(d)
    A = u[None, :] + 0.1 * g.standard_normal((R, d))
    B = 0.1 * g.standard_normal((K, d))
    dups = [7, 23, 24, 51]
    for k in dups:
        B[k] = 2.0 * u
    bias = 0.01 * g.standard_normal(K) if with_bias else None
    if bias is not None:
        bias[dups] = 0.25
    S = _exact_scores(A, B, bias)
    assert (S[:, dups[0]] == S[:, dups[-1]]).all()
    kb, _ = _brute(S, None)
    assert (kb == dups[0]).all()
    eps_nom = np.full(R, 0.05)
    noise = np.full((R, K), -0.05)
    noise[:, dups[-1]] = 0.05  # the approximate tile prefers the LAST copy
    T = (S + noise).astype(np.float32)
    eps = np.abs(T.astype(np.float64) - S).max(axis=1)
    tiles = _tiles(K, [10, 14, 3])
    if order == "reverse":
        tiles = tiles[::-1]
    _, bv, bi, _ = _fold(T, A, B, bias, None, eps, tiles, device)
    np.testing.assert_array_equal(bi, np.full(R, dups[0]))
    np.testing.assert_allclose(bv, S[:, dups[0]], rtol=1e-12)


def test_edge_sizes(device):
    # R = 1, K = 2, d = 1, c = 1 tiles; with and without mask
    A = np.array([[2.0]])
    B = np.array([[1.0], [1.5]])
    bias = np.array([0.5, -0.6])  # scores 2.5, 2.4
    S = _exact_scores(A, B, bias)
    T = np.array([[2.3, 2.45]], dtype=np.float32)  # approximate prefers class 1
    eps = np.abs(T.astype(np.float64) - S).max(axis=1)
    for tiles in ([(0, 1), (1, 2)], [(1, 2), (0, 1)], [(0, 2)]):
        _, bv, bi, ch = _fold(T, A, B, bias, None, eps, tiles, device)
        assert bi[0] == 0 and bv[0] == 2.5
        am, bv, bi, ch = _fold(T, A, B, bias, [0], eps, tiles, device)  # mask class 0
        assert bi[0] == 1 and abs(bv[0] - 2.4) < 1e-15 and ch[0] == 1
        assert am[0] == np.float64(np.float32(2.45))


def _uniform_case(R, K, d, with_bias, seed, rng_seed, width):
    """A problem, its exact scores and an fp32 tile within ``width`` of them."""
    A, B, bias = _problem(R, K, d, torch.float64, with_bias, seed=seed)
    S = _exact_scores(A, B, bias)
    T, eps = _approx(S, np.full(R, width), "uniform", np.random.default_rng(rng_seed))
    return A, B, bias, S, T, eps


def test_fully_masked_tile_and_all_masked_row(device):
    R, K, d = 6, 9, 3
    A, B, bias, S, T, eps = _uniform_case(R, K, d, False, seed=2, rng_seed=4, width=0.1)
    y = np.array([4, 4, 0, 8, 100, -1])
    tiles = [(0, 4), (4, 5), (5, 9)]  # rows 0,1 are fully masked in the width-1 tile
    am, bv, bi, ch = _fold(T, A, B, bias, y, eps, tiles, device)
    _assert_exact(bv, bi, S, y)
    # a fold over ONLY the fully masked tile leaves the masked rows untouched
    am, bv, bi, ch = _fold(T, A, B, bias, y, eps, [(4, 5)], device)
    assert am[0] == NEG_INF and bv[0] == NEG_INF and bi[0] == -1 and ch[0] == 0
    assert bi[2] == 4 and ch[2] == 1
    # K = 1 with the only class masked: nothing is ever found
    am, bv, bi, ch = _fold(T[:1, :1], A[:1], B[:1], None, [0], eps[:1], [(0, 1)], device)
    assert am[0] == NEG_INF and bi[0] == -1 and bv[0] == NEG_INF and ch[0] == 0


def test_nan_entries_never_count(device):
    R, K, d = 10, 30, 4
    A, B, bias, S, T, eps = _uniform_case(R, K, d, True, seed=8, rng_seed=1, width=0.2)
    kb, _ = _brute(S, None)
    T2 = T.copy()
    for i in range(R):
        j = (kb[i] + 5) % K
        T2[i, j] = np.nan
    # NaN entries are not candidates; the true best is never NaN here
    am, bv, bi, _ = _fold(T2, A, B, bias, None, eps, _tiles(K, [7, 4]), device)
    _assert_exact(bv, bi, S, None)
    assert np.isfinite(am).all()


def _expected_checked(T, eps, tiles, y):
    """Independent count of the re-scoring rule: per tile, unmasked j with
    s~ >= max(running max, tile max) - 2 eps."""
    R, K = T.shape
    Td = T.astype(np.float64)
    out = np.zeros(R, dtype=np.int64)
    for i in range(R):
        m = -np.inf
        for c0, c1 in tiles:
            vals = [(j, Td[i, j]) for j in range(c0, c1) if y is None or j != y[i]]
            if vals:
                m = max(m, max(v for _, v in vals))
            if m == -np.inf:
                continue
            out[i] += sum(1 for _, v in vals if v >= m - 2 * eps[i])
    return out


def test_checked_counts(device):
    # integer-valued data: the fp32 tile is exact, so eps = 0 is a valid bound
    R, K, d = 20, 120, 4
    g = np.random.default_rng(13)
    A = g.integers(-20, 21, size=(R, d)).astype(np.float64)
    B = g.integers(-20, 21, size=(K, d)).astype(np.float64)
    S = _exact_scores(A, B, None)
    T = S.astype(np.float32)
    assert (T.astype(np.float64) == S).all()
    y = g.integers(-2, K + 2, size=R)
    tiles = _tiles(K, [13, 8, 29])
    _, bv, bi, ch = _fold(T, A, B, None, y, np.zeros(R), tiles, device)
    _assert_exact(bv, bi, S, y)
    np.testing.assert_array_equal(ch, _expected_checked(T, np.zeros(R), tiles, y))
    assert (ch >= 1).all()
    distinct = np.array([len(np.unique(S[i])) == K for i in range(R)])
    assert (ch[distinct] <= len(tiles)).all()  # at most one (the new max) per tile
    # huge eps: every unmasked column is re-scored
    _, bv, bi, ch = _fold(T, A, B, None, y, np.full(R, 1e300), tiles, device)
    _assert_exact(bv, bi, S, y)
    n_unmasked = K - ((y >= 0) & (y < K)).astype(np.int64)
    np.testing.assert_array_equal(ch, n_unmasked)
    # an empty `checked` skips the statistics and changes nothing else
    _, bv2, bi2, _ = _fold(T, A, B, None, y, np.full(R, 1e300), tiles, device, use_checked=False)
    np.testing.assert_array_equal(bi2, bi)
    np.testing.assert_array_equal(bv2, bv)


# ---- argument checks -------------------------------------------------------------

def _args(device, R=4, K=10, d=3, c=5, col0=0):
    f64 = dict(dtype=torch.float64, device=device)
    return dict(
        tile=torch.zeros(R, c, dtype=torch.float32, device=device),
        A=torch.zeros(R, d, **f64), B=torch.zeros(K, d, **f64), bias=torch.zeros(K, **f64),
        y=torch.zeros(R, dtype=torch.int64, device=device), col0=col0, eps=torch.zeros(R, **f64),
        approx_max=torch.full((R,), NEG_INF, **f64), best_val=torch.full((R,), NEG_INF, **f64),
        best_idx=torch.full((R,), -1, dtype=torch.int64, device=device),
        checked=torch.zeros(R, dtype=torch.int64, device=device))


def _call(a, views=None):
    vs = {k: (v if isinstance(v, int) else view(v)) for k, v in a.items()}
    vs.update(views or {})
    return native.certified_argmax_fold(vs["tile"], vs["A"], vs["B"], vs["bias"], vs["y"], vs["col0"], vs["eps"],
                                        vs["approx_max"], vs["best_val"], vs["best_idx"], vs["checked"],
                                        stream_of(a["tile"]))


BAD = [
    ("tile", lambda a: a.update(tile=a["tile"].double())),
    ("tile", lambda a: a.update(tile=a["tile"][0])),
    ("A", lambda a: a.update(A=a["A"].half())),
    ("A", lambda a: a.update(A=a["A"][:2])),
    ("A", lambda a: a.update(A=torch.zeros(3, 4, dtype=torch.float64, device=a["A"].device).t())),
    ("B", lambda a: a.update(B=torch.zeros(10, 4, dtype=torch.float64, device=a["B"].device))),
    ("B", lambda a: a.update(B=a["B"].float())),
    ("bias", lambda a: a.update(bias=a["bias"][:7])),
    ("bias", lambda a: a.update(bias=a["bias"].float())),
    ("y", lambda a: a.update(y=a["y"][:3])),
    ("y", lambda a: a.update(y=a["y"].int())),
    ("col0", lambda a: a.update(col0=6)),
    ("col0", lambda a: a.update(col0=-1)),
    ("eps", lambda a: a.update(eps=a["eps"][:3])),
    ("eps", lambda a: a.update(eps=a["eps"].float())),
    ("approx_max", lambda a: a.update(approx_max=a["approx_max"].float())),
    ("best_val", lambda a: a.update(best_val=a["best_val"][:2])),
    ("best_idx", lambda a: a.update(best_idx=a["best_idx"].double())),
    ("checked", lambda a: a.update(checked=a["checked"].double())),
    ("checked", lambda a: a.update(checked=a["checked"][:1])),
]


@pytest.mark.parametrize("name,mutate", BAD, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD)])
def test_bad_arguments_name_the_argument(device, name, mutate):
    a = _args(device)
    _call(a)  # the unmutated call is valid
    mutate(a)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        _call(a)


def test_eps_values_checked_on_cpu_before_any_write():
    for bad in (-1.0, float("nan"), float("inf")):
        a = _args("cpu")
        a["tile"].fill_(1.0)
        a["eps"][2] = bad
        with pytest.raises(ValueError, match=r"\beps\b"):
            _call(a)
        assert (a["approx_max"] == NEG_INF).all() and (a["best_idx"] == -1).all()


def test_device_mismatch_rejected():
    """A view that claims another device is refused before any memory is touched."""
    for name in ("A", "B", "bias", "eps", "best_val", "checked"):
        a = _args("cpu")
        t = a[name]
        fake = _C.TensorView(t.data_ptr(), view(t).dtype, 0, list(t.shape), list(t.stride()))
        with pytest.raises(ValueError, match=rf"\b{name}\b"):
            _call(a, {name: fake})


def test_device_mismatch_real(cuda_device):
    a = _args(cuda_device)
    a["A"] = a["A"].cpu()
    with pytest.raises(ValueError, match=r"\bA\b"):
        _call(a)
