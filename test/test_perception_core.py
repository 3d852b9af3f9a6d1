"""The perception core without ROS: segmenter, hero locator, overlay, detection summary."""

import math
from pathlib import Path

import cv2
from followme_common import paths
from followme_perception.detection import (FIELDS, HeroDetection, INDEX, IntrinsicsSource,
                                           RangeSource)
from followme_perception.hero import camera_info_region, HeroLocator, Intrinsics
from followme_perception.overlay import encode_jpeg, tint
from followme_perception.segmenter import (_argmax3, _provider_options, DEFAULT_PROVIDERS,
                                           GpuSettings, HeroProbability, input_codes, ModelError,
                                           Segmentation, Segmenter, softmax_of_codes,
                                           tensorrt_cache_folder)
import numpy as np
import onnx
from onnx import TensorProto
import onnxruntime as ort
from perception_models import (CLASSIC_OFFSET, CLASSIC_SCALE, colour_model, quantize_linear,
                               scene)
import pytest

FRAME = (240, 320)
# The model contract's metadata for a 48x64 colour model, without the optional entries.
CONTRACT = {'followme.input_size': '48,64', 'followme.input_scale': repr(CLASSIC_SCALE),
            'followme.input_offset': repr(CLASSIC_OFFSET),
            'followme.classes': 'background,others,hero'}


@pytest.fixture
def model(tmp_path):
    return colour_model(tmp_path / 'colour.onnx', size=(48, 64))


# Segmenter ------------------------------------------------------------------------------


def test_metadata_sets_size_normalisation_and_classes(model):
    segmenter = Segmenter(model, warmup_runs=1)
    assert segmenter.input_size == (48, 64)
    assert segmenter.info.classes == ('background', 'others', 'hero')
    rgb = np.arange(64 * 48 * 3, dtype=np.uint32).reshape(48, 64, 3).astype(np.uint8)
    batch = segmenter.preprocess(rgb)
    assert batch.shape == (1, 48, 64, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], rgb * CLASSIC_SCALE + CLASSIC_OFFSET, atol=1e-6)


def test_flip_average_is_the_mean_of_the_frame_and_its_mirror():
    shipped = paths.default_model_file()  # a real network: not mirror-symmetric
    plain = Segmenter(shipped, warmup_runs=0)
    averaged = Segmenter(shipped, warmup_runs=0, flip_average=True)
    batch = plain.preprocess(scene()[0])
    # The int8 model gives quantized logits: averaged as probabilities.
    direct = plain.probabilities(plain.infer(batch.copy()))
    mirrored = plain.probabilities(plain.infer(np.ascontiguousarray(batch[:, :, ::-1])))[:, ::-1]
    assert not np.allclose(direct, mirrored, atol=1e-3)  # so the test can tell
    np.testing.assert_allclose(averaged.infer(batch), (direct + mirrored) / 2, atol=1e-6)


def test_segment_matches_onnx_runtime_run_directly(model):
    rgb, truth = scene()
    segmenter = Segmenter(model, warmup_runs=0)
    segmentation = segmenter.segment(rgb)
    # The same providers: each rounds its floats a little differently.
    session = ort.InferenceSession(str(model), providers=list(segmenter.providers))
    small = cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_LINEAR)
    probs = session.run(None, {'image': (small * np.float32(CLASSIC_SCALE)
                                         + np.float32(CLASSIC_OFFSET))[None]})[0][0]
    expected = cv2.resize(np.argmax(probs, 2).astype(np.uint8), (320, 240),
                          interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(segmentation.class_ids(), expected)
    # The synthetic scene's boxes sit on the 5x grid, so the mask is also the ground truth.
    np.testing.assert_array_equal(segmentation.class_ids(), truth)
    np.testing.assert_allclose(segmentation.hero_prob, probs[:, :, 2])


@pytest.mark.parametrize('classes', ['background,others,hero', 'hero,background,others'])
def test_class_ids_are_the_argmax_ties_to_the_first_channel(tmp_path, classes):
    segmenter = Segmenter(colour_model(tmp_path / 'm.onnx', size=(48, 64), classes=classes),
                          warmup_runs=0)
    # Values from {0, 0.5, 1}: a third of the channel pairs tie.
    probs = np.random.default_rng(0).integers(0, 3, (48, 64, 3)).astype(np.float32) / 2
    ids = {name: i for i, name in enumerate(('background', 'others', 'hero'))}
    channel_to_id = np.array([ids[name] for name in classes.split(',')])
    segmentation = segmenter.postprocess(probs, (96, 128))
    np.testing.assert_array_equal(segmentation.net_ids, channel_to_id[np.argmax(probs, 2)])
    np.testing.assert_array_equal(segmentation.class_ids()[::2, ::2], segmentation.net_ids)


@pytest.mark.parametrize('size', [(96, 128), (48, 64), (100, 70)])
def test_class_ids_at_the_input_size_into_a_given_buffer(size):
    net_ids = np.random.default_rng(1).integers(0, 3, (48, 64)).astype(np.uint8)
    segmentation = Segmentation(net_ids, np.zeros(net_ids.shape, np.float32), size)
    fresh = segmentation.class_ids()
    np.testing.assert_array_equal(
        fresh, cv2.resize(net_ids, size[::-1], interpolation=cv2.INTER_NEAREST))
    out = np.full(size, 9, np.uint8)  # e.g. an outgoing message's own buffer
    written = segmentation.class_ids(out=out)
    assert np.shares_memory(written, out)
    np.testing.assert_array_equal(out, fresh)


@pytest.mark.parametrize('shape', [(1, 1), (1, 7), (5, 1), (3, 4), (256, 256)])
def test_fast_argmax_is_numpys_on_any_grid(shape):
    rng = np.random.default_rng(sum(shape))
    for probs in (rng.dirichlet([1, 1, 1], size=shape).astype(np.float32),
                  rng.integers(0, 3, (*shape, 3)).astype(np.float32) / 2):  # many ties
        ids = _argmax3(probs)
        assert ids.dtype == np.uint8 and ids.shape == shape
        np.testing.assert_array_equal(ids, np.argmax(probs, 2))


@pytest.mark.parametrize('classes', ['hero,background,others', 'others,hero,background'])
def test_any_output_class_order_maps_to_our_ids(tmp_path, classes):
    rgb, truth = scene()
    permuted = Segmenter(colour_model(tmp_path / 'p.onnx', size=(48, 64), classes=classes),
                         warmup_runs=0).segment(rgb)
    np.testing.assert_array_equal(permuted.class_ids(), truth)
    assert permuted.hero_prob[truth[::5, ::5] == 2].min() > 0.9


def test_dynamic_size_model_uses_metadata_size(tmp_path):
    path = colour_model(tmp_path / 'dyn.onnx', size=(40, 40))
    model = onnx.load(str(path))
    for value_info in (model.graph.input[0], model.graph.output[0]):
        dims = value_info.type.tensor_type.shape.dim
        dims[1].dim_param, dims[2].dim_param = 'height', 'width'
    onnx.save(model, str(path))
    segmenter = Segmenter(path, warmup_runs=1)
    assert segmenter.input_size == (40, 40)
    del model.metadata_props[:]
    for key, value in (('followme.input_scale', '1'), ('followme.input_offset', '0'),
                       ('followme.classes', 'background,others,hero')):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match='dynamic'):
        Segmenter(path)


