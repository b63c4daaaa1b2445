"""The fast paths every backend shares: asynchronous train steps, the prefetching pipeline, the padded last
evaluation batch, where models run, and bfloat16 mixed precision (PyTorch and JAX; a clear error elsewhere).
Speed itself is for ``resnet bench``; these tests check that the fast paths compute the same things."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from helpers import INSTALLED

from resnet.data import Batches, prefetch, random_like_fashion_mnist
from resnet.init import initial_weights
from resnet.registry import REGISTRY
from resnet.training import evaluate


def _small_model(rn, x_shape, seed=1, **kwargs):
    model = rn.ResNet(((1, 64), (1, 32)), num_classes=10, **kwargs)
    rn.build(model, x_shape)
    rn.set_arrays(model, initial_weights(model.spec, x_shape, seed=seed))
    return model


def _batch(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, size, size), dtype=np.float32), rng.integers(0, 10, n)


def test_step_that_does_not_wait_takes_the_same_steps(rn):
    x, labels = _batch()
    waiting = rn.make_train_step(_small_model(rn, x.shape), 0.1)
    queued = rn.make_train_step(_small_model(rn, x.shape), 0.1)
    expected = [waiting(x, labels) for _ in range(3)]
    futures = [queued(x, labels, wait=False) for _ in range(3)]  # three steps queued before any is read
    assert all(callable(future) for future in futures)
    np.testing.assert_allclose([future() for future in futures], expected, rtol=1e-6)


def test_device_is_reported(rn):
    model = _small_model(rn, (2, 1, 16, 16))
    assert rn.device_of(model) == "cpu:0"  # CI has no GPU; the GPU figures come from resnet bench --gpu
    assert rn.to_accelerator(model) == rn.device_of(model)


def test_mixed_precision_steps_in_bfloat16_with_float32_weights(rn, backend_name):
    x, labels = _batch()
    if not REGISTRY[backend_name].mixed_precision:
        with pytest.raises(ValueError, match=f"available in the torch and jax backends, not in {backend_name}"):
            rn.make_train_step(_small_model(rn, x.shape), 0.1, mixed_precision=True)
        with pytest.raises(ValueError, match="CPU-only"):
            rn.make_predict(_small_model(rn, x.shape), mixed_precision=True)
        return
    full, mixed = _small_model(rn, x.shape), _small_model(rn, x.shape)
    full_loss = rn.make_train_step(full, 0.1)(x, labels)
    mixed_loss = rn.make_train_step(mixed, 0.1, mixed_precision=True)(x, labels)
    assert mixed_loss == pytest.approx(full_loss, rel=2e-2)  # bfloat16 keeps 8 bits of mantissa
    assert mixed_loss != full_loss  # it really computed in bfloat16
    after_full, after_mixed = rn.get_arrays(full), rn.get_arrays(mixed)
    for name, value in after_mixed.items():
        assert value.dtype == np.float32, name  # weights and BatchNorm statistics stay float32
        np.testing.assert_allclose(value, after_full[name], atol=2e-2, err_msg=name)
    logits = rn.make_predict(mixed, mixed_precision=True)(x)
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, rn.make_predict(mixed)(x), atol=0.1)


def test_mixed_precision_is_checked(rn, backend_name):
    model = _small_model(rn, (2, 1, 16, 16), dtype="float64")
    expected = (
        "bfloat16 with float32 weights, but this model is float64"
        if REGISTRY[backend_name].mixed_precision
        else f"not in {backend_name}, whose build here is CPU-only"
    )
    with pytest.raises(ValueError, match=expected):
        rn.make_train_step(model, 0.1, mixed_precision=True)
    with pytest.raises(TypeError, match="mixed_precision must be True or False, got 'bf16'"):
        rn.make_train_step(model, 0.1, mixed_precision="bf16")


def test_evaluation_pads_the_last_batch_without_changing_the_result(rn):
    rng = np.random.default_rng(3)
    images, labels = rng.integers(0, 256, (21, 1, 16, 16), dtype=np.uint8), rng.integers(0, 10, 21)
    model = _small_model(rn, (8, 1, 16, 16))
    predict, shapes = rn.make_predict(model), []

    def recording(x):
        shapes.append(x.shape[0])
        return predict(x)

    loss, accuracy = evaluate(recording, Batches(images, labels, 8))
    assert shapes == [8, 8, 8]  # 21 images: the last batch of 5 is padded to 8
    whole = predict(images.astype(np.float32) / 255.0).astype(np.float64)
    shifted = whole - whole.max(axis=1, keepdims=True)
    expected = np.mean(np.log(np.exp(shifted).sum(axis=1)) - shifted[np.arange(21), labels])
    assert loss == pytest.approx(expected, rel=1e-5)
    assert accuracy == pytest.approx(np.mean(whole.argmax(axis=1) == labels))


def test_prefetch_keeps_order_raises_errors_and_stops_its_thread():
    batches = Batches(np.arange(10 * 4, dtype=np.uint8).reshape(10, 1, 2, 2), np.arange(10), 3, shuffle=True)
    for got, expected in zip(prefetch(batches.epoch(2)), batches.epoch(2), strict=True):
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(prefetch(failing()))
    started = threading.active_count()
    early = prefetch(iter(range(1000)), depth=2)
    next(early)
    early.close()  # a loop that stops early must not leave the worker blocked
    assert threading.active_count() <= started


def test_random_stand_in_has_fashion_mnist_sizes():
    data = random_like_fashion_mnist(60)
    assert data.train_images.shape == (60, 1, 28, 28) and data.val_images.shape == (10, 1, 28, 28)
    assert data.train_images.dtype == np.uint8 and data.num_classes == 10 and "accuracy means nothing" in data.note


if "jax" in INSTALLED:  # how XLA's CPU backend computes convolutions: JAX's alone
    # (batch, size, in, out, kernel, stride, padding), and the primitive that shows the CPU path was taken:
    # the kernel gradient in chunks of images (a last chunk smaller than the others) for 3x3 convolutions and
    # the 7x7/2 stem, 1x1/2 as a matrix product.
    CPU_CONV_CASES = [
        ((12, 12, 3, 5, 3, 1, 1), "custom_vjp_call"),
        ((11, 24, 4, 6, 3, 2, 1), "custom_vjp_call"),
        ((10, 24, 1, 4, 7, 2, 3), "custom_vjp_call"),
        ((10, 8, 4, 6, 1, 2, 0), "dot_general"),
    ]

    CPU_CONV_IDS = ["n{}-{}px-{}to{}-k{}s{}p{}".format(*case) for case, _ in CPU_CONV_CASES]

    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    @pytest.mark.parametrize(("case", "marker"), CPU_CONV_CASES, ids=CPU_CONV_IDS)
    def test_jax_cpu_convolution_matches_xla_convolution(case, marker, dtype):
        """The CPU path of the JAX backend's convolutions gives lax.conv_general_dilated's outputs and gradients
        (input and kernel), and really is another computation than XLA's convolution for these shapes."""
        import jax
        from jax import lax
        from resnet.backends.jax.layers import CpuConvGeneralDilated

        batch, size, c_in, c_out, kernel, stride, pad = case
        rng = np.random.default_rng(4)
        x = rng.standard_normal((batch, size, size, c_in)).astype(dtype)
        w = rng.standard_normal((kernel, kernel, c_in, c_out)).astype(dtype)
        args = dict(window_strides=(stride, stride), padding=((pad, pad), (pad, pad)))
        dims = ("NHWC", "HWIO", "NHWC")

        def ours(x, w):
            return CpuConvGeneralDilated()(x, w, dimension_numbers=dims, **args)

        def xla(x, w):
            return lax.conv_general_dilated(x, w, dimension_numbers=dims, **args)

        with jax.enable_x64(dtype == "float64"):
            expected, xla_vjp = jax.vjp(xla, x, w)
            output, our_vjp = jax.vjp(jax.jit(ours), x, w)
            out_grad = rng.standard_normal(expected.shape).astype(dtype)
            assert marker in str(jax.make_jaxpr(ours)(x, w)) and marker not in str(jax.make_jaxpr(xla)(x, w))
            got_grads, expected_grads = our_vjp(out_grad), xla_vjp(out_grad)
        rtol, atol = (1e-5, 1e-4) if dtype == "float32" else (1e-12, 1e-11)
        assert output.dtype == expected.dtype == dtype
        np.testing.assert_allclose(output, expected, rtol=rtol, atol=atol, err_msg="output")
        for name, got, want in zip(("input grad", "kernel grad"), got_grads, expected_grads, strict=True):
            assert got.dtype == dtype, name
            np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=name)

    # (batch, height, width, channels, kernel, stride, padding): the stem's 3x3/2, odd and even sizes, no padding
    CPU_POOL_CASES = [(3, 12, 12, 4, 3, 2, 1), (2, 7, 9, 3, 3, 2, 1), (2, 8, 8, 2, 2, 2, 0), (1, 6, 5, 2, 3, 1, 1)]

    @pytest.mark.parametrize("dtype", ["float32", "float64"])
    @pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
    @pytest.mark.parametrize("case", CPU_POOL_CASES, ids=["n{}-{}x{}x{}-k{}s{}p{}".format(*c) for c in CPU_POOL_CASES])
    def test_jax_cpu_max_pool_matches_flax_max_pool(case, ties, dtype):
        """The CPU path of the JAX backend's max pooling gives nn.max_pool's outputs and gradients, ties included
        (the whole gradient to each window's first maximum, after ReLU's zeros too), through a custom VJP."""
        import flax.linen as nn
        import jax
        from resnet.backends.jax.layers import max_pool

        batch, height, width, channels, kernel, stride, pad = case
        rng = np.random.default_rng(5)
        x = rng.standard_normal((batch, height, width, channels))
        if ties:  # few distinct values, many zeros: windows with several equal maxima
            x = np.maximum(np.round(x * 2), 0)
        x = x.astype(dtype)

        def ours(x):
            return max_pool(x, kernel, stride, pad)

        def flax(x):
            return nn.max_pool(x, (kernel, kernel), (stride, stride), ((pad, pad), (pad, pad)))

        with jax.enable_x64(dtype == "float64"):
            expected, flax_vjp = jax.vjp(flax, x)
            output, our_vjp = jax.vjp(jax.jit(ours), x)
            out_grad = rng.standard_normal(expected.shape).astype(dtype)
            assert "custom_vjp_call" in str(jax.make_jaxpr(ours)(x))
            (got,), (want,) = our_vjp(out_grad), flax_vjp(out_grad)
        assert output.dtype == got.dtype == dtype
        np.testing.assert_array_equal(output, expected, err_msg="output")
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 if dtype == "float32" else 1e-14, err_msg="gradient")

    def test_jax_steps_compile_with_xla_convolutions_on_a_cpu():
        """On a CPU the backend's jitted steps (``cpu_jit``) compile with ``CPU_COMPILER_OPTIONS``: no YNNPACK
        fusion in the compiled program (XLA's own convolution instead), the same outputs as plain ``jax.jit``,
        and the jitted function's own attributes (``lower``, ``_cache_size``) still there."""
        import jax
        from jax import lax
        from resnet.backends.jax import layers, train

        def conv(x, w):
            return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))

        rng = np.random.default_rng(6)
        x, w = rng.standard_normal((2, 6, 6, 3)).astype("float32"), rng.standard_normal((3, 3, 3, 4)).astype("float32")
        ours = layers.cpu_jit(conv)
        assert layers._cpu_compiler_options() == layers.CPU_COMPILER_OPTIONS  # this jaxlib takes them
        compiled = ours.lower(x, w).compile().as_text()
        assert "convolution(" in compiled and "__ynn_fusion" not in compiled
        np.testing.assert_allclose(ours(x, w), jax.jit(conv)(x, w), rtol=1e-5, atol=1e-5)
        assert ours._cache_size() == 1 and isinstance(train._sgd_step, layers.cpu_jit)

    def test_jax_compiler_options_that_this_jaxlib_refuses_are_left_out(monkeypatch):
        """A jaxlib that does not know an option (or its value) compiles with XLA's defaults instead of failing."""
        from resnet.backends.jax import layers

        monkeypatch.setattr(layers, "CPU_COMPILER_OPTIONS", {"xla_cpu_experimental_ynn_fusion_type": "NO_SUCH_TYPE"})
        layers._cpu_compiler_options.cache_clear()
        try:
            assert layers._cpu_compiler_options() is None
            assert float(layers.cpu_jit(lambda v: v * 2)(np.float32(3))) == 6
        finally:
            monkeypatch.undo()
            layers._cpu_compiler_options.cache_clear()
