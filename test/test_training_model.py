"""Model, training run, export parity, evaluation and raw import, with tiny models and data."""

import csv
import dataclasses
import json
import math
from pathlib import Path
import subprocess
import sys

import cv2
from followme_common import scoring
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from test_training_data import write_classic_set
from test_training_onnx_import import trained_looking
from training import evaluate, export, onnx_import, raw_import, search, train
from training.data import DataError, find_pairs, materialize
from training.model import build_model, ModelConfig
import yaml

TINY_MODEL = {'input_size': [32, 32], 'encoder_filters': [4, 8], 'bottleneck_filters': 8,
              'decoder_convs': 1}


def test_classic_model_shape_and_softmax():
    model = build_model(ModelConfig())
    assert model.input_shape == (None, 160, 160, 3)
    assert model.output_shape == (None, 160, 160, 3)
    tiny = build_model(ModelConfig.from_dict(TINY_MODEL))
    probs = np.asarray(tiny.predict_on_batch(np.zeros((2, 32, 32, 3), np.float32)))
    assert probs.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(probs.sum(axis=-1), 1.0, atol=1e-5)


def test_decoder_blocks_can_differ_and_narrow_before_upsampling():
    config = ModelConfig.from_dict({**TINY_MODEL, 'decoder_convs': [2, 1],
                                    'decoder_reduce': [0, 3]})
    model = build_model(config)
    names = [layer.name for layer in model.layers]
    assert 'decoder1_2_sepconv' in names and 'decoder2_2_sepconv' not in names
    assert 'decoder1_reduce' not in names
    assert model.get_layer('decoder2_reduce').output.shape[-1] == 3
    assert model.get_layer('decoder2_up').output.shape[-1] == 3
    assert model.output_shape == (None, 32, 32, 3)
    # The metadata round trip (followme.architecture is the config as JSON).
    assert ModelConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config)))) == config


def test_a_context_level_starts_as_the_network_without_it():
    plain = trained_looking(ModelConfig.from_dict(TINY_MODEL))
    rng = np.random.default_rng(4)
    grown = build_model(ModelConfig.from_dict({**TINY_MODEL, 'context_filters': 6}))
    train._copy_matching_layers(plain, grown)
    assert grown.get_layer('context_up').output.shape[1:] == (8, 8, 8)
    pixels = rng.uniform(-1, 1, (2, 32, 32, 3)).astype('float32')
    expected = np.asarray(plain(pixels, training=False))
    assert expected.max() < 0.99  # a comparison that can fail
    np.testing.assert_allclose(grown(pixels, training=False), expected, atol=1e-6)
    # The projection is the only thing that makes it a no-op: nonzero, the outputs part.
    project = grown.get_layer('context_project')
    project.set_weights([np.full(project.weights[0].shape, 0.5, np.float32)])
    assert np.abs(grown(pixels, training=False) - expected).max() > 1e-3


@pytest.mark.parametrize('bad, message', [
    ({'input_size': [100, 100]}, 'multiple'),
    ({'kernel_size': 4}, 'odd'),
    ({'decoder_filters': [8]}, 'as many decoder'),
    ({'width': 3}, 'unknown model settings'),
    ({'decoder_convs': [2, 1]}, 'one value per decoder block'),
    ({'decoder_convs': [2, 2, 0]}, 'at least 1'),
    ({'decoder_reduce': [0, 0]}, 'one value per decoder block'),
    ({'decoder_reduce': [0, 0, -4]}, '0 \\(none\\) or positive'),
    ({'input_size': [24, 24], 'context_filters': 8}, 'multiple of 2 \\*\\* 4'),
    ({'context_filters': -1}, 'context_filters must be'),
])
def test_bad_model_config_is_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(bad)


def test_unknown_config_keys_are_refused(tmp_path):
    path = tmp_path / 'x.yaml'
    path.write_text('train: {learning_rte: 0.1}\n')
    with pytest.raises(train.ConfigError, match='learning_rte'):
        train.load_config(path)
    with pytest.raises(train.ConfigError, match='not found'):
        train.load_config(tmp_path / 'missing.yaml')
    with pytest.raises(train.ConfigError, match='select_by must be one of val_score'):
        train.merge_config({'train': {'select_by': 'val_loss'}})