@pytest.mark.parametrize('metadata,words', [
    ({'followme.input_size': '48,64', 'followme.input_scale': '1',
      'followme.classes': 'background,others,hero'}, 'input_offset'),
    ({'followme.input_size': '32,32', 'followme.input_scale': '1', 'followme.input_offset': '0',
      'followme.classes': 'background,others,hero'}, 'fixed at'),
    ({'followme.input_size': '48,64', 'followme.input_scale': '1', 'followme.input_offset': '0',
      'followme.classes': 'road,car,hero'}, 'three classes'),
    ({'followme.input_size': '48x64', 'followme.input_scale': '1',
      'followme.input_offset': '0', 'followme.classes': 'background,others,hero'}, 'H,W'),
])
def test_contract_violations_fail_with_a_reason(tmp_path, metadata, words):
    with pytest.raises(ModelError, match=words):
        Segmenter(colour_model(tmp_path / 'bad.onnx', size=(48, 64), metadata=metadata))


def test_missing_corrupt_and_channels_first_models_fail_clearly(tmp_path):
    with pytest.raises(ModelError, match='not found.*model_path'):
        Segmenter(tmp_path / 'nothing.onnx')
    corrupt = tmp_path / 'corrupt.onnx'
    corrupt.write_bytes(b'\x08\x07garbage')
    with pytest.raises(ModelError, match='cannot load'):
        Segmenter(corrupt)
    with pytest.raises(ModelError, match=r'NHWC'):
        Segmenter(colour_model(tmp_path / 'nchw.onnx', channels_first=True))


def test_a_padded_input_model_gets_its_ignored_channel(tmp_path, model):
    """followme.input_pad_channels 1 (the int8 models): RGB plus a channel the network ignores."""
    padded = Segmenter(colour_model(tmp_path / 'padded.onnx', size=(48, 64), conv=True,
                                    pad_channels=1), warmup_runs=1)
    plain = Segmenter(model, warmup_runs=1)
    assert padded.info.pad_channels == 1 and plain.info.pad_channels == 0
    rgb = scene()[0]
    batch = padded.preprocess(rgb)
    assert batch.shape == (1, 48, 64, 4)
    np.testing.assert_array_equal(batch[..., :3], plain.preprocess(rgb))
    got, want = padded.segment(rgb), plain.segment(rgb)
    np.testing.assert_array_equal(got.class_ids(), want.class_ids())
    np.testing.assert_allclose(got.hero_prob, want.hero_prob, atol=1e-6)

    # Four input channels without the metadata that says one is padding, or the reverse, or
    # a padding this node cannot fill: refused, with the reason.
    with pytest.raises(ModelError, match=r'\[N, H, W, 3\] \(RGB\)'):
        Segmenter(colour_model(tmp_path / 'rgbd.onnx', size=(48, 64), pad_channels=1,
                               metadata=CONTRACT))
    with pytest.raises(ModelError, match=r'\[N, H, W, 4\] \(RGB and 1 padding channel\)'):
        Segmenter(colour_model(tmp_path / 'three.onnx', size=(48, 64), metadata={
            **CONTRACT, 'followme.input_pad_channels': '1'}))
    for value in ('2', 'one'):
        with pytest.raises(ModelError, match='input_pad_channels.*expected 0 or 1'):
            Segmenter(colour_model(tmp_path / 'odd.onnx', size=(48, 64), metadata={
                **CONTRACT, 'followme.input_pad_channels': value}))


