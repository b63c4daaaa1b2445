"""Each framework's own idioms on this package's models, beyond the common API: what an experienced user of
the framework does with them directly (PyTorch: lazy layers called by hand; MXNet: the chapter's numpy
semantics, ``npx.set_np()``, and Gluon's parameter names). Tests of one framework run only where it is under
test (module-level conditions, so no other backend reports a skip).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from helpers import CHAPTER_BLOCK_CASES, INSTALLED, SGD_LR, SMALL_RESNET, assert_close, golden, loaded, section

import resnet
from resnet import specs
from resnet.reference import Reference, reference_weights
from resnet.walk import STATISTICS

SMALL_ARCH = ((1, 64), (1, 32))


def _initial_statistics(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``arrays`` with every BatchNorm's running statistics at their initial values (mean 0, variance 1)."""
    reset = dict(arrays)
    for name, value in arrays.items():
        kind = name.rsplit(".", 1)[-1]
        if kind in STATISTICS:
            reset[name] = np.zeros_like(value) if kind == "running_mean" else np.ones_like(value)
    return reset


# ------------------------------------------------------------------------------------------------- PyTorch

if "torch" in INSTALLED:

    @pytest.mark.parametrize(
        "x_shape",
        [(4, 1, 16, 16), (1, 1, 8, 8)],
        ids=["batch4", "batch1_down_to_1x1"],
    )
    def test_torch_first_call_of_an_unbuilt_model_is_our_batchnorm(x_shape):
        """The first training-mode call of an unbuilt model, by hand as a PyTorch user makes it, normalizes and
        updates the running averages as every later call does: the biased batch variance, as the reference.

        A batch of one that reaches a 1x1 stage (one value per channel in ``b3``'s BatchNorm) works too: the
        normalized value is 0, so that BatchNorm outputs its shift, as in Keras, Flax, MXNet and the reference
        (PyTorch's own BatchNorm refuses it). Before, this first call was PyTorch's stock BatchNorm: the
        unbiased variance in the running average, and a ValueError for the batch of one."""
        import torch
        from resnet.backends import torch as rt
        from resnet.backends.torch.layers import BatchNorm2d

        model = rt.ResNet(SMALL_ARCH, num_classes=3)
        assert not rt.is_built(model)
        x = np.random.default_rng(5).standard_normal(x_shape).astype(np.float32)
        model.train()
        with torch.no_grad():
            output = model(torch.from_numpy(x)).numpy()
        after = rt.get_arrays(model)
        reference = Reference(model.spec, _initial_statistics(after))  # the weights it was called with
        expected = reference.forward(x, training=True)
        assert_close(output, expected, 1e-4, "first training-mode output")
        for name in after:
            if name.rsplit(".", 1)[-1] in STATISTICS:
                assert_close(after[name], reference.weights[name], 1e-5, f"{name} after the first call")
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
        assert norms and all(type(m) is BatchNorm2d for m in norms)


# --------------------------------------------------------------------------------------------- MXNet/Gluon

