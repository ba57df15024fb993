import math

import pytest
import torch

pytest.importorskip("matplotlib")

from gnc_ext import plot  # noqa: E402


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_circle_and_curves(tmp_path):
    K = 5
    ang = torch.arange(K) * 2 * math.pi / K
    W = torch.stack([ang.cos(), ang.sin()], 1)
    y = torch.arange(50) % K
    H = W[y] + 0.05 * torch.randn(50, 2)
    p = tmp_path / "c.png"
    plot.plot_circle(H, y, W, path=str(p))
    assert _is_png(p)
    hist = [{"gnc1": 1.0 / (e + 1), "gnc2": 0.1 * e, "gnc3": 0.5 / (e + 1), "train_acc": 0.5 + 0.05 * e} for e in range(5)]
    p2 = tmp_path / "g.png"
    plot.plot_gnc_curves(hist, reference={"gnc2": 0.4}, path=str(p2))
    assert _is_png(p2)


def test_plot_circle_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="features"):
        plot.plot_circle(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        plot.plot_circle(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