def test_a_quantized_input_model_gets_the_codes_of_its_own_quantization(tmp_path, model):
    """The int8 models' input: uint8 codes, each pixel value's looked up from the metadata."""
    quantization = (2 / 255, 128)       # what ONNX Runtime's calibration gives [-1, 1]
    coded = Segmenter(colour_model(tmp_path / 'uint8.onnx', size=(48, 64), conv=True,
                                   pad_channels=1, input_quantization=quantization),
                      warmup_runs=1)
    plain = Segmenter(model, warmup_runs=1)
    assert plain.info.input_codes is None
    # The table is what ONNX Runtime's QuantizeLinear makes of the normalised pixel values,
    # normalised in float32 as preprocess does for a float input.
    normalised = np.arange(256, dtype=np.float32)
    normalised *= np.float32(CLASSIC_SCALE)
    normalised += np.float32(CLASSIC_OFFSET)
    want = quantize_linear(normalised, *quantization)
    np.testing.assert_array_equal(coded.info.input_codes, want)
    np.testing.assert_array_equal(
        input_codes(CLASSIC_SCALE, CLASSIC_OFFSET, *quantization), want)
    rgb = scene()[0]
    batch = coded.preprocess(rgb)
    assert batch.dtype == np.uint8 and batch.shape == (1, 48, 64, 4)
    np.testing.assert_array_equal(batch[0, ..., :3], want[cv2.resize(rgb, (64, 48))])
    got, expected = coded.segment(rgb), plain.segment(rgb)
    np.testing.assert_array_equal(got.class_ids(), expected.class_ids())
    # Rows padded beyond the width (a view with a step), at the network's size, go in too.
    unpadded = Segmenter(colour_model(tmp_path / 'uint8_rgb.onnx', size=(48, 64),
                                      input_quantization=quantization), warmup_runs=1)
    wide = np.zeros((48, 80, 3), np.uint8)
    wide[:, :64] = cv2.resize(rgb, (64, 48))
    np.testing.assert_array_equal(unpadded.segment(wide[:, :64]).net_ids,
                                  unpadded.segment(wide[:, :64].copy()).net_ids)


def test_a_quantized_logits_model_gives_the_same_classes_and_the_hero_softmax(tmp_path, model):
    """The int8 models' output: uint8 logits, no softmax; the hero's taken where it is read."""
    quantization = (0.25, 100)
    logits = Segmenter(colour_model(tmp_path / 'logits.onnx', size=(48, 64), conv=True,
                                    output_quantization=quantization), warmup_runs=1)
    plain = Segmenter(model, warmup_runs=1)
    assert logits.info.output_quantization == quantization
    assert plain.info.output_quantization is None
    rgb = scene()[0]
    rgb[100:110, 150:170] = (90, 60, 120)    # a patch where no class is sure
    got, want = logits.segment(rgb), plain.segment(rgb)
    np.testing.assert_array_equal(got.net_ids, want.net_ids)
    # The hero's softmax of the quantized logits, where indexed as the locator indexes it,
    # and as a whole array; the colour model's own probabilities to within the logits' steps.
    hero = got.hero_prob
    assert isinstance(hero, HeroProbability) and hero.shape == (48, 64)
    codes = logits.infer(logits.preprocess(rgb))
    exact = softmax_of_codes(codes, 0.25)[..., 2]
    ys, xs = np.nonzero(got.net_ids == 2)
    np.testing.assert_allclose(hero[ys, xs], exact[ys, xs], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(hero), exact, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(hero), want.hero_prob, atol=0.1)
    dequantized = (codes.astype(np.float64) - 100) * 0.25
    np.testing.assert_allclose(exact, np.exp(dequantized[..., 2])
                               / np.exp(dequantized).sum(-1), rtol=1e-5)
    # The confidence the detection summary reports reads it like the float model's array.
    locator = HeroLocator(min_pixels=1)
    assert locator.locate(got.net_ids, hero).detection.confidence == pytest.approx(
        locator.locate(want.net_ids, want.hero_prob).detection.confidence, abs=0.02)
    # Flip-averaged, both outputs become probabilities first: the mean of two softmaxes.
    flipped = Segmenter(logits.info.path, warmup_runs=0, flip_average=True)
    scores = flipped.infer(flipped.preprocess(rgb))
    mirrored = logits.infer(logits.preprocess(np.ascontiguousarray(rgb[:, ::-1])))
    np.testing.assert_allclose(scores, (softmax_of_codes(codes, 0.25) + softmax_of_codes(
        mirrored, 0.25)[:, ::-1]) / 2, rtol=1e-6)


@pytest.mark.parametrize('side', ['input', 'output'])
def test_a_uint8_side_needs_a_valid_quantization_and_other_types_are_refused(tmp_path, side):
    key, quantized = f'followme.{side}_quantization', {f'{side}_quantization': (0.25, 100)}
    with pytest.raises(ModelError, match=f'needs {key}.*training.quantize'):
        Segmenter(colour_model(tmp_path / 'bare.onnx', size=(48, 64), metadata=CONTRACT,
                               **quantized))
    for value in ('0.25', '0.25,256', '0,100', '-1,128', 'a,b'):
        with pytest.raises(ModelError, match=key):
            Segmenter(colour_model(tmp_path / 'odd.onnx', size=(48, 64), **quantized,
                                   metadata={**CONTRACT, key: value}))
    with pytest.raises(ModelError, match=fr'{side} type is tensor\(int32\).*tensor\(float\).*'
                                         r'tensor\(uint8\)'):
        Segmenter(colour_model(tmp_path / 'int32.onnx', **{f'{side}_type': TensorProto.INT32}))


