"""merged_view: the training view that runs a pair as one layer where that costs fewer multiply-adds."""

import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.training.merged import MergedPair, merged_view


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = nn.Conv2d(8, 8, 1)  # full rank 8: cheaper merged on a 4x4 map
        self.k3 = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")  # n = 72: cheaper as a pair
        self.mid = nn.Linear(8, 6)
        self.fc = nn.Linear(6, 3)  # the head: decompose-conv leaves it

    def forward(self, x):
        return self.fc(self.mid(self.k3(self.pw(x).relu()).mean((2, 3))))


def decomposed():
    torch.manual_seed(0)
    return fxprune.prune(Net().double(), (torch.randn(2, 8, 4, 4, dtype=torch.float64),),
                         "decompose-conv,insert-scaling")


def test_the_cost_counts_multiply_adds_of_both_ways():
    view = merged_view(decomposed())
    pw, k3, mid = [m for m in view.modules() if isinstance(m, MergedPair)]
    x = torch.zeros(2, 8, 4, 4)
    # pair: 2 x 32 positions x 8 bases x (8 + 8); merged: 3 x 32 x 8 x 8 + 3 x 8 x 8 x 8
    assert pw.cost(x) == (8192, 7680)
    assert k3.cost(x) == (2 * 32 * 8 * (8 + 72), 3 * 32 * 8 * 72 + 3 * 8 * 8 * 72)
    assert mid.cost(torch.zeros(2, 8)) == (2 * 2 * 6 * (6 + 8), 3 * 2 * 6 * 8 + 3 * 6 * 6 * 8)  # rank min(6, 8)


def test_the_view_computes_the_model_and_its_gradients_exactly():
    gm = decomposed()
    view = merged_view(gm)
    x, y = torch.randn(2, 8, 4, 4, dtype=torch.float64), torch.tensor([0, 2])
    grads = []
    for model in (gm, view):
        for p in gm.parameters():
            p.grad = None
        out = model(x)
        F.cross_entropy(out, y).backward()
        grads.append((out, [p.grad for p in gm.parameters() if p.requires_grad]))
    (a, ga), (b, gb) = grads
    assert torch.allclose(a, b, rtol=0, atol=1e-13)
    assert len(ga) == 5 and all(torch.allclose(g, h, rtol=0, atol=1e-13) for g, h in zip(ga, gb))


def test_training_through_the_view_trains_the_model_and_leaves_its_graph():
    gm = decomposed()
    code = gm.code
    before = [p.detach().clone() for p in gm.parameters() if p.requires_grad]
    data = [(torch.randn(4, 8, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))]
    fxprune.train_scaling(gm, data, epochs=2, progress=False)
    after = [p.detach() for p in gm.parameters() if p.requires_grad]
    assert all(not torch.equal(b, a) for b, a in zip(before, after))
    assert gm.code == code and not any(isinstance(m, MergedPair) for m in gm.modules())


def test_a_model_without_pairs_is_its_own_view():
    gm = fxprune.prune(Net(), (torch.randn(1, 8, 4, 4),), "insert-channel-scaling")
    assert merged_view(gm) is gm