def test_shipped_configs_load():
    for name in ('classic', 'shipped'):
        config = train.load_config(train.REPO / 'training' / 'configs' / f'{name}.yaml')
        ModelConfig.from_dict(config['model'])
    classic = train.load_config(train.REPO / 'training' / 'configs' / 'classic.yaml')['train']
    assert (classic['learning_rate'], classic['batch_size'], classic['epochs'],
            classic['steps_per_epoch']) == (0.01, 32, 30, 100)


def test_bench_model_sizes_variants_build():
    from bench import bench_model_sizes
    for name, architecture in bench_model_sizes.VARIANTS.items():
        model = build_model(ModelConfig.from_dict(architecture))
        assert model.output_shape == (None, 256, 256, 3), name
    with pytest.raises(SystemExit):
        bench_model_sizes.parse_args(['--variants', 'three_levels,no_such_network'])


def test_bench_perception_times_keras_and_onnx_runtime_in_turns(tmp_path):
    # The side-by-side comparison, run for real on a tiny network: a block per contender per
    # round, and one Keras / node-model ratio per round.
    from bench import bench_perception
    keras_model, exported = bench_perception.export_random_weights_model(tmp_path, TINY_MODEL)
    results = bench_perception.bench_classic(keras_model, exported, count=2, rounds=3,
                                             node_model=exported)
    assert len(results['round_ratios']) == 3
    assert all(ratio > 0 for ratio in results['round_ratios'])
    assert all(results[name] > 0 for name in ('keras_predict', 'onnxruntime',
                                              'onnxruntime_1_thread', 'node_model'))
    assert results['max_abs_difference'] < 1e-4


@pytest.mark.parametrize('command', [train.main, evaluate.main, export.main, raw_import.main,
                                     onnx_import.main, search.main])
def test_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        command(['--help'])
    assert exited.value.code == 0
    assert 'usage' in capsys.readouterr().out


def test_loss_prefers_the_right_answer():
    loss = train.make_loss(hero_weight=2.0, dice_weight=0.5)
    ids = np.zeros((1, 4, 4), np.uint8)
    ids[0, :2, :2] = scoring.HERO
    right = np.eye(3, dtype=np.float32)[ids] * 0.98 + 0.01 / 3
    wrong = np.eye(3, dtype=np.float32)[np.zeros_like(ids)] * 0.98 + 0.01 / 3
    assert float(loss(ids, right)) < 0.1 < float(loss(ids, wrong))


@pytest.fixture(scope='module')
def tiny_run(tmp_path_factory):
    """One real training run: tiny model, 32x32, 2 epochs of 2 steps, on synthetic data."""
    root = tmp_path_factory.mktemp('data')
    config = train.merge_config({
        'name': 'tiny',
        'data': {'train': str(write_classic_set(root / 'train', frames=12, seed=1)),
                 'val': str(write_classic_set(root / 'val', frames=6, seed=2))},
        'model': TINY_MODEL,
        'augment': {'flip': True, 'scale': [0.8, 1.2]},
        'train': {'batch_size': 4, 'epochs': 2, 'steps_per_epoch': 2, 'learning_rate': 0.01,
                  'lr_schedule': 'cosine', 'hero_weight': 2.0, 'dice_weight': 0.5,
                  'small_hero_pixels': 40, 'small_hero_repeats': 2,
                  'select_by': 'val_mix_score', 'keep_epoch_weights': True},
    })
    run_dir = train.train(config, tmp_path_factory.mktemp('runs'), 'tiny')
    return run_dir, root


def test_training_run_writes_its_record(tiny_run):
    run_dir, _ = tiny_run
    for name in ('config.yaml', 'data_fingerprint.json', 'best.weights.h5', 'last.weights.h5',
                 'best.json', 'history.csv', 'curves.png'):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / 'tensorboard').glob('events.out.tfevents.*'))
    saved = yaml.safe_load((run_dir / 'config.yaml').read_text())
    assert saved['model']['input_size'] == [32, 32]
    fingerprint = json.loads((run_dir / 'data_fingerprint.json').read_text())
    assert fingerprint['train']['frames'] == 12 and len(fingerprint['train']['sha256']) == 64
    history = (run_dir / 'history.csv').read_text().strip().splitlines()
    assert len(history) == 3 and 'val_far_hero_detected' in history[0].split(',')