def test_providers_are_checked_and_reported(model):
    segmenter = Segmenter(model, providers=DEFAULT_PROVIDERS, intra_op_threads=1,
                          inter_op_threads=1, warmup_runs=0)
    available = ort.get_available_providers()
    assert set(segmenter.providers) <= set(available)
    assert segmenter.providers == tuple(segmenter.session.get_providers())
    assert segmenter.requested_providers == DEFAULT_PROVIDERS
    assert segmenter.preferred_provider == next(p for p in DEFAULT_PROVIDERS if p in available)
    if 'CUDAExecutionProvider' not in available:
        # The first listed one this build has (OpenVINO with onnxruntime-openvino), then CPU.
        first = next(p for p in DEFAULT_PROVIDERS if p in available)
        assert segmenter.providers == tuple(dict.fromkeys((first, 'CPUExecutionProvider')))
        assert not segmenter.fell_back()
    with pytest.raises(ModelError, match='unknown execution provider'):
        Segmenter(model, providers=['NoSuchExecutionProvider'])


GPU_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider')
HAS_GPU = Path('/dev/nvidia0').exists()
needs_gpu_build = pytest.mark.skipif(
    'CUDAExecutionProvider' not in ort.get_available_providers(),
    reason='needs the onnxruntime-gpu build (`make gpu`), not installed by default')


@needs_gpu_build
def test_the_gpu_build_tells_whether_it_really_got_the_gpu(model):
    segmenter = Segmenter(model, warmup_runs=0)
    assert segmenter.preferred_provider in GPU_PROVIDERS
    if HAS_GPU:
        assert segmenter.providers[0] in GPU_PROVIDERS
    else:
        # The GPU build without CUDA: it lists the GPU providers, then quietly runs on the CPU.
        assert segmenter.providers == ('CPUExecutionProvider',)
        assert segmenter.fell_back()
        # What loading the CUDA libraries printed is kept for the node's warning.
        assert 'Failed to load libcublas' in segmenter.gpu_library_report
    on_cpu = Segmenter(model, providers=['CPUExecutionProvider'], warmup_runs=0)
    assert on_cpu.gpu_library_report == ''         # no GPU asked for: nothing loaded


TENSORRT = 'TensorrtExecutionProvider'


def test_gpu_settings_reach_the_cuda_and_tensorrt_providers(tmp_path):
    gpu = GpuSettings(device_id=1, tensorrt_cache_dir=str(tmp_path), tensorrt_fp16=True)
    assert _provider_options('CUDAExecutionProvider', 0, gpu) == {'device_id': '1'}
    # Without a cache folder TensorRT builds its engines at every start.
    assert _provider_options(TENSORRT, 0, gpu) == {'device_id': '1', 'trt_fp16_enable': 'True'}
    cached = _provider_options(TENSORRT, 0, gpu, tmp_path / 'model-fp16')
    assert cached['trt_engine_cache_enable'] == cached['trt_timing_cache_enable'] == 'True'
    # Engines per model; layer timings shared by all models.
    assert cached['trt_engine_cache_path'] == str(tmp_path / 'model-fp16')
    assert cached['trt_timing_cache_path'] == str(tmp_path)
    assert _provider_options(TENSORRT, 0)['trt_fp16_enable'] == 'False'   # the default


def test_tensorrt_engines_are_kept_per_model_content_and_precision(tmp_path):
    first, same, retrained = tmp_path / 'a.onnx', tmp_path / 'b.onnx', tmp_path / 'c.onnx'
    first.write_bytes(b'weights 1')
    same.write_bytes(b'weights 1')
    retrained.write_bytes(b'weights 2')
    cache = tmp_path / 'cache'
    folder = tensorrt_cache_folder(cache, first, fp16=False)
    assert folder.parent == cache and folder.name.endswith('-fp32')
    assert tensorrt_cache_folder(cache, same, fp16=False) == folder      # moved or copied
    # ONNX Runtime would give a retrained model of the same graph and name the old engine.
    assert tensorrt_cache_folder(cache, retrained, fp16=False) != folder
    assert tensorrt_cache_folder(cache, first, fp16=True) != folder


@needs_gpu_build
def test_the_gpu_build_takes_the_tensorrt_cache_and_refuses_an_unusable_one(model, tmp_path):
    gpu = GpuSettings(tensorrt_cache_dir=str(tmp_path / 'trt'))
    segmenter = Segmenter(model, warmup_runs=1, gpu=gpu)
    assert segmenter.tensorrt_cache == tensorrt_cache_folder(tmp_path / 'trt', model, False)
    assert segmenter.tensorrt_cache.is_dir()
    if HAS_GPU and segmenter.providers[0] == TENSORRT:
        assert list(segmenter.tensorrt_cache.glob('*.engine'))
    not_a_folder = tmp_path / 'file'
    not_a_folder.write_text('')
    with pytest.raises(ModelError, match='tensorrt_cache_dir at a writable folder'):
        Segmenter(model, warmup_runs=0, gpu=GpuSettings(tensorrt_cache_dir=str(not_a_folder)))
    # No TensorRT asked for: no cache folder made.
    on_cuda = Segmenter(model, providers=['CUDAExecutionProvider', 'CPUExecutionProvider'],
                        warmup_runs=0, gpu=GpuSettings(tensorrt_cache_dir=str(tmp_path / 'no')))
    assert on_cuda.tensorrt_cache is None and not (tmp_path / 'no').exists()


