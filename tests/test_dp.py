"""Tests of DP-SGD training (`model.dp`, `python -m model.train --dp_*`): accounting, clipping,
noise, flag constraints, and DP training on the real 2015 CFPB data."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from dp_accounting import rdp

from model import dp, train
from tests.conftest import DP_2015
from tests.test_train import _auc, _labels, _raw_examples, _serve

# ARCHITECTURE.md's reference: q = 32/18,770, noise 2.0, 70 epochs, δ = 1e-5 gives ε ≈ 0.73.
REFERENCE_EXAMPLES = 18_770
REFERENCE_EPOCHS = 70
REFERENCE_EPSILON = 0.73
# The DP noise is unseeded by design (a seeded noise could be subtracted again), so the AUC varies
# from run to run: 0.570-0.596 measured over four runs. 0.55 is still seven standard errors of an
# AUC on 9,415 examples above chance (0.5), without failing on an unlucky draw.
MIN_DP_AUC_2015 = 0.55


def _independent_epsilon(q: float, noise: float, steps: int, delta: float) -> float:
    """ε straight from dp-accounting, without `model.dp`."""
    accountant = rdp.RdpAccountant()
    accountant.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise)), steps
    )
    return accountant.get_epsilon(delta)


# --- Accounting --------------------------------------------------------------------------------


def test_default_delta_is_one_over_examples_rounded_down_to_a_power_of_ten():
    assert dp.default_delta(18_741) == pytest.approx(1e-5)
    assert dp.default_delta(18_770) == pytest.approx(1e-5)
    assert dp.default_delta(99) == pytest.approx(1e-2)
    assert dp.default_delta(100) == pytest.approx(1e-2)
    assert dp.default_delta(101) == pytest.approx(1e-3)


def test_epsilon_of_the_reference_setting():
    batch = 32
    steps = REFERENCE_EPOCHS * REFERENCE_EXAMPLES // batch
    epsilon = dp.compute_epsilon(
        noise_multiplier=2.0,
        sampling_probability=batch / REFERENCE_EXAMPLES,
        steps=steps,
        delta=1e-5,
    )
    assert epsilon == pytest.approx(REFERENCE_EPSILON, abs=0.01)


def test_larger_noise_gives_smaller_epsilon_and_no_noise_no_guarantee():
    epsilons = [
        dp.compute_epsilon(
            noise_multiplier=noise, sampling_probability=32 / 18_741, steps=5_000, delta=1e-5
        )
        for noise in (0.0, 0.5, 1.0, 2.0, 4.0)
    ]
    assert epsilons[0] == math.inf
    assert all(later < earlier for earlier, later in itertools.pairwise(epsilons))


def test_privacy_record_has_what_the_manifest_and_model_card_show():
    options = dp.DPOptions(2.0, 1.5, 32).with_default_delta(18_741)
    record = dp.privacy_record(options, steps=1_000, batch_size=32, train_examples=18_741)
    assert record["delta"] == pytest.approx(1e-5)
    assert record["epochs"] == pytest.approx(1_000 * 32 / 18_741)
    assert record["epsilon"] == pytest.approx(_independent_epsilon(32 / 18_741, 2.0, 1_000, 1e-5))
    assert record["accountant"].startswith(dp.ACCOUNTANT)
    no_noise = dp.privacy_record(
        dp.DPOptions(0.0, 1.5, 32, 1e-5), steps=10, batch_size=32, train_examples=18_741
    )
    assert no_noise["epsilon"] is None  # JSON null: no finite ε holds


# --- Clipping and noise ------------------------------------------------------------------------


def _tiny_model() -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(3,), name="x")
    outputs = tf.keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=tf.keras.initializers.Constant([[0.5], [-1.0], [2.0]]),
        bias_initializer=tf.keras.initializers.Constant(0.1),
    )(inputs)
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss=tf.keras.losses.BinaryCrossentropy())
    return model


FEATURES = np.array([[1.0, 2.0, 3.0], [0.1, 0.0, 0.0], [-4.0, 5.0, -6.0], [0.0, 0.2, 0.1]])
LABELS = np.array([[0.0], [1.0], [1.0], [0.0]])


def _per_example_gradients_by_hand(model: tf.keras.Model) -> list[list[np.ndarray]]:
    loss = tf.keras.losses.BinaryCrossentropy()
    gradients = []
    for index in range(len(FEATURES)):
        with tf.GradientTape() as tape:
            value = loss(LABELS[index : index + 1], model(FEATURES[index : index + 1]))
        gradients.append([g.numpy() for g in tape.gradient(value, model.trainable_variables)])
    return gradients


def _global_norm(arrays: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(array)) for array in arrays)))


def test_per_example_gradients_are_clipped_to_the_norm_bound():
    model = _tiny_model()
    by_hand = _per_example_gradients_by_hand(model)
    norms_by_hand = [_global_norm(grads) for grads in by_hand]
    clip = 1.0
    assert min(norms_by_hand) < clip < max(norms_by_hand)  # some clipped, some not

    stacked, predictions = dp.microbatch_gradients(
        model, tf.keras.losses.BinaryCrossentropy().call, {"x": FEATURES}, LABELS, len(FEATURES)
    )
    np.testing.assert_allclose(predictions.numpy(), model(FEATURES).numpy(), rtol=1e-6)
    clipped, norms = dp.clip_gradients(stacked, clip)
    np.testing.assert_allclose(norms.numpy(), norms_by_hand, rtol=1e-5)
    for index, grads in enumerate(by_hand):
        after = [g[index].numpy() for g in clipped]
        expected_norm = min(norms_by_hand[index], clip)
        assert _global_norm(after) == pytest.approx(expected_norm, rel=1e-5)
        scale = expected_norm / norms_by_hand[index]  # same direction, shorter
        for got, want in zip(after, grads, strict=True):
            np.testing.assert_allclose(got, want * scale, rtol=1e-5, atol=1e-7)


def test_microbatch_gradient_is_the_mean_of_its_examples_gradients():
    model = _tiny_model()
    by_hand = _per_example_gradients_by_hand(model)
    stacked, _ = dp.microbatch_gradients(
        model, tf.keras.losses.BinaryCrossentropy().call, {"x": FEATURES}, LABELS, 2
    )
    for variable, grad in enumerate(stacked):
        assert grad.shape[0] == 2
        for microbatch in range(2):
            pair = [by_hand[2 * microbatch][variable], by_hand[2 * microbatch + 1][variable]]
            np.testing.assert_allclose(grad[microbatch].numpy(), np.mean(pair, axis=0), rtol=1e-5)


def test_noise_has_standard_deviation_noise_times_clip_over_microbatches():
    summed = [tf.zeros([200, 100]), tf.zeros([50])]
    generator = tf.random.Generator.from_seed(7)
    noised = dp.noised_average(summed, stddev=2.0 * 1.5, count=32, generator=generator)
    values = np.concatenate([grad.numpy().ravel() for grad in noised])
    assert values.std() == pytest.approx(2.0 * 1.5 / 32, rel=0.02)
    assert abs(values.mean()) < 0.005


def test_dp_sgd_without_noise_or_clipping_takes_the_plain_sgd_step():
    plain, private = _tiny_model(), _tiny_model()
    trainer = dp.DPSGDModel(private, dp.DPOptions(0.0, 1e6, len(FEATURES), 1e-5))
    data = ({"x": FEATURES}, LABELS)
    plain.fit(*data, batch_size=len(FEATURES), epochs=1, shuffle=False, verbose=0)
    trainer.fit(*data, batch_size=len(FEATURES), epochs=1, shuffle=False, verbose=0)
    for got, want in zip(private.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_dp_sgd_moves_the_weights_by_at_most_the_clip_without_noise():
    model = _tiny_model()
    before = [w.copy() for w in model.get_weights()]
    clip, rate = 0.01, 0.1  # SGD(0.1): the mean of clipped gradients has norm <= clip
    trainer = dp.DPSGDModel(model, dp.DPOptions(0.0, clip, len(FEATURES), 1e-5))
    trainer.fit({"x": FEATURES}, LABELS, batch_size=len(FEATURES), epochs=1, verbose=0)
    step = [after - start for after, start in zip(model.get_weights(), before, strict=True)]
    assert 0 < _global_norm(step) <= rate * clip * (1 + 1e-5)


def test_microbatches_must_divide_among_replicas():
    dp.check_replicas(dp.DPOptions(2.0, 1.5, 32), 2)
    with pytest.raises(Exception, match="32 microbatches do not divide among 3 replicas"):
        dp.check_replicas(dp.DPOptions(2.0, 1.5, 32), 3)


# --- Flag constraints: one line, exit 2, before any input is read -------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dp_noise_multiplier=2", "--dp_microbatches=5"], "needs both"),
        (["--dp_delta=1e-5"], "need --dp_noise_multiplier and --dp_l2_norm_clip"),
        (["--dp_noise_multiplier=2", "--dp_l2_norm_clip=0"], "must be > 0, got 0.0"),
        (["--dp_noise_multiplier=-1", "--dp_l2_norm_clip=1"], "must be >= 0, got -1.0"),
        (
            ["--dp_noise_multiplier=2", "--dp_l2_norm_clip=1", "--dp_microbatches=5"],
            "batch size 32 is not divisible by 5 microbatches",
        ),
        (
            ["--dp_noise_multiplier=2", "--dp_l2_norm_clip=1", "--dp_delta=1.5"],
            "must be in (0, 1), got 1.5",
        ),
    ],
)
def test_dp_flag_constraints_fail_in_one_line_with_exit_2(flags, message, tmp_path):
    result = CliRunner().invoke(
        train.main,
        [
            f"--transform_dir={tmp_path / 'absent'}",
            f"--output_dir={tmp_path}",
            "--batch_size=32",
            *flags,
        ],
    )
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output


# --- DP training on the real 2015 data ---------------------------------------------------------


def test_dp_training_on_2015_data_reports_epsilon_and_learns(
    trained_2015_dp, ingested_2015_curated
):
    manifest = trained_2015_dp["manifest"]
    privacy = manifest.extra["privacy"]
    train_examples = manifest.counts["train_examples"]
    assert train_examples == 18_741
    assert privacy["delta"] == pytest.approx(1e-5)  # 1/18,741 rounded down
    assert privacy["noise_multiplier"] == DP_2015["noise"]
    assert privacy["l2_norm_clip"] == DP_2015["clip"]
    assert privacy["microbatches"] == DP_2015["batch"] == privacy["batch_size"]
    assert privacy["steps"] == manifest.counts["steps"] == DP_2015["steps"]
    assert privacy["epochs"] == pytest.approx(DP_2015["steps"] * DP_2015["batch"] / train_examples)
    expected = _independent_epsilon(
        DP_2015["batch"] / train_examples, DP_2015["noise"], DP_2015["steps"], 1e-5
    )
    assert privacy["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert 0.05 < privacy["epsilon"] < 1.0  # the book's setting: ε below 1 for a few epochs
    print(
        f"DP-SGD {DP_2015['steps']} steps ({privacy['epochs']:.2f} epochs): "
        f"epsilon {privacy['epsilon']:.4f} at delta {privacy['delta']:g}, "
        f"trained in {trained_2015_dp['seconds']:.0f}s"
    )
    examples = _raw_examples(ingested_2015_curated)
    auc = _auc(_labels(examples), _serve(manifest.extra["export_path"], examples))
    print(
        f"DP model: AUC over {len(examples)} raw eval examples through serving_default: {auc:.4f}"
    )
    assert auc >= MIN_DP_AUC_2015