def test_best_epoch_follows_select_by_and_every_epoch_is_kept(tiny_run):
    run_dir, _ = tiny_run
    with open(run_dir / 'history.csv') as rows:
        history = list(csv.DictReader(rows))
    best = json.loads((run_dir / 'best.json').read_text())
    # The first epoch with the highest mix score (a later tie does not replace it).
    scores = [float(row['val_mix_score']) for row in history]
    assert best['epoch'] == scores.index(max(scores)) + 1
    kept = sorted(p.name for p in (run_dir / 'epochs').glob('*.weights.h5'))
    assert kept == ['epoch_01.weights.h5', 'epoch_02.weights.h5']


def _frames_and_model(root, hero_bias):
    """Load the tiny set's frames; build a tiny model whose last bias sees a hero or not."""
    frames = materialize(find_pairs(root / 'train'), (32, 32))
    model = build_model(ModelConfig.from_dict(TINY_MODEL))
    kernel, bias = model.get_layer('classes').get_weights()
    bias[:] = (0.0, 0.0, hero_bias)
    model.get_layer('classes').set_weights([kernel * 0.0, bias])
    return frames, model


def test_false_hero_frames_are_the_empty_frames_where_the_model_sees_a_hero(tiny_run):
    _, root = tiny_run
    frames, sees_hero_everywhere = _frames_and_model(root, 50.0)
    empty = np.flatnonzero(frames.hero_pixels == 0)
    assert len(empty) and len(empty) < len(frames.pairs)
    assert list(train.false_hero_frames(sees_hero_everywhere, frames, chunk=2)) == list(empty)
    _, never_sees_one = _frames_and_model(root, -50.0)
    assert len(train.false_hero_frames(never_sees_one, frames)) == 0


def test_false_hero_repeats_mines_the_starting_weights_and_records_them(tiny_run, tmp_path):
    run_dir, root = tiny_run
    config = yaml.safe_load((run_dir / 'config.yaml').read_text())
    config['train'].update(epochs=1, steps_per_epoch=1, false_hero_repeats=3,
                           keep_epoch_weights=False)
    with pytest.raises(train.ConfigError, match='needs train.init_weights'):
        train.merge_config(config)
    config['train']['init_weights'] = str(run_dir)
    mined_dir = train.train(train.merge_config(config), tmp_path, 'mined')
    record = json.loads((mined_dir / 'false_heroes.json').read_text())
    frames, _ = _frames_and_model(root, 0.0)
    assert record['frames_without_hero'] == int((frames.hero_pixels == 0).sum())
    assert record['repeats'] == 3 and record['false_heroes'] == len(record['files'])
    starting = build_model(ModelConfig.from_dict(TINY_MODEL))
    starting.load_weights(run_dir / 'best.weights.h5')
    expected = train.false_hero_frames(starting, frames)
    assert record['files'] == [str(frames.pairs[i].image) for i in expected]