OPENVINO = 'OpenVINOExecutionProvider'
needs_openvino = pytest.mark.skipif(
    OPENVINO not in ort.get_available_providers(),
    reason='needs the onnxruntime-openvino build (`make openvino`), not installed by default')


def test_the_thread_count_reaches_openvino_which_ignores_the_sessions():
    assert _provider_options(OPENVINO, 2) == {'num_of_threads': '2'}
    assert _provider_options(OPENVINO, 0) == {}            # 0: its own default
    assert _provider_options('CPUExecutionProvider', 2) == {}  # the session options carry it


@needs_openvino
def test_openvino_is_preferred_and_agrees_with_the_cpu_provider():
    shipped = paths.default_model_file()
    # With a thread count, as the node passes it (ONNX Runtime does not report it back).
    segmenter = Segmenter(shipped, intra_op_threads=1, warmup_runs=1)
    assert segmenter.providers[0] == OPENVINO and not segmenter.fell_back()
    on_cpu = Segmenter(shipped, providers=['CPUExecutionProvider'], warmup_runs=0)
    assert on_cpu.providers == ('CPUExecutionProvider',)
    rgb = scene()[0]
    # int8 kernels round differently: the classes may differ on a few boundary pixels only.
    agreement = np.mean(segmenter.segment(rgb).class_ids() == on_cpu.segment(rgb).class_ids())
    assert agreement >= 0.995


# Hero locator ---------------------------------------------------------------------------


def _prob_from(ids, value=0.8):
    return np.where(ids == 2, value, 0.1).astype(np.float32)


def test_largest_hero_blob_wins_and_small_blobs_are_ignored():
    ids = np.zeros(FRAME, np.uint8)
    ids[10:20, 10:20] = 2        # 100 px
    ids[100:150, 200:220] = 2    # 1000 px: the hero
    ids[60:70, 60:70] = 1        # others never count
    locator = HeroLocator(min_pixels=50)
    detection = locator.locate(ids, _prob_from(ids), stamp=(7, 9)).detection
    assert detection.present == 1 and detection.area_px == 1000
    assert (detection.x_min, detection.y_min, detection.x_max, detection.y_max) == (
        200, 100, 220, 150)
    assert (detection.cx, detection.cy) == (209.5, 124.5)
    assert (detection.stamp_sec, detection.stamp_nanosec) == (7, 9)
    assert detection.confidence == pytest.approx(0.8)
    assert HeroLocator(min_pixels=1001).locate(ids, _prob_from(ids)).detection.present == 0


def test_confidence_is_the_mean_hero_probability_over_the_blob():
    ids = np.zeros((48, 64), np.uint8)
    ids[:, 32:] = 2
    prob = np.zeros((48, 64), np.float32)
    prob[:24, 32:], prob[24:, 32:] = 0.6, 0.8
    detection = HeroLocator().locate(ids, prob, image_size=FRAME).detection
    assert detection.confidence == pytest.approx(0.7)


@pytest.mark.parametrize('image_size', [(240, 320), (480, 640), (100, 90), (48, 64)])
def test_grid_blob_equals_the_blob_of_the_upscaled_mask(image_size):
    """Searching on the network grid gives the figures of the mask the node publishes."""
    rng = np.random.default_rng(3)
    ids = np.zeros((48, 64), np.uint8)
    ids[5:30, 40:52] = 2
    ids[rng.random(ids.shape) < 0.05] = 1    # speckle cuts into the hero
    ids[40:44, 2:6] = 2                      # a smaller second blob
    prob = rng.random(ids.shape).astype(np.float32)
    height, width = image_size
    on_grid = HeroLocator(min_pixels=1).locate(ids, prob, image_size=image_size).detection
    big_ids = cv2.resize(ids, (width, height), interpolation=cv2.INTER_NEAREST)
    big_prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_NEAREST)
    full = HeroLocator(min_pixels=1).locate(big_ids, big_prob).detection
    assert on_grid.area_px == full.area_px
    assert (on_grid.x_min, on_grid.y_min, on_grid.x_max, on_grid.y_max) == (
        full.x_min, full.y_min, full.x_max, full.y_max)
    assert (on_grid.cx, on_grid.cy) == (pytest.approx(full.cx), pytest.approx(full.cy))
    assert on_grid.confidence == pytest.approx(full.confidence, rel=1e-5)
    labels = cv2.connectedComponentsWithStats((big_ids == 2).view(np.uint8), connectivity=8)
    assert full.area_px == labels[2][1:, cv2.CC_STAT_AREA].max()


