"""training.narrow: a narrower network starts as the trained one with channels switched off."""

import numpy as np
import pytest

pytest.importorskip('tensorflow')

from training.model import build_model, ModelConfig  # noqa: E402
from training.narrow import narrow, NarrowError  # noqa: E402

WIDE = {'input_size': [32, 32], 'encoder_filters': [8, 16], 'bottleneck_filters': 16,
        'decoder_convs': [2, 1], 'decoder_reduce': [0, 8]}


def _trained_like(config, seed=0):
    """Build a model with random weights and batch-norm statistics: every channel differs."""
    import keras
    # Seeded: with some initial weights a channel is dead (zero after its ReLU) on the test
    # frames, ties the switched-off channel at zero importance, and the ranking test flips.
    keras.utils.set_random_seed(seed)
    model = build_model(ModelConfig.from_dict(config))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == 'BatchNormalization':
            gamma, beta, mean, variance = (w.numpy() for w in layer.weights)
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape),
                               rng.normal(0, 0.3, beta.shape),
                               rng.normal(0, 0.3, mean.shape),
                               rng.uniform(0.5, 2, variance.shape)])
    return model


def _frames(count=6, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (count, 32, 32, 3)).astype(np.float32)


def _ids(count=6, seed=1):
    return np.random.default_rng(seed).integers(0, 3, (count, 32, 32))


def _switch_off(model, bn_name, keep):
    """Zero a batch norm's scale and shift outside `keep`: those channels output ReLU(0) = 0."""
    layer = model.get_layer(bn_name)
    gamma, beta, mean, variance = (w.numpy() for w in layer.weights)
    off = np.setdiff1d(np.arange(len(gamma)), keep)
    gamma[off], beta[off] = 0, 0
    layer.set_weights([gamma, beta, mean, variance])


def test_same_architecture_is_an_exact_copy():
    source = _trained_like(WIDE)
    target = build_model(ModelConfig.from_dict(WIDE))
    assert narrow(source, target, _frames(), _ids()) == {}
    frames = _frames(seed=2)
    np.testing.assert_allclose(target(frames), source(frames), atol=1e-6)


def test_narrowed_equals_trained_with_the_dropped_channels_off():
    source = _trained_like(WIDE)
    # decoder2 narrowed from 8 to 4 channels, its reduce from 8 to 4, and a new 1x1 reduce of
    # the first decoder block's input (16 -> 8) that selects channels of bottleneck_relu.
    slim = {**WIDE, 'decoder_filters': [16, 4], 'decoder_reduce': [8, 4]}
    target = build_model(ModelConfig.from_dict(slim))
    kept = narrow(source, target, _frames(), _ids())
    assert sorted(kept) == ['decoder1_reduce', 'decoder2_1_sepconv', 'decoder2_reduce']
    assert [len(kept[name]) for name in sorted(kept)] == [8, 4, 4]
    # The same function: the trained network with every channel not kept switched off.
    _switch_off(source, 'bottleneck_bn', kept['decoder1_reduce'])
    _switch_off(source, 'decoder2_reduce_bn', kept['decoder2_reduce'])
    _switch_off(source, 'decoder2_1_bn', kept['decoder2_1_sepconv'])
    frames = _frames(seed=3)
    np.testing.assert_allclose(target(frames), source(frames), atol=1e-5)


def test_channels_kept_are_the_important_ones():
    source = _trained_like(WIDE)
    # Channel 5 of decoder2_1 carries nothing (zero scale and shift): it must be dropped first.
    _switch_off(source, 'decoder2_1_bn', [0, 1, 2, 3, 4, 6, 7])
    target = build_model(ModelConfig.from_dict({**WIDE, 'decoder_filters': [16, 7]}))
    assert 5 not in narrow(source, target, _frames(), _ids())['decoder2_1_sepconv']


def test_wider_or_unmatched_layers_are_refused():
    source = _trained_like(WIDE)
    wider = build_model(ModelConfig.from_dict({**WIDE, 'decoder_filters': [16, 12]}))
    with pytest.raises(NarrowError, match='narrows only'):
        narrow(source, wider, _frames(), _ids())
    new_3x3 = build_model(ModelConfig.from_dict({**WIDE, 'context_filters': 8}))
    with pytest.raises(NarrowError, match='is new'):
        narrow(source, new_3x3, _frames(), _ids())


def test_command_says_what_is_missing(tmp_path, capsys):
    from training.narrow import main
    config = tmp_path / 'slim.yaml'
    config.write_text('model: {input_size: [32, 32], encoder_filters: [8, 16]}\n')
    with pytest.raises(SystemExit) as exit_info:
        main(['--source', str(tmp_path / 'no_run'), '--config', str(config),
              '--output', str(tmp_path / 'out')])
    assert exit_info.value.code == 2
    assert 'config.yaml not found' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()
