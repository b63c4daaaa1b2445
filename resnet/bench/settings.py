"""What the benchmark measures and with which sizes: the measurements' names, descriptions, units and
references (what the JSON, the table and the report carry), and the ``Settings``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COMPILED", "MEASUREMENTS", "REFERENCES", "RESNEXT_GROUPS", "SCHEMA", "UNITS", "Settings"]

#: The version of the JSON result; the report refuses files of another one.
SCHEMA = 1

#: name -> one-line description (what ``--list`` prints and the JSON and the report carry).
MEASUREMENTS: dict[str, str] = {
    "resnet18_train": "ResNet-18 SGD train step, NumPy NCHW batch in, loss out",
    "resnet18_infer": "ResNet-18 inference, NumPy NCHW batch in, logits out",
    "resnet18_train_book": "ResNet-18 SGD train step vs the chapter's own code, NumPy NCHW batch in, loss out",
    "resnet18_infer_book": "ResNet-18 inference vs the chapter's own code, NumPy NCHW batch in, logits out",
    "resnet18_train_compiled": "torch only: ours under torch.compile vs ours eager, train step",
    "resnet18_infer_compiled": "torch only: ours under torch.compile vs ours eager, inference",
    "resnet18_train_parallel": "ResNet-18 train step through the data-parallel engine on one replica vs the plain step",
    "resnext_g2": "ResNeXtBlock(64, 2, 1) forward+backward, native tensors",
    "resnext_g8": "ResNeXtBlock(64, 8, 1) forward+backward, native tensors",
    "resnext_g32": "ResNeXtBlock(64, 32, 1) forward+backward, native tensors",
    "data_pipeline": "resnet.batches.Batches: uint8 28x28 -> shuffled float32 batches resized",
    "import_resnet": "import resnet (no framework), fresh process",
    "import_backend": "import resnet.backends.<name> vs the framework alone, fresh process",
    "matmul_peak": "float32 matrix product on the framework's fast path (best of the repeats)",
    "recipe": "the chapter's recipe: resnet.training.fit, ResNet-18, 10 epochs of Fashion-MNIST's size, seconds",
}
_STOCK_MODELS = (
    "the chapter's model with the framework's stock layers: torch nn.LazyConv2d/LazyBatchNorm2d/"
    "LazyLinear; Keras Conv2D/BatchNormalization/Dense with the book's padding='same'; Flax nn.Conv/"
    "nn.BatchNorm/nn.Dense with padding='same'; Gluon Conv2D/BatchNorm/Dense as HybridBlocks"
)
_BOOK_MODELS = (
    "the chapter's ResNet-18 as its code cells write it (tests/fixtures/d2l-resnet-chapter.md): torch nn.Module "
    "Residual in nested nn.Sequential, Xavier-uniform init_cnn; Keras Residual models in nested Sequential "
    "models; Flax Residual modules in nested nn.Sequential with avg_pool; MXNet under npx.set_np() with "
    "mxnet.np arrays, nn.Block Residual in nested nn.Sequential, Xavier init"
)
#: name -> what the reference side is (None: no reference).
REFERENCES: dict[str, str | None] = {
    "resnet18_train": _STOCK_MODELS + "; stepped by torch.optim.SGD in eager mode, a tf.function step with "
    "keras.optimizers.SGD, a jax.jit step with optax.sgd, a hybridized net with gluon.Trainer",
    "resnet18_infer": _STOCK_MODELS + "; run eagerly under no_grad, in a tf.function, jax.jit, hybridized",
    "resnet18_train_book": _BOOK_MODELS + "; stepped as d2l's Trainer steps it (torch.optim.SGD in eager mode, a "
    "tf.function step with keras.optimizers.SGD, a jax.jit step with optax.sgd, gluon.Trainer on the averaged loss "
    "under numpy semantics)",
    "resnet18_infer_book": _BOOK_MODELS + "; run eagerly under no_grad, in a tf.function, jax.jit, hybridized",
    "resnet18_train_compiled": "ours in eager mode (the default)",
    "resnet18_infer_compiled": "ours in eager mode (the default)",
    "resnet18_train_parallel": "ours, the plain train step (make_train_step): DistributedDataParallel, a jax.sharding "
    "mesh, a tf.distribute strategy, a Gluon kvstore against no engine",
    **{
        name: "the same block with the framework's grouped convolution: groups=g (torch, Gluon; Keras' Conv2D "
        "runs it through XLA), feature_group_count=g (Flax)"
        for name in ("resnext_g2", "resnext_g8", "resnext_g32")
    },
    "data_pipeline": None,
    "import_resnet": None,
    "import_backend": "the framework alone (import torch; tensorflow, keras; jax, flax.linen, optax; mxnet)",
    "matmul_peak": None,
    "recipe": None,
}
#: name -> unit, where it is not images per second.
UNITS: dict[str, str] = {
    "data_pipeline": "batches/s",
    "import_resnet": "s",
    "import_backend": "s",
    "matmul_peak": "GFLOP/s",
    "recipe": "s",
}
#: torch only; measured under ``--quick`` only when named in ``--only`` (compiling takes minutes).
COMPILED = ("resnet18_train_compiled", "resnet18_infer_compiled")
#: The ResNeXt rows and their number of groups.
RESNEXT_GROUPS: dict[str, int] = {"resnext_g2": 2, "resnext_g8": 8, "resnext_g32": 32}


@dataclass(frozen=True)
class Settings:
    """Sizes and timing. The defaults are the book's settings; ``quick_settings()`` gives tiny ones for tests."""

    batch_size: int = 128
    image_size: int = 96
    lr: float = 0.01
    block_channels: int = 64  # ResNeXtBlock(block_channels, g, 1)
    block_batch: int = 4
    block_size: int = 48
    data_batches: int = 8  # batches per pass over the data set in data_pipeline
    matmul_n: int = 2048
    repeats: int = 5
    steps: int | None = None  # steps per repeat for every side; None: chosen from target_seconds
    target_seconds: float = 1.0
    # ResNet-18 rows: at least this many steps a repeat. One training step takes 1-3 s on a 2-core CPU, so
    # target_seconds alone gives single-step repeats, and single steps there vary by up to a quarter.
    model_min_steps: int = 3
    warmup: int = 2
    import_repeats: int = 3
    quick: bool = False
    gpu: bool = False  # the model rows on the framework's GPU (torch, jax)
    mixed_precision: bool = False  # both sides compute in bfloat16 with float32 weights (torch, jax)
    recipe_epochs: int = 10
    compile: bool = False  # torch: the recipe's train step under torch.compile
    recipe_examples: int | None = None  # None: Fashion-MNIST's 60,000 + 10,000

    @classmethod
    def quick_settings(cls) -> Settings:
        """Tiny sizes for CI and the tests: batch 8, 32x32, 2 repeats; the numbers mean nothing."""
        return cls(
            batch_size=8,
            image_size=32,
            block_batch=2,
            block_size=16,
            data_batches=2,
            matmul_n=256,
            repeats=2,
            target_seconds=0.05,
            model_min_steps=1,
            warmup=1,
            import_repeats=1,
            quick=True,
            recipe_epochs=1,
            recipe_examples=64,
        )

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """The NCHW batch shape of the ResNet-18 rows."""
        return (self.batch_size, 1, self.image_size, self.image_size)

    @property
    def block_shape(self) -> tuple[int, int, int, int]:
        """The NCHW input shape of the ResNeXt rows."""
        return (self.block_batch, self.block_channels, self.block_size, self.block_size)
