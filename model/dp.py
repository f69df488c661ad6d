"""Differentially private training (DP-SGD) for any compiled Keras model, and its ε.

`python -m model.train --dp_noise_multiplier=S --dp_l2_norm_clip=C [--dp_microbatches=M]
[--dp_delta=δ]` wraps the user's model in `DPSGDModel`, whose `train_step` is DP-SGD (Abadi et al.,
2016, as TensorFlow Privacy implements it): the global batch of B examples is cut into M
microbatches of B/M examples; the gradient of each microbatch's mean loss is computed (all at
once with `tf.vectorized_map`) and clipped to L2 norm C; the clipped gradients are summed,
Gaussian noise of standard deviation S·C is added to the sum, and the result is divided by M.
One example changes one microbatch's clipped gradient by at most C in L2 norm, hence the noise
scale. TensorFlow Privacy itself does not import with TensorFlow 2.16, so this is our own code.

ε comes from Google's `dp-accounting` library: an RDP accountant composing, once per training
step, a Poisson-sampled Gaussian event with sampling probability q = B / training examples and
noise multiplier S. As in TensorFlow Privacy's `compute_dp_sgd_privacy`, the accounting assumes
Poisson sampling, while the input pipeline shuffles and batches: the usual approximation.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
from collections.abc import Callable, Sequence
from typing import Any

import click
import dp_accounting
import tensorflow as tf
from dp_accounting import rdp

__all__ = [
    "DPOptions",
    "DPSGDModel",
    "check_replicas",
    "clip_gradients",
    "compute_epsilon",
    "default_delta",
    "dp_options",
    "microbatch_gradients",
    "noised_average",
    "privacy_record",
]

MECHANISM = "DP-SGD: per-microbatch L2 clipping, Gaussian noise on the sum"
ACCOUNTANT = "RDP accountant (dp-accounting), Poisson-sampled Gaussian per step"
_NORM_FLOOR = 1e-12  # a zero gradient is not scaled up

LossFn = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class DPOptions:
    """DP-SGD's parameters, checked against the batch size (see `dp_options`).

    Attributes:
        noise_multiplier: S, the noise's standard deviation relative to the clip.
        l2_norm_clip: C, the largest L2 norm of one microbatch's gradient.
        microbatches: M, microbatches per global batch (the batch size: one example each).
        delta: δ of the (ε, δ) guarantee reported; None until `with_default_delta` sets it.
    """

    noise_multiplier: float
    l2_norm_clip: float
    microbatches: int
    delta: float | None = None

    def with_default_delta(self, train_examples: int) -> DPOptions:
        """These options, with `default_delta(train_examples)` if no δ was given."""
        if self.delta is not None:
            return self
        return dataclasses.replace(self, delta=default_delta(train_examples))


def default_delta(train_examples: int) -> float:
    """1 / training examples, rounded down to a power of ten: 18,741 examples give 1e-5."""
    return 10.0 ** math.floor(math.log10(1.0 / max(train_examples, 1)))


def dp_options(
    *,
    noise_multiplier: float | None,
    l2_norm_clip: float | None,
    microbatches: int | None,
    delta: float | None,
    batch_size: int,
) -> DPOptions | None:
    """The DP-SGD options of the `--dp_*` flags, or None when none is given.

    Checked before anything is read, so a wrong flag fails at once; a missing δ stays None
    (see `DPOptions.with_default_delta`).

    Raises:
        click.UsageError: only one of noise multiplier and clip, or other `--dp_*` flags alone.
        click.BadParameter: clip not above 0, negative noise, a batch size the microbatches do
            not divide, or δ outside (0, 1).
    """
    if noise_multiplier is None and l2_norm_clip is None:
        if microbatches is not None or delta is not None:
            raise click.UsageError(
                "--dp_microbatches and --dp_delta need --dp_noise_multiplier and --dp_l2_norm_clip"
            )
        return None
    if noise_multiplier is None or l2_norm_clip is None:
        raise click.UsageError("DP-SGD needs both --dp_noise_multiplier and --dp_l2_norm_clip")
    if not (math.isfinite(l2_norm_clip) and l2_norm_clip > 0):
        raise click.BadParameter(f"must be > 0, got {l2_norm_clip}", param_hint="--dp_l2_norm_clip")
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise click.BadParameter(
            f"must be >= 0, got {noise_multiplier}", param_hint="--dp_noise_multiplier"
        )
    microbatches = batch_size if microbatches is None else microbatches
    if microbatches < 1 or batch_size % microbatches:
        raise click.BadParameter(
            f"batch size {batch_size} is not divisible by {microbatches} microbatches",
            param_hint="--dp_microbatches",
        )
    if delta is not None and not 0 < delta < 1:
        raise click.BadParameter(f"must be in (0, 1), got {delta}", param_hint="--dp_delta")
    return DPOptions(noise_multiplier, l2_norm_clip, microbatches, delta)


def check_replicas(options: DPOptions, replicas: int) -> None:
    """Each replica must hold whole microbatches.

    Raises:
        click.BadParameter: the microbatches do not divide among the replicas.
    """
    if options.microbatches % replicas:
        raise click.BadParameter(
            f"{options.microbatches} microbatches do not divide among {replicas} replicas",
            param_hint="--dp_microbatches",
        )


def compute_epsilon(
    *, noise_multiplier: float, sampling_probability: float, steps: int, delta: float
) -> float:
    """ε after `steps` Poisson-sampled Gaussian steps, by dp-accounting's RDP accountant.

    Returns:
        ε for the given δ; infinity without noise (no guarantee at all).
    """
    if noise_multiplier == 0:
        return math.inf
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            sampling_probability, dp_accounting.GaussianDpEvent(noise_multiplier)
        ),
        steps,
    )
    accountant = rdp.RdpAccountant()
    accountant.compose(event)
    return float(accountant.get_epsilon(delta))


def privacy_record(
    options: DPOptions, *, steps: int, batch_size: int, train_examples: int
) -> dict[str, Any]:
    """The training manifest's `privacy` entry: ε, δ and everything they depend on.

    ε is None (JSON null) without noise: no finite ε holds.
    """
    sampling_probability = min(1.0, batch_size / train_examples)
    epsilon = compute_epsilon(
        noise_multiplier=options.noise_multiplier,
        sampling_probability=sampling_probability,
        steps=steps,
        delta=options.delta,
    )
    return {
        "mechanism": MECHANISM,
        "accountant": f"{ACCOUNTANT} {importlib.metadata.version('dp-accounting')}",
        "epsilon": None if math.isinf(epsilon) else epsilon,
        "delta": options.delta,
        "noise_multiplier": options.noise_multiplier,
        "l2_norm_clip": options.l2_norm_clip,
        "microbatches": options.microbatches,
        "batch_size": batch_size,
        "sampling_probability": sampling_probability,
        "steps": steps,
        "epochs": steps * batch_size / train_examples,
        "train_examples": train_examples,
    }


def _split(tensor: tf.Tensor, microbatches: int) -> tf.Tensor:
    """`[batch, ...]` to `[microbatches, batch / microbatches, ...]`."""
    return tf.reshape(tensor, tf.concat([[microbatches, -1], tf.shape(tensor)[1:]], axis=0))


def microbatch_gradients(
    model: tf.keras.Model,
    per_example_loss: LossFn,
    features: Any,
    labels: tf.Tensor,
    microbatches: int,
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """The gradient of each microbatch's mean loss, computed at once by `tf.vectorized_map`.

    Args:
        model: the Keras model; its trainable variables are differentiated.
        per_example_loss: (labels, predictions) to one loss per example (no reduction).
        features: the model's inputs (a tensor or a dict of tensors), batch first.
        labels: the labels, batch first; the batch must divide into `microbatches`.
        microbatches: how many microbatches to cut the batch into.

    Returns:
        One tensor per trainable variable, `[microbatches, *variable shape]`, and the model's
        predictions for the whole batch (in the batch's order).
    """
    variables = model.trainable_variables

    def gradients(microbatch: tuple[Any, tf.Tensor]) -> tuple[list[tf.Tensor], tf.Tensor]:
        inputs, targets = microbatch
        with tf.GradientTape() as tape:
            predictions = model(inputs, training=True)
            loss = tf.reduce_mean(per_example_loss(targets, predictions))
            if model.losses:  # regularization: data-independent, but clipped with the rest
                loss += tf.add_n(model.losses)
        grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        # Sparse gradients (an embedding's IndexedSlices) become dense: one per microbatch.
        return [tf.convert_to_tensor(grad) for grad in grads], predictions

    split = (
        tf.nest.map_structure(lambda tensor: _split(tensor, microbatches), features),
        _split(labels, microbatches),
    )
    stacked, predictions = tf.vectorized_map(gradients, split)
    shape = tf.concat([[-1], tf.shape(predictions)[2:]], axis=0)
    return stacked, tf.reshape(predictions, shape)


def clip_gradients(
    stacked: Sequence[tf.Tensor], l2_norm_clip: float
) -> tuple[list[tf.Tensor], tf.Tensor]:
    """Scales each microbatch's gradient (over all variables) to L2 norm at most `l2_norm_clip`.

    Args:
        stacked: one tensor per variable, `[microbatches, *variable shape]`.
        l2_norm_clip: C.

    Returns:
        The clipped gradients, stacked the same way, and each microbatch's norm before clipping.
    """
    squares = [
        tf.reduce_sum(tf.reshape(tf.square(grad), [tf.shape(grad)[0], -1]), axis=1)
        for grad in stacked
    ]
    norms = tf.sqrt(tf.add_n(squares))
    scale = tf.minimum(1.0, l2_norm_clip / tf.maximum(norms, _NORM_FLOOR))
    clipped = [
        grad * tf.reshape(tf.cast(scale, grad.dtype), [-1] + [1] * (grad.shape.rank - 1))
        for grad in stacked
    ]
    return clipped, norms


def noised_average(
    summed: Sequence[tf.Tensor], *, stddev: float, count: int, generator: tf.random.Generator
) -> list[tf.Tensor]:
    """(sum + N(0, stddev²) per coordinate) / count, for each variable's summed gradient."""
    return [
        (grad + generator.normal(tf.shape(grad), stddev=stddev, dtype=grad.dtype)) / count
        for grad in summed
    ]


def _per_example_loss(loss: Any) -> LossFn:
    """The compiled loss without its reduction: one value per example."""
    if isinstance(loss, tf.keras.losses.Loss):
        return loss.call
    if isinstance(loss, str) or callable(loss):
        return tf.keras.losses.get(loss)
    raise ValueError(f"DP-SGD needs one loss for the model's one output, got {loss!r}")


class _NoiseSource:
    """Holds the noise generator out of Keras' tracking, so no checkpoint or export has it.

    The noise must stay secret: a generator saved with the model (or seeded by the training
    seed) would let anyone recompute the noise and subtract it.
    """

    def __init__(self) -> None:
        self.generator = tf.random.Generator.from_non_deterministic_state()


class DPSGDModel(tf.keras.Model):
    """Trains a compiled Keras model with DP-SGD; predicts what the model predicts.

    Build it inside the distribution strategy's scope: it compiles itself like the wrapped model
    (a new optimizer of the same configuration, the same loss and metrics). Export the wrapped
    model, not this one: its weights are the wrapped model's. The training loss and metrics it
    reports (logs, manifest) are computed on the raw training batches and are not covered by ε;
    the model's weights are.

    Under a strategy of R replicas, each replica clips its own microbatches and adds noise of
    standard deviation S·C/√R; Keras sums the replicas' gradients, so the sum carries R
    independent noises (a generator made in a strategy's scope gives each replica its own
    stream) of total variance R·(S·C)²/R = (S·C)²: exactly the noise of one-replica DP-SGD.
    """

    def __init__(self, model: tf.keras.Model, options: DPOptions) -> None:
        super().__init__(name=f"dp_sgd_{model.name}")
        self.private_model = model
        self.options = options
        self._per_example = _per_example_loss(model.loss)
        self._noise = _NoiseSource()
        self.compile_from_config(model.get_compile_config())

    # Plain TensorFlow without Python control flow on tensors: nothing for AutoGraph to convert
    # (a conversion of `call` was once seen failing on the wrapped model's `__call__`).
    @tf.autograph.experimental.do_not_convert
    def call(self, inputs: Any, training: bool | None = None) -> tf.Tensor:
        return self.private_model(inputs, training=training)

    @tf.autograph.experimental.do_not_convert
    def train_step(self, data: Any) -> dict[str, tf.Tensor]:
        """One DP-SGD step on this replica's share of the global batch."""
        features, labels, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        options = self.options
        stacked, predictions = microbatch_gradients(
            self.private_model,
            self._per_example,
            features,
            labels,
            options.microbatches // replicas,
        )
        clipped, _ = clip_gradients(stacked, options.l2_norm_clip)
        noised = noised_average(
            [tf.reduce_sum(grad, axis=0) for grad in clipped],
            stddev=options.noise_multiplier * options.l2_norm_clip / math.sqrt(replicas),
            count=options.microbatches,
            generator=self._noise.generator,
        )
        self.optimizer.apply_gradients(
            zip(noised, self.private_model.trainable_variables, strict=True)
        )
        self.compiled_loss(labels, predictions, regularization_losses=self.losses)  # the metric
        return self.compute_metrics(features, labels, predictions, None)