def test_depth_median_ignores_holes_and_outliers():
    ids = np.zeros(FRAME, np.uint8)
    ids[40:200, 100:140] = 2
    depth = np.full(FRAME, 9.0, np.float32)
    depth[40:200, 100:140] = 3.0
    depth[40:60, 100:140] = np.nan       # holes
    depth[60:70, 100:140] = 0.5          # a few wrong readings
    camera = Intrinsics.from_k([250, 0, 160, 0, 250, 120, 0, 0, 1])
    estimate = HeroLocator().locate(ids, _prob_from(ids), depth, camera)
    assert estimate.detection.range_source == RangeSource.DEPTH
    x, y, z = estimate.position
    assert z == pytest.approx(3.0)
    assert x == pytest.approx((119.5 - 160) / 250 * 3.0)
    assert y == pytest.approx((119.5 - 120) / 250 * 3.0)
    assert estimate.detection.range_m == pytest.approx(math.hypot(x, y, z))


def test_size_range_then_bearing_only_when_depth_is_missing():
    ids = np.zeros(FRAME, np.uint8)
    ids[20:120, 150:170] = 2             # 100 px tall
    empty_depth = np.full(FRAME, np.nan, np.float32)
    camera = Intrinsics.from_k([200, 0, 160, 0, 200, 120, 0, 0, 1])
    locator = HeroLocator(person_height_m=1.5)
    sized = locator.locate(ids, _prob_from(ids), empty_depth, camera)
    assert sized.detection.range_source == RangeSource.SIZE
    assert sized.position[2] == pytest.approx(200 * 1.5 / 100)
    bearing = locator.locate(ids, _prob_from(ids), None, None)
    assert bearing.detection.range_source == RangeSource.BEARING
    assert bearing.detection.intrinsics_source == IntrinsicsSource.ASSUMED_FOV
    assert math.isnan(bearing.detection.range_m)
    assert math.hypot(*bearing.position) == pytest.approx(1.0)
    assert bearing.position[1] < 0.0     # above the image centre: y is down in REP 103


def test_intrinsics_from_camera_info_fov_and_scaling():
    assert Intrinsics.from_k([0.0] * 9) is None
    assert Intrinsics.from_k([math.nan, 0, 1, 0, 1, 1, 0, 0, 1]) is None
    fov = Intrinsics.from_fov(320, 240, 90.0)
    assert (fov.fx, fov.cx, fov.cy) == (pytest.approx(160.0), 160.0, 120.0)
    half = Intrinsics.from_k([400, 0, 320, 0, 400, 240, 0, 0, 1]).scaled_to(320, 240, 640, 480)
    assert (half.fx, half.fy, half.cx, half.cy) == (200.0, 200.0, 160.0, 120.0)


K_WIDE = [250.0, 0, 160.0, 0, 250.0, 120.0, 0, 0, 1]
PLUMB_BOB = (-0.32, 0.12, 0.0015, -0.002, -0.025)   # a wide-angle lens, barrel distortion
FISHEYE = (0.08, -0.02, 0.004, -0.001)


def _project(points, k, model, d):
    """3D points in the optical frame -> distorted pixels, the forward direction (OpenCV)."""
    objects = np.asarray(points, np.float64).reshape(-1, 1, 3)
    camera, zero = np.array(k, np.float64).reshape(3, 3), np.zeros(3)
    if model == 'equidistant':
        pixels, _ = cv2.fisheye.projectPoints(objects, zero, zero, camera, np.array(d))
    else:
        pixels, _ = cv2.projectPoints(objects, zero, zero, camera, np.array(d))
    return pixels.reshape(-1, 2)


@pytest.mark.parametrize('model, d', [('plumb_bob', PLUMB_BOB),
                                      ('rational_polynomial', PLUMB_BOB + (0.01, 0.0, 0.0)),
                                      ('equidistant', FISHEYE)])
def test_lens_distortion_is_undone_across_the_image(model, d):
    camera, problem = Intrinsics.from_camera_info(K_WIDE, d, model, [0.0] * 12)
    assert problem is None and camera.source == IntrinsicsSource.CAMERA_INFO_UNDISTORTED
    # Directions out to the image corners (x/z up to 0.64, y/z up to 0.48 at fx 250).
    xs, ys = np.meshgrid(np.linspace(-0.6, 0.6, 7), np.linspace(-0.45, 0.45, 5))
    rays = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)], axis=1)
    pixels = _project(rays, K_WIDE, model, d)
    np.testing.assert_allclose(camera.normalized(pixels), rays[:, :2], atol=1e-6)
    assert camera.undistorted(pixels)[1]
    # The same pixels read as a pinhole: off by up to tens of pixels at the edges.
    pinhole = Intrinsics.from_k(K_WIDE).normalized(pixels)
    assert np.abs(pinhole - rays[:, :2]).max() * 250.0 > 10.0


