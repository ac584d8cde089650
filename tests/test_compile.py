import pytest
import torch
from torch import nn

import fxprune

from .conftest import TinyNet, randomize_bn

X = torch.randn(2, 3, 16, 16)
PIPELINE = "decompose-conv,prune-basis{energy=0.8},fold"


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()  # compiled models share Dynamo's caches and recompile limit
    yield
    torch._dynamo.reset()


def test_backend_runs_the_pipeline_on_the_captured_graph(tiny):
    compiled = torch.compile(tiny, backend=fxprune.backend(PIPELINE, inner="eager"))
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), fxprune.prune(tiny, X, PIPELINE)(X), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(compiled(X), tiny(X), atol=1e-3)  # the pruning really happened


class WithBreak(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = randomize_bn(TinyNet()).eval(), nn.Linear(10, 10)

    def forward(self, x):
        y = self.a(x)
        torch._dynamo.graph_break()
        return self.b(y)


def test_each_graph_of_a_graph_break_is_pruned():
    model = WithBreak().eval()
    graphs = []

    def inner(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=fxprune.backend("decompose-conv,fold", inner=inner))
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), model(X), rtol=1e-4, atol=1e-5)
    assert len(graphs) == 2
    assert all(fxprune.history(g)[-1].name == "fold" for g in graphs)


def test_registered_backend_name_and_inductor_keep_the_model_meaning(tiny):
    compiled = torch.compile(tiny, backend="fxprune")  # entry point in the torch_dynamo_backends group
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), tiny(X), rtol=1e-4, atol=1e-5)


def test_a_lossy_backend_pipeline_says_what_it_removed_and_how_much_the_outputs_changed(tiny):
    compiled = torch.compile(tiny, backend=fxprune.backend(PIPELINE, inner="eager"))
    with pytest.warns(UserWarning, match=r"fxprune backend: 'decompose-conv,prune-basis\{energy=0.8\},fold' is lossy "
                                         r"\(prune-basis\{energy=0.8\}\): it took a captured graph from [\d,]+ to "
                                         r"[\d,]+ params \([\d.]+% fewer\); its outputs on the example inputs changed by "
                                         r"relative L2 0\.\d+"):
        compiled(X)


def test_a_pruned_graph_module_compiles_fullgraph(tiny):
    small = fxprune.prune(tiny, X, PIPELINE)
    compiled = torch.compile(small, fullgraph=True, backend="inductor")
    with torch.no_grad():
        torch.testing.assert_close(compiled(X), small(X), rtol=1e-4, atol=1e-5)


def test_bad_pipeline_fails_when_the_backend_is_made():
    with pytest.raises(fxprune.PipelineError, match="unknown pass 'fold-all'"):
        fxprune.backend("decompose-conv,fold-all")
