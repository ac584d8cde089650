"""Weights computed by parametrize / spectral_norm / weight_norm are frozen before the passes (the same
outputs, bit for bit; a pruned model runs); forward hooks on a layer are refused by name."""



import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import fxprune
from fxprune.core.errors import FxPruneError
from fxprune.core.parametrized import freeze_parametrizations, owned_copy

X = torch.randn(2, 3, 12, 12)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))).mean((2, 3)))


class Symmetric(nn.Module):
    def forward(self, w):
        return w + w.flip(0)


def wrapped(kind: str) -> nn.Module:
    torch.manual_seed(0)
    net = Net()
    if kind == "spectral_norm":
        net.a = nn.utils.spectral_norm(net.a)
        net.head = nn.utils.spectral_norm(net.head)
    elif kind == "weight_norm":
        net.b = nn.utils.weight_norm(net.b)
    elif kind == "parametrizations":
        nn.utils.parametrizations.spectral_norm(net.a)
        nn.utils.parametrizations.weight_norm(net.b)
    else:
        parametrize.register_parametrization(net.b, "weight", Symmetric())
    net.train()(X)  # a power iteration or two: u and v are not their initial values
    return net.eval()


@pytest.mark.parametrize("kind", ["spectral_norm", "weight_norm", "parametrizations", "parametrize"])
def test_computed_weights_are_frozen_bit_for_bit_and_a_pruned_model_runs(kind):
    net = wrapped(kind)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        reference = net(X)
    frozen = owned_copy(net)
    assert freeze_parametrizations(frozen) == {"spectral_norm": 2, "weight_norm": 1, "parametrizations": 2,
                                               "parametrize": 1}[kind]
    with torch.no_grad():
        assert torch.equal(frozen(X), net(X))
    assert not any(parametrize.is_parametrized(m) or m._forward_pre_hooks for m in frozen.modules())
    small = fxprune.prune(net, X, "prune-channels{ratio=0.5},fold")
    assert small(X).shape == (2, 4) and small.get_submodule("b").out_channels == 4
    assert fxprune.prune(net, X, "decompose-conv,insert-scaling", verify=True)(X).shape == (2, 4)
    assert net.state_dict().keys() == before.keys()  # the user's model keeps its parametrizations
    assert all(torch.equal(net.state_dict()[k], v) for k, v in before.items())
    with torch.no_grad():  # and still runs as it did (torch's generated class was not changed under it)
        assert torch.equal(net(X), reference)


@pytest.mark.parametrize("pre", [False, True])
def test_a_forward_hook_on_a_layer_is_refused_by_name(pre):
    net = Net().eval()
    register = net.b.register_forward_pre_hook if pre else net.b.register_forward_hook
    register(lambda *args: None)
    kind = "forward pre-hook" if pre else "forward hook"
    with pytest.raises(FxPruneError, match=rf"^layer 'b' \(Conv2d\) has a {kind}: the passes rewrite layers and "
                                           r"would drop it; remove it before pruning \(its handle's \.remove\(\)\) "
                                           r"and add it to the pruned model's layer if you still need it$"):
        fxprune.prune(net, X, "prune-channels{ratio=0.5},fold")


class Cached(Net):
    """timm's attention_bias_cache in small: a forward stores a tensor computed from a parameter in a dict."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(8))
        self.cache = {}

    def forward(self, x):
        self.cache.setdefault("cpu", self.table * 2)
        return super().forward(x) + self.cache["cpu"][:4]


def test_a_model_whose_forward_filled_a_cache_is_traced_and_pruned_and_keeps_its_cache():
    net = Cached().eval()
    want = net(X)
    cached = net.cache["cpu"]
    assert not cached.is_leaf  # deepcopy refuses it
    gm = fxprune.trace(net)
    small = fxprune.prune(net, X, "prune-channels{ratio=0.5}")
    assert torch.equal(gm(X), want) and small(X).shape == (2, 4) and net.cache["cpu"] is cached
