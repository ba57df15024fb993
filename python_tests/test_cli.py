"""The `gnc` command rejects bad input with one clear line and a non-zero exit code."""
import subprocess
import sys

import numpy as np
import pytest


def run(args, cwd):
    return subprocess.run([sys.executable, "-m", "gnc_ext.cli", *args], capture_output=True, text=True, cwd=cwd)


def _one_line_error(out, *needles):
    assert out.returncode != 0
    lines = [l for l in out.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, out.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_missing_file(tmp_path):
    _one_line_error(run(["distance", "nope.npy"], tmp_path), "nope.npy: no such file")


def test_wrong_shape(tmp_path):
    np.save(tmp_path / "w.npy", np.ones(5))
    _one_line_error(run(["distance", "w.npy"], tmp_path), "w.npy:", "2-D")


def test_non_finite(tmp_path):
    w = np.eye(3)
    w[1, 1] = np.nan
    np.save(tmp_path / "w.npy", w)
    _one_line_error(run(["distance", "w.npy"], tmp_path), "NaN")


def test_metrics_label_mismatch(tmp_path):
    np.save(tmp_path / "f.npy", np.random.randn(10, 3).astype(np.float32))
    np.save(tmp_path / "y.npy", np.zeros(9, dtype=np.int64))
    _one_line_error(run(["metrics", "--features", "f.npy", "--labels", "y.npy"], tmp_path),
                    "--labels y.npy: holds 9 labels, but --features f.npy has 10 rows")


def test_float_labels_rejected(tmp_path):
    np.save(tmp_path / "f.npy", np.random.randn(10, 3).astype(np.float32))
    np.save(tmp_path / "y.npy", np.zeros(10))
    _one_line_error(run(["metrics", "--features", "f.npy", "--labels", "y.npy"], tmp_path), "integer labels")


def test_bad_usage_exit_code(tmp_path):
    out = run(["design", "--classes", "abc", "--margin", "0.1"], tmp_path)
    assert out.returncode == 2


# ---- commands that succeed -------------------------------------------------------
import json  # noqa: E402
from pathlib import Path  # noqa: E402

SLOANE = Path(__file__).resolve().parent / "data" / "sloane_pack_3_124.npy"


def test_distance_json_matches_library(tmp_path):
    import torch

    import gnc_ext

    out = run(["distance", str(SLOANE), "--json", "--plot", "d.png"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    W = torch.from_numpy(np.load(SLOANE))
    r = gnc_ext.one_vs_rest_distance(W, rattler_tol=1e-6)
    assert rep["classes"] == 124 and rep["dim"] == 3
    assert abs(rep["rho"] - r.rho) < 1e-12
    assert rep["max_gap"] <= 1e-9
    assert sorted(rep["rattlers"]) == sorted(r.rattlers.tolist())
    assert abs(rep["one_vs_one_min_distance"] - 0.32926) < 5e-6  # data/README.md
    # the theory bounds bracket this code's rho and its min chord (Fejes Toth at d = 3)
    th = rep["theory"]
    assert th["closed_form"] is None and th["lower"] <= th["upper"]
    assert rep["rho"] <= rep["one_vs_one_min_distance"] <= th["upper"] and "Fejes Toth" in th["upper_source"]
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"


def test_rattler_tol_is_monotone():
    import torch

    import gnc_ext

    W = torch.from_numpy(np.load(SLOANE))
    counts = [len(gnc_ext.one_vs_rest_distance(W, rattler_tol=t).rattlers) for t in (0.0, 1e-8, 1e-6, 1e-4, 1.0)]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0 and counts[0] > 0
    with pytest.raises(ValueError, match="rattler_tol"):
        gnc_ext.one_vs_rest_distance(W, rattler_tol=-1.0)


def test_design_json_consistent_with_theory(tmp_path):
    import gnc_ext

    out = run(["design", "--classes", "100000", "--margin", "0.3", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    d = rep["dim"]
    assert rep["dim_source"] == "Thm 3.9 lower bound"
    assert gnc_ext.theory.rho_bounds(d, 100000).thm39_lower >= 0.3
    assert gnc_ext.theory.rho_bounds(d - 1, 100000).thm39_lower < 0.3
    assert rep["theory"]["lower"] >= 0.3


def test_design_names_the_construction(tmp_path):
    # d = 10000 for K = 20000 at rho = 0.5 comes from the cross-polytope, not from Thm 3.9
    out = run(["design", "-K", "20000", "-r", "0.5", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["dim"] == 10000 and "cross-polytope" in rep["dim_source"]
    out = run(["design", "-K", "20000", "-r", "0.5"], tmp_path)
    assert "cross-polytope" in out.stdout and "Thm 3.9 lower bound reaches" not in out.stdout


def test_solve_tammes_saves_a_code(tmp_path):
    out = run(["solve", "tammes", "--dim", "3", "--classes", "4", "--save", "c.npy", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    W = np.load(tmp_path / "c.npy")
    assert W.shape == (4, 3)
    assert abs(rep["min_angle_cosine"] - (-1.0 / 3.0)) < 1e-7  # regular tetrahedron
    assert abs(rep["rho"] - 4.0 / 3.0) < 1e-7      # Thm 3.3, K <= d + 1
    assert rep["saved"] == "c.npy"


def test_solve_polishes_an_init_code(tmp_path):
    # a perturbed cross-polytope subset in d=4, K=7 (Thm 3.3: rho = 1) is polished back
    rng = np.random.default_rng(3)
    W = np.zeros((7, 4))
    for k in range(7):
        W[k, k // 2] = 1.0 if k % 2 == 0 else -1.0
    np.save(tmp_path / "w0.npy", W + 0.01 * rng.standard_normal(W.shape))
    out = run(["solve", "softmax-code", "-d", "4", "-K", "7", "--init", "w0.npy", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert abs(rep["rho"] - 1.0) < 1e-7 and rep["theory"]["closed_form"] == 1.0
    _one_line_error(run(["solve", "tammes", "-d", "3", "-K", "7", "--init", "w0.npy"], tmp_path), "--init w0.npy:", "(7, 3)")
    _one_line_error(run(["solve", "tammes", "-d", "4", "-K", "7", "--init", "w0.npy", "--time-limit", "-1"],
                        tmp_path), "--time-limit")


def test_metrics_json(tmp_path):
    rng = np.random.default_rng(0)
    K, d = 12, 6
    M = rng.standard_normal((K, d))
    y = np.repeat(np.arange(K), 4)
    F = (M[y] + 0.05 * rng.standard_normal((K * 4, d))).astype(np.float32)
    np.save(tmp_path / "f.npy", F)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "w.npy", M.astype(np.float32))
    out = run(["metrics", "--features", "f.npy", "--labels", "y.npy", "--weights", "w.npy", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert rep["ncc_accuracy"] == 1.0
    assert 0 <= rep["gnc1"] < 0.1 and 0 <= rep["gnc3"] < 0.1 and rep["gnc2"]["rho"] > 0


def test_corrupt_file_and_non_unit_rows_one_line_in_cli_terms(tmp_path):
    (tmp_path / "bad.pt").write_text("garbage")
    _one_line_error(run(["distance", "bad.pt"], tmp_path), "bad.pt: cannot read")
    np.save(tmp_path / "w.npy", np.diag([2.0, 1.0, 1.0]))
    out = run(["distance", "w.npy"], tmp_path)
    _one_line_error(out, "w.npy: rows must have unit L2 norm", "pass --normalize")
    assert "normalize=True" not in out.stderr


# ---- the JSON schema (docs/CLI.md), restated here --------------------------------
NUM = (int, float)
THEORY = {"closed_form": NUM + (type(None),), "lower": NUM, "upper": NUM, "lower_source": str,
          "upper_source": str, "thm39_valid": bool}
SCHEMA = {
    "info": {"version": str, "compiler": str, "cxx_standard": int, "openmp": bool, "omp_threads": int,
             "cuda_compiled": bool, "cuda_archs": str, "cuda_device_count": int, "torch_version": str,
             "gpu_usable": bool},
    "demo": {"rho_opt": NUM, "seconds": NUM, "runs": list, "files": list},
    "distance": {"classes": int, "dim": int, "normalized": bool, "rho": NUM, "rho_lower": NUM,
                 "max_gap": NUM, "argmin_class": int, "rattler_tol": NUM, "rattlers": list, "rattler_count": int,
                 "one_vs_one_min_distance": NUM, "theory": THEORY, "distance": list, "lower": list},
    "metrics": {"samples": int, "classes": int, "dim": int, "normalized": bool, "gnc1": NUM,
                "ncc_accuracy": NUM, "gnc2": {"rho": NUM, "rho_lower": NUM, "max_gap": NUM, "gap": NUM,
                                          "rattlers": list, "rattler_count": int},
                "gnc3": NUM, "theory": THEORY},
    "solve": {"problem": str, "dim": int, "classes": int, "rho": NUM, "rho_lower": NUM,
              "one_vs_one_min_distance": NUM, "min_angle_cosine": NUM, "rattlers": list, "rattler_count": int, "theory": THEORY,
              "saved": (str, type(None))},
    "design": {"classes": int, "margin": NUM, "dim": int, "dim_source": str, "theory": THEORY},
}


def _check_schema(obj, spec, where):
    assert isinstance(obj, dict), where
    for key, typ in spec.items():
        assert key in obj, f"{where}: missing {key!r}"
        if isinstance(typ, dict):
            _check_schema(obj[key], typ, f"{where}.{key}")
        else:
            assert isinstance(obj[key], typ) and not (typ is NUM and isinstance(obj[key], bool)), \
                f"{where}.{key}: {obj[key]!r} is not {typ}"
    for key in obj:  # snake_case keys only
        assert key == key.lower() and " " not in key and "-" not in key and "(" not in key, key


def _json_of(args, cwd):
    out = run([*args, "--json"], cwd)
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)  # strict JSON: no NaN/Infinity literals
    assert rep["command"] == args[0] and rep["schema_version"] == 1
    _check_schema(rep, SCHEMA[args[0]], args[0])
    return rep


def test_every_subcommand_json_follows_the_schema(tmp_path):
    from gnc_ext import cli

    assert set(cli.subcommands()) == set(SCHEMA)  # a new subcommand needs its schema here and in docs/CLI.md
    rng = np.random.default_rng(0)
    K, d = 12, 6
    M = rng.standard_normal((K, d))
    y = np.repeat(np.arange(K), 4)
    np.save(tmp_path / "f.npy", (M[y] + 0.05 * rng.standard_normal((K * 4, d))).astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "w.npy", M.astype(np.float32))
    _json_of(["info"], tmp_path)
    rep = _json_of(["demo", "--epochs", "1", "--taus", "1", "--no-plot", "--out", "demo"], tmp_path)
    assert [r["tau"] for r in rep["runs"]] == [1.0] and isinstance(rep["runs"][0]["final"]["gnc1"], float)
    rep = _json_of(["distance", str(SLOANE)], tmp_path)
    assert len(rep["distance"]) == len(rep["lower"]) == 124
    assert all(isinstance(v, float) for v in rep["distance"]) and all(isinstance(v, int) for v in rep["rattlers"])
    rep = _json_of(["metrics", "--features", "f.npy", "--labels", "y.npy", "--weights", "w.npy"], tmp_path)
    assert "nc" not in rep  # only with --nc
    rep = _json_of(["metrics", "--features", "f.npy", "--labels", "y.npy", "--weights", "w.npy", "--nc"], tmp_path)
    assert isinstance(rep["nc"], dict) and all(v is None or isinstance(v, (int, float, str)) for v in rep["nc"].values())
    rep = _json_of(["solve", "tammes", "-d", "3", "-K", "6", "--restarts", "4"], tmp_path)
    assert rep["saved"] is None and rep["theory"]["closed_form"] == 1.0
    _json_of(["design", "-K", "1000", "-r", "0.1"], tmp_path)
    # without weights GNC2, GNC3 and the theory are null, not missing
    out = run(["metrics", "--features", "f.npy", "--labels", "y.npy", "--json"], tmp_path)
    rep = json.loads(out.stdout)
    assert rep["gnc2"] is None and rep["gnc3"] is None and rep["theory"] is None


def test_closed_pipe_exits_quietly(tmp_path):
    """`gnc distance W.npy --json | head`: the reader closes the pipe after one line;
    gnc stops without a traceback or an error line (exit 141 = 128 + SIGPIPE)."""
    rng = np.random.default_rng(1)
    W = rng.standard_normal((3000, 8))
    np.save(tmp_path / "big.npy", W / np.linalg.norm(W, axis=1, keepdims=True))  # ~180 kB of JSON
    p = subprocess.Popen([sys.executable, "-m", "gnc_ext.cli", "distance", "big.npy", "--json"], cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline().strip() == b"{"
    p.stdout.close()  # more than a pipe buffer is still to come
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert err == "", err


def test_file_errors_name_the_file(tmp_path):
    (tmp_path / "text.npy").write_text("not an array\n")
    _one_line_error(run(["distance", "text.npy"], tmp_path), "text.npy: not a NumPy .npy array file")
    (tmp_path / "text.npz").write_text("not a zip\n")
    _one_line_error(run(["distance", "text.npz"], tmp_path), "text.npz: not a NumPy .npz archive")
    w = np.eye(3)
    np.savez(tmp_path / "two.npz", a=w, b=-w)
    out = run(["distance", "two.npz"], tmp_path)
    assert out.returncode == 1
    _one_line_error(out, "two.npz: holds 2 arrays (a, b)", "two.npz:KEY")
    _one_line_error(run(["distance", "two.npz:c"], tmp_path), "two.npz:c: has no array 'c'", "a, b")
    out = run(["distance", "two.npz:b", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr and json.loads(out.stdout)["classes"] == 3
    np.save(tmp_path / "w.npy", w)
    _one_line_error(run(["distance", "w.npy:b"], tmp_path), "w.npy is a .npy file")
    out = run(["metrics", "--features", "two.npz", "--labels", "y.npy"], tmp_path)
    assert out.returncode == 1 and "--features two.npz:" in out.stderr
    # a file name that really contains ':' is still a path
    np.save(tmp_path / "a:b.npy", w)
    assert run(["distance", "a:b.npy"], tmp_path).returncode == 0
    # usage errors exit 2
    assert run(["distance"], tmp_path).returncode == 2
    assert run(["design", "-K", "10"], tmp_path).returncode == 2
    _one_line_error(run(["design", "-K", "10", "-r", "1.5"], tmp_path), "--margin")
    _one_line_error(run(["solve", "tammes", "-d", "3", "-K", "4", "--restarts", "1", "--save",
                         "no/such/dir/c.npy"], tmp_path), "--save no/such/dir/c.npy:")


def test_metrics_nc_json_matches_brute_force(tmp_path):
    """`gnc metrics --nc --json`: NC1 (pinv, quotient), NC3 duality error and NC4
    agreement equal float64 definitions written here (K x K formed at small K)."""
    rng = np.random.default_rng(3)
    K, d, n = 9, 5, 6
    M = rng.standard_normal((K, d))
    y = np.repeat(np.arange(K), n)
    F = M[y] + 0.3 * rng.standard_normal((K * n, d))
    Wc = rng.standard_normal((K, d))
    np.save(tmp_path / "f.npy", F)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "w.npy", Wc)
    rep = _json_of(["metrics", "--features", "f.npy", "--labels", "y.npy", "--weights", "w.npy", "--nc",
                    "--no-normalize"], tmp_path)
    nc = rep["nc"]
    H = F.astype(np.float32).astype(np.float64)  # the CLI reads features as float32
    W = Wc.astype(np.float32).astype(np.float64)
    mu = np.stack([H[y == k].mean(0) for k in range(K)])
    mt = mu - mu.mean(0)
    Sb = mt.T @ mt / K
    D = H - mu[y]
    Sw = D.T @ D / len(H)
    assert nc["nc1_pinv"] == pytest.approx(np.trace(Sw @ np.linalg.pinv(Sb)) / K, rel=1e-9)
    assert nc["nc1_quotient"] == pytest.approx(np.trace(Sw) / np.trace(Sb), rel=1e-9)
    P = W @ mt.T
    E = (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1)
    assert nc["nc3_duality_error"] == pytest.approx(np.linalg.norm(P / np.linalg.norm(P) - E), rel=1e-9, abs=1e-12)
    lin = (H @ W.T).argmax(1)
    ncc = ((H[:, None, :] - mu[None]) ** 2).sum(-1).argmin(1)
    assert nc["nc4_agreement"] == pytest.approx(float((lin == ncc).mean()), abs=1e-12)
    assert nc["nc5_ood"] is None  # no --ood-features
    out = run(["metrics", "--features", "f.npy", "--labels", "y.npy", "--nc", "--cdnv-exponent", "0"], tmp_path)
    _one_line_error(out, "--cdnv-exponent")


# ---- issue 21: the CLI speaks in options -----------------------------------------
def _main(args, capsys):
    """Run `gnc ARGS` in this process: (exit code, stdout, stderr)."""
    from gnc_ext import cli

    rc = cli.main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line(rc, err, *needles, code=1):
    assert rc == code, err
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def small_inputs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    K, d, n = 4, 8, 16
    y = np.repeat(np.arange(K), n)
    np.save(tmp_path / "f.npy", rng.standard_normal((K * n, d)).astype(np.float32))
    np.save(tmp_path / "fT.npy", rng.standard_normal((d, K * n)).astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    big = y.copy()
    big[5] = 2000
    np.save(tmp_path / "ybig.npy", big)
    neg = y.copy()
    neg[[2, 7]] = -1
    np.save(tmp_path / "yneg.npy", neg)
    np.save(tmp_path / "y0.npy", np.zeros(K * n, dtype=np.int64))
    np.save(tmp_path / "w.npy", rng.standard_normal((K, d)))
    np.save(tmp_path / "w1.npy", rng.standard_normal((1, d)))
    np.save(tmp_path / "wT.npy", rng.standard_normal((d, K)))
    W = rng.standard_normal((6, 3))
    np.save(tmp_path / "u.npy", W / np.linalg.norm(W, axis=1, keepdims=True))
    monkeypatch.chdir(tmp_path)
    return tmp_path


DEVICE_CMDS = [["demo", "--epochs", "1", "--no-plot", "--out", "demo"], ["distance", "u.npy"],
               ["metrics", "--features", "f.npy", "--labels", "y.npy"], ["solve", "tammes", "-d", "3", "-K", "4"]]


@pytest.mark.parametrize("cmd", DEVICE_CMDS, ids=lambda c: c[0])
def test_device_checked_by_every_subcommand(cmd, small_inputs, capsys):
    import torch

    rc, out, err = _main([*cmd, "--device", "foo"], capsys)
    _one_line(rc, err, f"gnc {cmd[0]}: error: --device: expected cpu, cuda or cuda:N, got 'foo'")
    rc, out, err = _main([*cmd, "--device", "meta"], capsys)
    _one_line(rc, err, "--device: 'meta' is not supported")
    if not torch.cuda.is_available():
        rc, out, err = _main([*cmd, "--device", "cuda"], capsys)
        _one_line(rc, err, "--device: cuda asked for", "no usable GPU", "--device cpu")


def test_device_error_in_a_child_has_no_traceback(small_inputs):
    out = run(["distance", "u.npy", "--device", "cuda:7"], small_inputs)
    _one_line(out.returncode, out.stderr, "gnc distance: error: --device: cuda:7")


def test_every_long_subcommand_has_progress_options():
    from gnc_ext import cli

    parser = cli.build_parser()
    for name in ("demo", "distance", "metrics", "solve"):
        sub = parser._subparsers._group_actions[0].choices[name]
        flags = {o for a in sub._actions for o in a.option_strings}
        assert {"--progress", "--no-progress", "--device"} <= flags, name


def test_progress_forced_and_silenced(small_inputs, capsys):
    rc, out, err = _main(["distance", "u.npy", "--json", "--progress"], capsys)
    assert rc == 0 and "hull" in err and json.loads(out)["classes"] == 6  # bar on stderr, JSON intact
    rc, out, err = _main(["distance", "u.npy", "--json", "--no-progress"], capsys)
    assert rc == 0 and err == ""
    rc, out, err = _main(["metrics", "--features", "f.npy", "--labels", "y.npy", "--progress", "--json"], capsys)
    assert rc == 0 and "gnc metrics" in err
    rc, out, err = _main(["demo", "--epochs", "2", "--taus", "1", "--no-plot", "--out", "demo", "--progress",
                          "--json"], capsys)
    # tqdm redraws at most every 0.1 s and a leave=False bar is cleared on close, so the
    # last epoch's "2/2" is only drawn when that epoch took longer than 0.1 s
    assert rc == 0 and "gnc demo" in err and "/2 [" in err


class _Terminal:
    """A stand-in stderr that says it is a terminal and records what is written."""

    def __init__(self):
        self.text = ""

    def isatty(self):
        return True

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_bar_on_a_terminal_depends_on_time_not_on_K(monkeypatch):
    """progress=None: on a terminal a bar appears once a pass has run AUTO_DELAY_S
    seconds, for any K (formerly only from K = 100,000); a quick pass shows none."""
    import torch

    import gnc_ext
    from gnc_ext import _progress

    W = torch.nn.functional.normalize(torch.randn(300, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), dim=1)
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    gnc_ext.one_vs_rest_distance(W)  # milliseconds: under the delay, no bar
    assert term.text == ""
    monkeypatch.setattr(_progress, "AUTO_DELAY_S", 0.0)  # every pass now counts as long
    gnc_ext.one_vs_rest_distance(W)
    assert "hull" in term.text
    # the delay is tqdm's: a bar made with progress=None carries it, a forced one does not
    monkeypatch.setattr(_progress, "AUTO_DELAY_S", 1.0)
    b = _progress.bar(None, 10, "x")
    f = _progress.bar(True, 10, "x")
    try:
        assert b.delay == 1.0 and f.delay == 0
    finally:
        b.close()
        f.close()


def test_metrics_errors_name_the_option_and_file(small_inputs, capsys):
    m = ["metrics", "--features", "f.npy", "--labels"]
    rc, out, err = _main(["metrics", "--features", "fT.npy", "--labels", "y.npy"], capsys)
    _one_line(rc, err, "--features fT.npy: shape (8, 64) looks transposed", "64 labels of y.npy")
    rc, out, err = _main([*m, "ybig.npy"], capsys)  # never K = 2001 silently
    _one_line(rc, err, "--labels ybig.npy: the labels run from 0 to 2000, but only 5 of those 2001 classes occur",
              "--classes")
    rc, out, err = _main([*m, "ybig.npy", "--weights", "w.npy"], capsys)
    _one_line(rc, err, "--labels ybig.npy: 1 of 64 labels is outside 0..3 (the 4 rows of w.npy)",
              "2000 at position 5")
    rc, out, err = _main([*m, "ybig.npy", "--classes", "4"], capsys)
    _one_line(rc, err, "--labels ybig.npy: 1 of 64 labels is outside 0..3 (--classes 4)")
    rc, out, err = _main([*m, "yneg.npy"], capsys)
    _one_line(rc, err, "--labels yneg.npy: 2 of 64 labels are negative", "-1 at position 2")
    # K = 1, from each source, names that source
    rc, out, err = _main([*m, "y0.npy"], capsys)
    _one_line(rc, err, "--labels y0.npy: every label is 0 (one class); GNC needs at least 2 classes")
    rc, out, err = _main([*m, "y.npy", "--weights", "w1.npy"], capsys)
    _one_line(rc, err, "--weights w1.npy: holds 1 class row; GNC needs at least 2 classes")
    rc, out, err = _main([*m, "y.npy", "--classes", "1"], capsys)
    _one_line(rc, err, "--classes: 1; GNC needs at least 2 classes")
    rc, out, err = _main([*m, "y.npy", "--weights", "wT.npy"], capsys)
    _one_line(rc, err, "--weights wT.npy: width 4 does not match the feature width 8 of f.npy", "transposed")
    rc, out, err = _main([*m, "y.npy", "--weights", "w.npy", "--classes", "5"], capsys)
    _one_line(rc, err, "--classes: 5 does not match the 4 rows of w.npy")
    # --classes larger than the labels is how empty classes are asked for
    rc, out, err = _main([*m, "y.npy", "--classes", "6", "--json"], capsys)
    assert rc == 0, err
    assert json.loads(out)["classes"] == 6


def test_library_errors_restated_with_options(small_inputs, capsys):
    np.save("w1x3.npy", np.array([[1.0, 0.0, 0.0]]))
    rc, out, err = _main(["distance", "w1x3.npy"], capsys)
    line = _one_line(rc, err, "gnc distance: error: w1x3.npy: need at least K = 2 classes")
    assert "W:" not in line
    rc, out, err = _main(["demo", "--taus", "a,b", "--epochs", "1"], capsys)
    _one_line(rc, err, "--taus: expected comma-separated numbers, got 'a,b'")
    rc, out, err = _main(["demo", "--taus", "-1", "--epochs", "1", "--no-plot"], capsys)
    _one_line(rc, err, "gnc demo: error: --taus:")


def test_max_gap_one_name_and_rattlers_list_with_count(small_inputs, capsys):
    import torch

    import gnc_ext

    rc, out, err = _main(["distance", str(SLOANE), "--json"], capsys)
    rep = json.loads(out)
    r = gnc_ext.one_vs_rest_distance(torch.from_numpy(np.load(SLOANE)), rattler_tol=1e-6)
    # max_gap is the per-class worst gap, not the width of rho's bracket
    assert rep["max_gap"] == pytest.approx(float((r.distance - r.lower).max()), abs=0)
    assert rep["rho"] - rep["rho_lower"] <= rep["max_gap"]
    assert rep["rattler_count"] == len(rep["rattlers"]) == r.rattlers.numel()
    rc, out, err = _main(["metrics", "--features", "f.npy", "--labels", "y.npy", "--weights", "w.npy", "--json"],
                         capsys)
    g2 = json.loads(out)["gnc2"]
    assert g2["max_gap"] == g2["gap"] and g2["rattler_count"] == len(g2["rattlers"])