# Two logical CPUs stand in for two GPUs (no machine of ours has several): TensorFlow's own
# MirroredStrategy over them, as on a multi-GPU machine. Logical devices must be set before
# TensorFlow starts, hence a process of its own.
MIRRORED_RUN = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from training import train
strategy = train.distribution_strategy('CPU')
train.distribution_strategy = lambda: strategy
run_dir = train.train(train.load_config(sys.argv[1]), sys.argv[2], 'mirrored')
print(json.dumps({'replicas': strategy.num_replicas_in_sync, 'run_dir': str(run_dir)}))
"""


def _history(run_dir):
    with open(run_dir / 'history.csv', newline='') as rows:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(rows)]


def test_training_on_several_devices_mirrors_and_matches_one_device(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    assert train.distribution_strategy('CPU').num_replicas_in_sync == 1  # one device: default
    result = subprocess.run(
        [sys.executable, '-c', MIRRORED_RUN, str(run_dir / 'config.yaml'), str(tmp_path)],
        cwd=train.REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info['replicas'] == 2
    mirrored, single = _history(Path(info['run_dir'])), _history(run_dir)
    assert len(mirrored) == len(single) == 2
    assert (Path(info['run_dir']) / 'best.weights.h5').is_file()
    for m, s in zip(mirrored, single):
        # The same batches split over two devices: the same loss, not twice it (a one-value
        # loss is not divided by the replica count by Keras), and validation on every frame
        # once (predict_on_batch under the strategy returned each frame twice).
        assert m['loss'] == pytest.approx(s['loss'], rel=0.1)
        assert m['val_loss'] == pytest.approx(s['val_loss'], rel=0.01)
        assert m['val_hero_iou'] == pytest.approx(s['val_hero_iou'], abs=0.05)


def test_training_with_people_pasted_on_the_fly(tmp_path):
    from test_training_paste import write_scenes
    scenes = write_scenes(tmp_path / 'scenes')   # 96x96, one whole hero to cut out

    def config(**settings):
        return train.merge_config({
            'name': 'pasted', 'data': {'train': str(scenes), 'val': str(scenes)},
            'model': {**TINY_MODEL, 'input_size': [96, 96]},
            'train': {'batch_size': 4, 'epochs': 1, 'steps_per_epoch': 2, **settings}})
    run_dir = train.train(config(paste_source=str(scenes), paste_share=0.5),
                          tmp_path / 'runs', 'pasted')
    assert (run_dir / 'best.weights.h5').is_file()
    source = json.loads((run_dir / 'paste_source_fingerprint.json').read_text())
    assert source['frames'] == 3 and len(source['sha256']) == 64
    for settings, words in (({'paste_share': 0.5}, 'needs train.paste_source'),
                            ({'paste_share': 1.0, 'paste_source': str(scenes)}, r'\[0, 1\)')):
        with pytest.raises(train.ConfigError, match=words):
            train.train(config(**settings), tmp_path / 'runs', 'bad')


def test_far_hero_detection_counts_only_far_heroes():
    def frame(truth_pixels, pred_pixels):
        return scoring.FrameScore((0.0, 0.0, 0.0), truth_pixels, pred_pixels)
    pixels = 224 * 224  # far: a hero under 200 pixels
    frames = [frame(100, 50), frame(150, 0), frame(199, 4),   # far: found, missed, found
              frame(200, 0), frame(3000, 2000),                # near: not counted
              frame(0, 500), frame(3, 0)]                      # no hero (3 px is "absent")
    assert train.far_hero_detected(frames, pixels) == pytest.approx(2 / 3)
    # The threshold scales with the frame: 150 pixels is not far in a 100x100 frame.
    assert math.isnan(train.far_hero_detected([frame(150, 0)], 100 * 100))
    assert math.isnan(train.far_hero_detected([frame(3000, 10), frame(0, 0)], pixels))


def test_search_runs_bounded_trials_and_writes_a_usable_config(tiny_run, tmp_path):
    run_dir, _ = tiny_run
    base = train.merge_config(yaml.safe_load((run_dir / 'config.yaml').read_text()))
    base['train'].update({'epochs': 1, 'steps_per_epoch': 1, 'max_train_frames': 8})
    summary = search.search(base, trials=2, timeout_minutes=5, output=tmp_path / 'study')
    assert len(summary['trials']) == 2
    best = train.load_config(tmp_path / 'study' / 'best_config.yaml')
    assert best['train']['learning_rate'] == summary['best']['params']['learning_rate']
    assert best['train']['max_train_frames'] == 0  # the searched config trains on all data
    assert json.loads((tmp_path / 'study' / 'study.json').read_text())['best']
    with pytest.raises(train.ConfigError, match='not empty'):
        search.search(base, trials=1, timeout_minutes=5, output=tmp_path / 'study')


def write_eval_sets(root):
    for i, name in enumerate(scoring.EVAL_SETS):
        write_classic_set(root / name, frames=4, seed=10 + i)
    return root


def test_export_parity_metadata_and_score(tiny_run, tmp_path):
    run_dir, root = tiny_run
    output = tmp_path / 'model.onnx'
    report, timing, parity = export.export(
        run_dir, output, eval_data=write_eval_sets(root / 'eval'), parity_frames=6,
        card=tmp_path / 'CARD.md')
    assert parity <= 1e-4
    session = ort.InferenceSession(str(output), providers=['CPUExecutionProvider'])
    assert [i.name for i in session.get_inputs()] == ['image']
    assert len(session.get_outputs()) == 1
    meta = session.get_modelmeta().custom_metadata_map
    assert meta['followme.input_size'] == '32,32'
    assert float(meta['followme.input_scale']) == pytest.approx(1 / 127.5)
    assert float(meta['followme.input_offset']) == -1.0
    assert meta['followme.classes'] == 'background,others,hero'
    assert json.loads(meta['followme.training_data'])['train']['frames'] == 12
    assert json.loads(meta['followme.score'])['final_score'] == round(report['final_score'], 4)
    assert meta['followme.commit']
    architecture = json.loads(meta['followme.architecture'])
    assert ModelConfig.from_dict(architecture) == ModelConfig.from_dict(
        yaml.safe_load((run_dir / 'config.yaml').read_text())['model'])
    assert timing['median_ms'] > 0
    # The decoder's concatenations were rewritten away (graph_rewrite), parity still holds.
    assert 'Concat' not in [n.op_type for n in onnx.load(output).graph.node]
    card = (tmp_path / 'CARD.md').read_text()
    assert f"{report['final_score']:.4f}" in card
    # The card's validation figures are those of the exported file, and name the rule.
    validation = evaluate.selection_scores(evaluate.OnnxPredictor(output), [root / 'val'])
    assert validation['frames'] == 6
    assert f"mix score {validation['val_mix_score']:.4f}" in card.replace('\n', ' ')
    assert 'chosen by `val_mix_score`' in card
    # Evaluating the written file reproduces the exported score.
    again = evaluate.evaluate(evaluate.OnnxPredictor(output), root / 'eval')
    assert again['final_score'] == report['final_score']
    assert again['sets'] == report['sets']


def test_parity_check_fails_loudly(tiny_run, tmp_path):
    run_dir, root = tiny_run
    keras_model = evaluate.KerasPredictor(run_dir).model
    onnx_path = tmp_path / 'model.onnx'
    onnx.save(export.convert(keras_model, (32, 32)), onnx_path)
    images = materialize(find_pairs(root / 'val'), (32, 32)).images
    assert export.check_parity(onnx_path, keras_model, images, 1e-4) <= 1e-4
    other = build_model(ModelConfig.from_dict(TINY_MODEL))  # different random weights
    with pytest.raises(export.ParityError, match='differ by up to'):
        export.check_parity(onnx_path, other, images, 1e-4)


def test_evaluate_writes_report_and_grids(tiny_run, tmp_path):
    run_dir, root = tiny_run
    eval_root = root / 'eval_grid'
    write_eval_sets(eval_root)
    report = evaluate.evaluate(evaluate.KerasPredictor(run_dir), eval_root, tmp_path / 'out',
                               grid_frames=3, size_sets={'val': root / 'val'})
    assert 0.0 <= report['final_score'] <= 1.0
    # The extra set's table counts its own frames with the hero, bin by bin.
    val_score = evaluate.score_folder(evaluate.KerasPredictor(run_dir), root / 'val')[0]
    val_rows = report['hero_iou_by_size_other_sets']['val']
    assert sum(row['frames'] for row in val_rows) == sum(
        f.truth_present for f in val_score.frames) > 0
    assert 'hero IoU by hero size (pixels at input size), val:' in evaluate.format_report(report)
    assert set(report['sets']) == set(scoring.EVAL_SETS)
    assert sum(row['frames'] for row in report['hero_iou_by_size']) == sum(
        report['sets'][name]['frames_with_hero'] for name in scoring.IOU_SETS)
    grid = cv2.imread(str(tmp_path / 'out' / 'grid_patrol_with_targ.png'))
    assert grid.shape == (3 * 32, 3 * 32, 3)
    assert json.loads((tmp_path / 'out' / 'report.json').read_text())['final_score'] == \
        report['final_score']


def write_raw_frame(folder, index, ids):
    """One raw capture: RGB frame + others/hero/environment cameras, darkest = own class."""
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / f'cam1_{index:05d}.png'), np.full((*ids.shape, 3), 90, np.uint8))
    for cam, class_id in (('cam2', 1), ('cam3', 2), ('cam4', 0)):
        layer = np.where(ids == class_id, 10, 200).astype(np.uint8)
        cv2.imwrite(str(folder / f'{cam}_{index:05d}.png'), np.dstack([layer] * 3))


def test_raw_import_takes_the_responding_camera(tmp_path):
    ids = np.zeros((16, 16), np.uint8)
    ids[2:6, 2:6] = 1
    ids[8:12, 9:14] = 2
    write_raw_frame(tmp_path / 'raw' / 'run1', 0, ids)
    write_raw_frame(tmp_path / 'raw' / 'run1', 1, ids[::-1])
    assert raw_import.import_raw(tmp_path / 'raw', tmp_path / 'out') == 2
    frames = materialize(find_pairs(tmp_path / 'out'), (16, 16))
    np.testing.assert_array_equal(frames.ids[0], ids)
    np.testing.assert_array_equal(frames.ids[1], ids[::-1])


def test_raw_import_names_an_incomplete_frame(tmp_path):
    write_raw_frame(tmp_path / 'raw', 0, np.zeros((8, 8), np.uint8))
    (tmp_path / 'raw' / 'cam3_00000.png').unlink()
    with pytest.raises(DataError, match='lacks the hero camera'):
        raw_import.group_frames(tmp_path / 'raw')


def test_evaluate_flip_average_averages_each_frame_with_its_mirror(tiny_run, tmp_path):
    run_dir, root = tiny_run
    eval_root = root / 'eval_flip'
    write_eval_sets(eval_root)
    plain = evaluate.load_predictor(run_dir)
    averaged = evaluate.load_predictor(run_dir, flip_average=True)
    images = materialize(find_pairs(eval_root / 'following_images'), (32, 32)).images
    direct, mirrored = plain(images), plain(np.ascontiguousarray(images[:, :, ::-1]))
    assert not np.allclose(direct, mirrored[:, :, ::-1], atol=1e-3)  # the test can tell
    np.testing.assert_allclose(averaged(images), (direct + mirrored[:, :, ::-1]) / 2,
                               atol=1e-6)
    evaluate.main(['--model', str(run_dir), '--data', str(eval_root), '--output',
                   str(tmp_path / 'out'), '--grid-frames', '0', '--flip-average'])
    assert json.loads((tmp_path / 'out' / 'report.json').read_text())['flip_average'] is True


def test_evaluate_size_set_needs_name_and_folder(tiny_run, capsys):
    run_dir, root = tiny_run
    with pytest.raises(SystemExit) as exited:
        evaluate.main(['--model', str(run_dir), '--size-set', str(root / 'val')])
    assert exited.value.code == 2 and 'NAME=FOLDER' in capsys.readouterr().err


def test_evaluate_takes_one_weights_file_of_a_run(tiny_run):
    run_dir, root = tiny_run
    images = materialize(find_pairs(root / 'val'), (32, 32)).images
    kept = evaluate.load_predictor(run_dir / 'epochs' / 'epoch_01.weights.h5')
    first = evaluate.KerasPredictor(run_dir, 'epochs/epoch_01.weights.h5')
    last = evaluate.KerasPredictor(run_dir, 'last.weights.h5')
    np.testing.assert_array_equal(kept(images), first(images))
    assert not np.allclose(first(images), last(images), atol=1e-4)   # the two epochs differ
    np.testing.assert_array_equal(
        evaluate.load_predictor(run_dir / 'epochs' / 'epoch_02.weights.h5')(images),
        last(images))
    np.testing.assert_array_equal(evaluate.load_predictor(run_dir / 'best.weights.h5')(images),
                                  evaluate.load_predictor(run_dir)(images))


def test_train_command_overrides_seed_and_selection(tiny_run, tmp_path):
    _, root = tiny_run
    config = tmp_path / 'tiny.yaml'
    config.write_text(yaml.safe_dump({
        'name': 'tiny-cli', 'seed': 1, 'model': TINY_MODEL,
        'data': {'train': str(root / 'train'), 'val': str(root / 'val')},
        'train': {'batch_size': 4, 'epochs': 5, 'steps_per_epoch': 5}}))
    train.main(['--config', str(config), '--output', str(tmp_path / 'runs'), '--name', 'cli',
                '--epochs', '1', '--steps-per-epoch', '1', '--seed', '7',
                '--select-by', 'val_mix_score', '--keep-epoch-weights'])
    saved = yaml.safe_load((tmp_path / 'runs' / 'cli' / 'config.yaml').read_text())
    assert saved['seed'] == 7 and saved['train']['epochs'] == 1
    assert saved['train']['select_by'] == 'val_mix_score'
    assert (tmp_path / 'runs' / 'cli' / 'epochs' / 'epoch_01.weights.h5').is_file()