def test_the_hero_position_reprojects_onto_its_blob_through_the_lens():
    ids = np.zeros(FRAME, np.uint8)
    ids[30:110, 240:280] = 2                   # up and to the right: strong distortion there
    depth = np.full(FRAME, 5.0, np.float32)
    camera, _ = Intrinsics.from_camera_info(K_WIDE, PLUMB_BOB, 'plumb_bob', [0.0] * 12)
    locator = HeroLocator(person_height_m=1.6)
    estimate = locator.locate(ids, _prob_from(ids), depth, camera)
    assert estimate.detection.intrinsics_source == IntrinsicsSource.CAMERA_INFO_UNDISTORTED
    assert estimate.position[2] == pytest.approx(5.0)
    centroid = (estimate.detection.cx, estimate.detection.cy)
    assert centroid == (259.5, 69.5)
    np.testing.assert_allclose(_project([estimate.position], K_WIDE, 'plumb_bob', PLUMB_BOB)[0],
                               centroid, atol=1e-4)
    pinhole = locator.locate(ids, _prob_from(ids), depth, Intrinsics.from_k(K_WIDE))
    assert abs(pinhole.position[0] - estimate.position[0]) > 0.1   # metres at 5 m

    # Range from size: the box's top and bottom edges below the centroid, 1.6 m apart at z.
    sized = locator.locate(ids, _prob_from(ids), None, camera)
    assert sized.detection.range_source == RangeSource.SIZE
    z = sized.position[2]
    top, bottom = camera.normalized([(259.5, 29.5), (259.5, 109.5)])
    edges = _project([(top[0] * z, top[1] * z, z), (bottom[0] * z, bottom[1] * z, z)],
                     K_WIDE, 'plumb_bob', PLUMB_BOB)
    np.testing.assert_allclose(edges, [(259.5, 29.5), (259.5, 109.5)], atol=1e-4)
    assert (bottom[1] - top[1]) * z == pytest.approx(1.6)
    assert z != pytest.approx(locator.locate(ids, _prob_from(ids), None,
                                             Intrinsics.from_k(K_WIDE)).position[2], rel=0.02)


@pytest.mark.parametrize('model, d, inverts_in_the_middle', [
    ('rational_polynomial', (1e30,) * 8, False),     # NaN out of OpenCV
    ('plumb_bob', (-0.9, 0.0, 0.0, 0.0, 0.0), True),  # barrel turning back before the corner
    ('equidistant', (-5.0, 0.0, 0.0, 0.0), True)])
def test_a_lens_model_that_does_not_invert_gives_a_pinhole_pose_not_a_wild_one(
        model, d, inverts_in_the_middle):
    ids = np.zeros(FRAME, np.uint8)
    ids[5:60, 10:40] = 2                       # near the corner, where the iteration diverges
    wild, _ = Intrinsics.from_camera_info(K_WIDE, d, model, [0.0] * 12)
    assert not wild.undistorted([(24.5, 32.0)])[1]
    for depth in (np.full(FRAME, 3.0, np.float32), None):
        estimate = HeroLocator().locate(ids, _prob_from(ids), depth, wild)
        assert estimate.detection.intrinsics_source == IntrinsicsSource.CAMERA_INFO
        pinhole = HeroLocator().locate(ids, _prob_from(ids), depth, Intrinsics.from_k(K_WIDE))
        assert estimate.position == pytest.approx(pinhole.position)
    # Where the same lens does invert (the middle), it is used.
    ids[:] = 0
    ids[100:140, 150:170] = 2
    middle = HeroLocator().locate(ids, _prob_from(ids), None, wild)
    assert (middle.detection.intrinsics_source == IntrinsicsSource.CAMERA_INFO_UNDISTORTED) \
        == inverts_in_the_middle


def test_camera_info_matrices_and_distortion_models():
    k, p = K_WIDE, [300.0, 0, 150.0, 0, 0, 310.0, 110.0, 0, 0, 0, 1, 0]
    # Rectified images: P, no distortion; P unset falls back to K.
    rect, problem = Intrinsics.from_camera_info(k, PLUMB_BOB, 'plumb_bob', p, rectified=True)
    assert (rect.fx, rect.fy, rect.cx, rect.cy, rect.distortion) == (300, 310, 150, 110, ())
    assert rect.source == IntrinsicsSource.CAMERA_INFO and problem is None
    rect, _ = Intrinsics.from_camera_info(k, PLUMB_BOB, 'plumb_bob', [0.0] * 12, rectified=True)
    assert (rect.fx, rect.cx) == (250, 160)
    # No distortion, or all zeros: a plain pinhole, whatever the model's name.
    for d, model in (((), ''), ((0.0,) * 5, 'plumb_bob'), ((0.0,) * 4, 'no_such_model')):
        plain, problem = Intrinsics.from_camera_info(k, d, model, p)
        assert plain == Intrinsics.from_k(k) and problem is None
    # Distortion this node cannot undo: a pinhole and the reason, for the node to report.
    for d, model, says in ((PLUMB_BOB, 'no_such_model', "'no_such_model' with 5"),
                           ((0.1, 0.2, 0.3), 'plumb_bob', "'plumb_bob' with 3"),
                           (PLUMB_BOB, 'equidistant', "'equidistant' with 5"),
                           ((math.nan,) * 5, 'plumb_bob', 'not finite')):
        plain, problem = Intrinsics.from_camera_info(k, d, model, p)
        assert plain == Intrinsics.from_k(k) and says in problem
    assert Intrinsics.from_camera_info([0.0] * 9, PLUMB_BOB, 'plumb_bob', p) == (None, None)
    # Binning scales K; D works on normalised coordinates and stays.
    full, _ = Intrinsics.from_camera_info([500, 0, 320, 0, 500, 240, 0, 0, 1], PLUMB_BOB,
                                          'plumb_bob', p)
    half = full.scaled_to(320, 240, 640, 480)
    assert (half.fx, half.cx, half.distortion) == (250, 160, PLUMB_BOB)
    np.testing.assert_allclose(half.normalized([(300.0, 40.0)]),
                               full.normalized([(600.0, 80.0)]), atol=1e-9)


