"""training.quantize on a tiny real ONNX model: int8 file, metadata, agreement check, card."""

import os
from pathlib import Path
import threading

from followme_perception.segmenter import Segmenter
import numpy as np
import onnx
import onnxruntime as ort
from perception_models import colour_model
import pytest
from training.evaluate import OnnxPredictor
from training.export import ms_per_frame, other_cpu_busy
from training.quantize import (calibration_summary, class_agreement, QuantizationError, quantize,
                               write_card_section)


def _frames(count, size=64, seed=0):
    """Frames of solid red, green and blue squares on noise: every class present."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 60, (count, size, size, 3), dtype=np.uint8)
    for frame in frames:
        for channel in range(3):
            y, x = rng.integers(0, size - 16, 2)
            frame[y:y + 16, x:x + 16, channel] = 230
    return frames


def test_int8_model_agrees_with_float_and_keeps_the_contract(tmp_path):
    float_path = colour_model(tmp_path / 'float.onnx')
    int8_path = tmp_path / 'int8.onnx'
    agreement = quantize(float_path, int8_path, _frames(16), _frames(8, seed=1),
                         calibration='16 synthetic frames')
    assert agreement >= 0.99
    model = onnx.load(int8_path)
    ops = {node.op_type for node in model.graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta['followme.classes'] == 'background,others,hero'
    assert meta['followme.input_size'] == '64,64'
    assert meta['followme.quantized'].startswith('int8')
    assert float(meta['followme.float_agreement']) == pytest.approx(agreement, abs=1e-6)
    assert meta['followme.calibration'] == '16 synthetic frames'
    # A standard graph: no ORT CPU-layout (NCHWc) operators baked in.
    assert all(node.domain in ('', 'ai.onnx') for node in model.graph.node)
    ort.InferenceSession(str(int8_path), providers=['CPUExecutionProvider'])
    frames = _frames(4, seed=2)
    assert class_agreement(OnnxPredictor(float_path), OnnxPredictor(int8_path),
                           frames) == pytest.approx(
        np.mean(np.argmax(OnnxPredictor(float_path)(frames), -1)
                == np.argmax(OnnxPredictor(int8_path)(frames), -1)))


def test_an_int8_model_on_the_image_takes_quantized_input_and_gives_quantized_logits(tmp_path):
    """As the FCN's: uint8 codes of RGB + one ignored channel in, uint8 logits out, said so."""
    float_path = colour_model(tmp_path / 'float.onnx', conv=True)
    int8_path = tmp_path / 'int8.onnx'
    quantize(float_path, int8_path, _frames(16), _frames(8, seed=1))
    model = onnx.load(int8_path)
    assert model.graph.input[0].type.tensor_type.shape.dim[3].dim_value == 4
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta['followme.input_pad_channels'] == '1'
    scale, zero_point = meta['followme.input_quantization'].split(',')
    assert float(scale) > 0 and 0 <= int(zero_point) <= 255
    scale, zero_point = meta['followme.output_quantization'].split(',')
    assert float(scale) > 0 and 0 <= int(zero_point) <= 255
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert 'Softmax' not in {node.op_type for node in model.graph.node}
    assert onnx.load(float_path).graph.input[0].type.tensor_type.shape.dim[3].dim_value == 3
    frames = _frames(4, seed=2)
    int8 = OnnxPredictor(int8_path)
    assert int8.model_input(frames).shape == (4, 64, 64, 4)
    assert int8.model_input(frames).dtype == np.uint8
    assert class_agreement(OnnxPredictor(float_path), int8, frames) >= 0.99
    # Scored on probabilities all the same: the softmax of its logits.
    probabilities = int8(frames)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(probabilities, OnnxPredictor(float_path)(frames), atol=0.1)
    # The node reads it: the segmenter adds the channel itself.
    segmenter = Segmenter(int8_path, warmup_runs=1)
    assert segmenter.info.pad_channels == 1 and segmenter.info.input_codes is not None
    np.testing.assert_array_equal(segmenter.segment(frames[0]).net_ids,
                                  np.argmax(int8(frames[:1])[0], axis=-1))
    assert ms_per_frame(int8_path, (64, 64), runs=4, rounds=2)['median_ms'] > 0


def test_scoring_on_a_provider_this_build_lacks_says_how_to_get_it(tmp_path):
    float_path = colour_model(tmp_path / 'float.onnx')
    missing = next(p for p in ('OpenVINOExecutionProvider', 'CUDAExecutionProvider')
                   if p not in ort.get_available_providers())
    with pytest.raises(ValueError, match=f'no {missing}.*make'):
        OnnxPredictor(float_path, missing)
    assert OnnxPredictor(float_path).provider == 'CPUExecutionProvider'


def test_refuses_to_write_a_model_below_the_agreement_floor(tmp_path):
    float_path = colour_model(tmp_path / 'float.onnx')
    # Calibrated on flat grey frames only, the int8 ranges cannot tell the colours apart.
    grey = np.full((8, 64, 64, 3), 128, np.uint8)
    with pytest.raises(QuantizationError, match='not written'):
        quantize(float_path, tmp_path / 'int8.onnx', grey, _frames(8, seed=1))
    assert not (tmp_path / 'int8.onnx').exists()


def test_card_section_is_replaced_not_repeated(tmp_path):
    card = tmp_path / 'CARD.md'
    card.write_text('# Model card\n\nfloat figures\n')
    timing = {'median_ms': 6.5, 'p90_ms': 7.0, 'runs': 300, 'other_cpu_busy': 0.03,
              'round_medians_ms': [6.5, 7.9, 10.1]}
    report = {'final_score': 0.4, 'final_iou': 0.52, 'weight': 0.76}
    for fast in (3.3, 3.1):
        write_card_section(card, report, report, timing, dict(timing, median_ms=fast), 0.995,
                           'int8.onnx', f'{int(fast * 100)} frames evenly spread over x/train')
    text = card.read_text()
    assert 'calibrated on 310 frames evenly spread over x/train)' in text
    assert '330 frames' not in text
    assert text.startswith('# Model card\n\nfloat figures\n')
    assert text.count('## The int8 model') == 1 and '3.10' in text and '3.30' not in text
    assert 'other work used 3 % of the' in text
    assert 'fastest of 3 rounds of 100; round medians 6.50-10.10 ms' in text


def test_timing_reports_the_fastest_round(tmp_path):
    timing = ms_per_frame(colour_model(tmp_path / 'float.onnx'), (64, 64), runs=30, rounds=3)
    assert len(timing['round_medians_ms']) == 3
    assert round(timing['median_ms'], 2) == min(timing['round_medians_ms'])
    assert timing['p90_ms'] >= timing['median_ms']


def test_other_cpu_busy_sees_a_busy_core():
    if not Path('/proc/stat').is_file():
        pytest.skip('needs /proc/stat (Linux)')
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            pass
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        busy = other_cpu_busy(0.5)  # the spinning thread runs while the caller sleeps
    finally:
        stop.set()
        spinner.join()
    assert 0.9 / os.cpu_count() <= busy <= 1.0


def test_calibration_summary_names_folders_without_this_machines_prefix(tmp_path):
    shared = tmp_path / 'shared' / 'data' / 'udacity_followme' / 'train'
    assert calibration_summary([shared, tmp_path / 'mine'], 200) == (
        f'200 frames evenly spread over udacity_followme/train, {tmp_path / "mine"}')