if "mxnet" in INSTALLED:

    @contextlib.contextmanager
    def numpy_semantics():
        """Within: the chapter's ``npx.set_np()``; ``npx.reset_np()`` after, so that no other test runs under it
        (the setting is global to the process)."""
        from mxnet import npx
        from mxnet.util import is_np_array, is_np_shape

        assert not is_np_array() and not is_np_shape(), "an earlier test left numpy semantics on"
        npx.set_np()
        try:
            yield
        finally:
            npx.reset_np()

    def _hook_results(rn, case, arrays):
        """Everything the hooks compute for ``case`` from the golden weights: inference, the training pass
        (output, gradients, running statistics), the compiled prediction and, for a classifier, one SGD step."""
        out = {"inference": resnet.forward(loaded(rn, case, arrays), arrays["input"])}
        model = loaded(rn, case, arrays)
        out["training"], grads = rn.vjp(model, arrays["input"], arrays["output_grad"])
        out.update({f"grad/{name}": grad for name, grad in grads.items()})
        out.update({f"after_training/{name}": value for name, value in rn.get_arrays(model).items()})
        model = loaded(rn, case, arrays)
        out["predict"] = rn.make_predict(model)(arrays["input"])
        if case.classifier:
            out["sgd_loss"] = np.array(rn.make_train_step(model, SGD_LR)(arrays["input"], arrays["labels"]))
            out.update({f"after_sgd/{name}": value for name, value in rn.get_arrays(model).items()})
        return out

    #: A strided block, a grouped block that MXNet computes in chunks of 16 channels, the chapter's small ResNet.
    SEMANTICS_CASES = [case for case in CHAPTER_BLOCK_CASES if case.name in ("residual_1x1_s2", "resnext_g8")]
    SEMANTICS_CASES.append(SMALL_RESNET)

    @pytest.mark.parametrize("case", SEMANTICS_CASES, ids=lambda case: case.name)
    def test_mxnet_numbers_are_the_same_under_numpy_semantics(case):
        """Under ``npx.set_np()`` every hook works and gives the numbers it gives without: outputs, gradients,
        running statistics, predictions and an SGD step; the reference's numbers, both."""
        from resnet.backends import mxnet as rn

        arrays = golden(case)
        legacy = _hook_results(rn, case, arrays)
        with numpy_semantics():
            under_np = _hook_results(rn, case, arrays)
        assert sorted(under_np) == sorted(legacy)
        # Float32 rounding: the two semantics' operators sum in different orders in places (a grouped
        # convolution's chunks), which shows most on the conv biases in front of BatchNorm, whose true gradient
        # is 0; so a gradient's tolerance scales with the largest gradient of all.
        largest_grad = max(float(np.abs(value).max()) for name, value in legacy.items() if name.startswith("grad/"))
        for name, value in legacy.items():
            scale = largest_grad if name.startswith("grad/") else float(np.abs(value).max())
            assert_close(under_np[name], value, 1e-6 * max(1.0, scale), f"{name} (set_np)")
        atol = 1e-4 if case.classifier else 1e-5
        assert_close(under_np["inference"], arrays["inference"], atol, "inference (set_np) against the reference")
        assert_close(under_np["training"], arrays["training"], atol, "training output (set_np) against the reference")

    def test_mxnet_books_cells_under_numpy_semantics():
        """The chapter's MXNet cells after its ``npx.set_np()``: the blocks on ``np.random.uniform`` inputs, and
        ResNet-18's ``layer_summary``; the outputs are ``mxnet.numpy`` arrays."""
        from mxnet import np as mnp
        from resnet.backends import mxnet as rn

        with numpy_semantics():
            blk = rn.Residual(3)
            blk.initialize()
            X = mnp.random.uniform(size=(4, 3, 6, 6))
            assert blk(X).shape == (4, 3, 6, 6) and isinstance(blk(X), mnp.ndarray)
            blk = rn.Residual(6, use_1x1conv=True, strides=2)
            blk.initialize()
            assert blk(X).shape == (4, 6, 3, 3)
            blk = rn.ResNeXtBlock(32, 16, 1)
            blk.initialize()
            X = mnp.random.uniform(size=(4, 32, 96, 96))
            assert blk(X).shape == (4, 32, 96, 96)
            model = rn.ResNet18(lr=0.01)
            model.layer_summary((1, 1, 96, 96))
            model.hybridize()
            assert model(mnp.zeros((2, 1, 96, 96))).shape == (2, 10)

    @pytest.mark.parametrize("made_under_numpy", [False, True], ids=["made_legacy", "made_under_set_np"])
    def test_mxnet_models_take_both_kinds_in_both_semantics(made_under_numpy):
        """A model computes in the semantics it was made in and returns the caller's kind of array, from
        ``mxnet.numpy`` arrays and legacy NDArrays alike: the same numbers whichever way, built in one
        semantics and used in the other, the hooks and a Gluon training step included; the caller's semantics
        are unchanged afterwards."""
        import mxnet as mx
        from mxnet import autograd, gluon
        from mxnet.util import is_np_array, is_np_shape
        from resnet.backends import mxnet as rn

        case = SMALL_RESNET
        arrays = golden(case)
        x = arrays["input"]
        make = contextlib.nullcontext if not made_under_numpy else numpy_semantics
        with make():
            model, block = loaded(rn, case, arrays), rn.Residual(3)
            block.initialize()
        use = numpy_semantics if not made_under_numpy else contextlib.nullcontext
        with use():
            caller_numpy = is_np_array()
            for X in (mx.nd.array(x), mx.np.array(x)):
                y = model(X)
                assert isinstance(y, mx.np.ndarray) == caller_numpy
                assert_close(y.asnumpy(), arrays["inference"], 1e-4, f"{type(X).__name__} in")
            assert type(block(mx.nd.ones((2, 3, 6, 6)))) is type(block(mx.np.ones((2, 3, 6, 6))))
            assert isinstance(rn.to_native(x), mx.np.ndarray) == caller_numpy
            native = rn.apply(model, rn.to_native(x), training=False)
            assert isinstance(native, mx.np.ndarray) == caller_numpy
            assert [isinstance(y, mx.np.ndarray) for _, y in rn.part_outputs(model, rn.to_native(x))] == [
                caller_numpy
            ] * len(case.spec.part_names)
            assert_close(resnet.forward(model, x), arrays["inference"], 1e-4, "resnet.forward")
            output, grads = rn.vjp(model, x, arrays["output_grad"])
            assert_close(output, arrays["training"], 1e-4, "vjp output")
            assert_close(
                grads["b1.conv.weight"],
                arrays["grad/b1.conv.weight"],
                1e-4 * float(np.abs(arrays["grad/b1.conv.weight"]).max()),
                "vjp gradient",
            )
            rn.set_arrays(model, section(arrays, "weights"))
            assert_close(rn.make_train_step(model, SGD_LR)(x, arrays["labels"]), arrays["sgd_loss"][0], 1e-5, "loss")
            if not made_under_numpy:
                # A Gluon Trainer of the user's own, made in the caller's semantics: the reference's SGD step. (Made
                # without numpy semantics, MXNet's optimizer refuses a numpy model's parameters: the README says so.)
                rn.set_arrays(model, section(arrays, "weights"))
                trainer = gluon.Trainer(model.collect_params(), "sgd", {"learning_rate": SGD_LR})
                with autograd.record():
                    loss = gluon.loss.SoftmaxCrossEntropyLoss()(model(rn.to_native(x)), rn.to_native(arrays["labels"]))
                loss.backward()
                trainer.step(x.shape[0])
                after = rn.get_arrays(model)
                for name, value in section(arrays, "after_sgd").items():
                    assert_close(after[name], value, 2e-5, f"{name} after the user's Gluon step")
            assert (is_np_array(), is_np_shape()) == (caller_numpy, caller_numpy)

    #: Small float64 models: the chapter's ResNet, a ResNeXt whose grouped convolutions MXNet computes in chunks
    #: of 16 block-diagonal channels, and a pre-activation model.
    FLOAT64_SPECS = {
        "chapter_resnet": specs.book_resnet(SMALL_ARCH, 10),
        "resnext_chunked": specs.resnet_spec("bottleneck", (1, 1), (32, 64), 10, 3, 8, 16, stem_channels=16),
        "preact_bottleneck": specs.resnet_spec("preact_bottleneck", (2, 1), (8, 16), 10, 3, stem_channels=16),
    }

    @pytest.mark.parametrize("name", FLOAT64_SPECS)
    def test_mxnet_float64_models_initialize_and_train_under_numpy_semantics(name):
        """Under ``npx.set_np()`` a float64 model builds from the hooks' Xavier initializer (before, MXNet's
        ``_npi_uniform`` refused to draw into a float64 weight), its weights float64 within Xavier's bound, and
        then computes the reference's float64 numbers: training-mode output and gradients within 1e-10."""
        from resnet.backends import mxnet as rn

        spec, shape = FLOAT64_SPECS[name], (2, 3, 16, 16)
        with numpy_semantics():
            model = rn.ResNet(spec=spec, dtype="float64")
            rn.build(model, shape)
            drawn = rn.get_arrays(model)
            assert {value.dtype for value in drawn.values()} == {np.dtype("float64")}
            for tensor, value in drawn.items():
                if value.ndim > 1:  # Xavier's uniform draw: magnitude 3, fans averaged
                    fans = (value.shape[0] + value.shape[1]) * np.prod(value.shape[2:]) / 2
                    assert 0 < np.abs(value).max() <= np.sqrt(3 / fans), tensor
            weights = {k: v.astype(np.float64) for k, v in reference_weights(spec, shape, seed=1).items()}
            rn.set_arrays(model, weights)
            x = np.random.default_rng(2).standard_normal(shape)
            output_grad = np.random.default_rng(3).standard_normal((2, 10))
            output, grads = rn.vjp(model, x, output_grad)
        expected_output, expected_grads = Reference(spec, weights).vjp(x, output_grad)
        del expected_grads["input"]
        pairs = {"training-mode output": (output, expected_output)}
        pairs.update({f"gradient of {tensor}": (grads[tensor], value) for tensor, value in expected_grads.items()})
        for what, (actual, expected) in pairs.items():
            assert_close(actual, expected, 1e-10 * max(1.0, float(np.abs(expected).max())), f"{what} (set_np)")

    def _gluon_names(canonical):
        """Canonical tensor names as Gluon names them: dots as underscores, BatchNorm's scale and shift as gamma
        and beta."""
        names = set()
        for name in canonical:
            path, kind = name.rsplit(".", 1)
            if "bn" in path.rsplit(".", 1)[-1]:
                kind = {"weight": "gamma", "bias": "beta"}.get(kind, kind)
            names.add(f"{path}.{kind}".replace(".", "_"))
        return names

    def test_gluon_parameter_names_are_canonical_and_under_the_model():
        """``collect_params()`` names: the model's prefix (its class, or the user's ``prefix=``), then the
        canonical path (``resnet18_b2_0_conv1_weight``), the same for every model whatever was built before;
        a block's layers under the block (Gluon's counter keeps blocks made side by side apart)."""
        from mxnet.gluon import nn
        from resnet.backends import mxnet as rn

        first = rn.ResNet18()
        rn.Residual(3), rn.ResNet(SMALL_ARCH), rn.ResNeXtBlock(32, 8, 1)  # models and blocks made between the two
        second = rn.ResNet18()
        for model in (first, second):
            rn.build(model, (1, 1, 32, 32))
        canonical = rn.get_arrays(first)
        assert sorted(first.collect_params()) == sorted(second.collect_params())
        assert set(first.collect_params()) == {f"resnet18_{name}" for name in _gluon_names(canonical)}
        assert {
            "resnet18_b1_conv_weight",
            "resnet18_b3_0_conv3_weight",
            "resnet18_b5_1_bn2_gamma",
            "resnet18_last_fc_bias",
        } <= set(first.collect_params())
        family = rn.resnet50()
        assert "resnet_b3_0_downsample_bn_running_var" in family.collect_params()
        assert set(rn.ResNet18(prefix="mine_").collect_params()) == {f"mine_{n}" for n in _gluon_names(canonical)}
        block = rn.ResNeXtBlock(64, 8, 0.5, True, 2)
        expected = {"conv1_weight", "bn4_gamma", "conv4_bias"}
        assert {name[len(block.prefix) :] for name in block.collect_params()} >= expected
        assert all(name.startswith(block.prefix) for name in block.collect_params())
        # the book's way of putting blocks and models together: side by side, and inside a user's name scope
        book = nn.HybridSequential()
        book.add(rn.Residual(64), rn.Residual(64))
        ensemble = nn.HybridSequential(prefix="ensemble_")
        with ensemble.name_scope():
            ensemble.add(rn.ResNet18(), rn.ResNet18())
        for net in (book, ensemble):
            net.initialize()
            assert len(list(net.collect_params())) == 2 * len(list(net[0].collect_params()))  # none clash
        assert all(name.startswith("ensemble_resnet18") for name in ensemble.collect_params())