def test_region_of_interest_and_binning_follow_rep_104():
    # Full sensor 1280x960, K for it; a 2x2-binned 640x480 crop starting at (320, 240).
    full = Intrinsics.from_k([800, 0, 640, 0, 810, 480, 0, 0, 1])
    region = camera_info_region(1280, 960, 2, 2, (320, 240, 1280 - 320, 960 - 240))
    assert region == (320, 240, 2, 2, 480, 360)
    crop = full.in_region(*region[:4])
    assert (crop.fx, crop.fy, crop.cx, crop.cy) == (400, 405, 160, 120)
    # A full-sensor pixel and its binned, cropped counterpart give the same direction.
    np.testing.assert_allclose(crop.normalized([((900 - 320) / 2, (700 - 240) / 2)]),
                               full.normalized([(900, 700)]), atol=1e-12)
    # Binning 0 is 1, a zero region of interest is the whole sensor.
    assert camera_info_region(640, 480, 0, 0, (0, 0, 0, 0)) == (0, 0, 1, 1, 640, 480)
    assert camera_info_region(640, 480, 2, 1, (10, 10, 0, 0)) == (0, 0, 2, 1, 320, 480)
    assert full.in_region(0, 0, 1, 1) is full


# Overlay and the detection summary ------------------------------------------------------


def test_overlay_tints_people_and_keeps_background():
    rgb, ids = scene()
    out = tint(rgb, ids, alpha=0.5)
    np.testing.assert_array_equal(out[ids == 0], rgb[ids == 0])
    assert (out[ids == 2][:, 2] > rgb[ids == 2][:, 2]).all()
    assert (out[ids == 1][:, 1] >= rgb[ids == 1][:, 1]).all()
    assert not np.array_equal(out[ids == 2], rgb[ids == 2])


@pytest.mark.parametrize('alpha', [0.0, 0.35, 1.0])
def test_overlay_is_the_alpha_blend_of_each_person_pixel(alpha):
    rgb = np.random.default_rng(4).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ids = np.zeros((48, 64), np.uint8)
    ids[5:9, 50:60], ids[30:47, 3:7] = 2, 1          # far apart: one box around both
    colour = np.array([[0, 0, 0], [0, 255, 0], [0, 0, 255]], np.float64)[ids]
    want = np.where(ids[..., None] > 0, rgb * (1.0 - alpha) + colour * alpha, rgb)
    out = tint(rgb, ids, alpha)
    assert np.abs(out.astype(np.float64) - want).max() <= 1.0   # OpenCV rounds
    np.testing.assert_array_equal(out[ids == 0], rgb[ids == 0])
    # Into a buffer that holds the frame already (a message's): the same pixels, in place.
    buffer = bytearray(rgb.tobytes())
    view = np.frombuffer(buffer, np.uint8).reshape(rgb.shape)
    assert tint(rgb, ids, alpha, out=view) is view
    np.testing.assert_array_equal(view, out)
    np.testing.assert_array_equal(np.frombuffer(buffer, np.uint8).reshape(rgb.shape), out)
    empty = np.zeros_like(ids)
    np.testing.assert_array_equal(tint(rgb, empty, alpha), rgb)


@pytest.mark.parametrize('height, width', [(1, 1), (1, 2), (2, 1), (1, 4), (3, 3)])
def test_overlay_of_a_person_only_a_pixel_or_two_wide(height, width):
    # OpenCV takes a 1x1 array for a scalar in some calls: a lone person pixel once made the
    # whole frame fail (mask, pose and all).
    rgb = np.random.default_rng(5).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ids = np.zeros((48, 64), np.uint8)
    ids[10:10 + height, 20:20 + width] = 2
    out = tint(rgb, ids, 0.5)
    assert (out[ids == 2][:, 2] > rgb[ids == 2][:, 2]).all()
    np.testing.assert_array_equal(out[ids == 0], rgb[ids == 0])


def test_jpeg_of_the_overlay_decodes_to_the_same_colours():
    rgb, truth = scene()
    overlay = tint(rgb, truth, 0.5)
    fine, coarse = encode_jpeg(overlay, 95), encode_jpeg(overlay, 20)
    assert fine.dtype == np.uint8 and bytes(fine[:2]) == b'\xff\xd8'  # a JPEG stream
    assert coarse.size < fine.size < overlay.nbytes / 5
    # Decoded as compressed_image_transport's subscriber does: BGR out of OpenCV, to RGB.
    decoded = cv2.cvtColor(cv2.imdecode(fine, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert decoded.shape == overlay.shape
    # Channels not swapped: the hero stays blue, the others green.
    hero, others = truth == 2, truth == 1
    assert decoded[hero].mean(0).argmax() == 2 and decoded[others].mean(0).argmax() == 1
    assert np.abs(decoded.astype(int) - overlay).mean() < 2.0


def test_detection_round_trip_and_layout():
    detection = HeroDetection(stamp_sec=1_700_000_000, stamp_nanosec=999_999_999, present=1,
                              cx=10.5, cy=4.0, range_m=3.25, range_source=RangeSource.SIZE,
                              image_width=640, image_height=480)
    values = detection.to_list()
    assert len(values) == len(FIELDS) == 16
    assert values[INDEX['range_source']] == 2.0 and values[INDEX['stamp_sec']] == 1_700_000_000
    assert HeroDetection.from_list(values) == detection
    assert detection.has_range and not HeroDetection().has_range
    assert math.isnan(HeroDetection().range_m)
    with pytest.raises(ValueError, match='16 values'):
        HeroDetection.from_list(values[:-1])
