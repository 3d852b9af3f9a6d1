"""
Semantic segmentation with ONNX Runtime: background / other people / hero, no ROS.

The model contract (written by training/export, read here): one float32 NHWC RGB input
[N, H, W, 3], one softmax output [N, H, W, 3], and metadata `followme.input_size` ("H,W"),
`followme.input_scale` / `followme.input_offset` (pixel = uint8 * scale + offset) and
`followme.classes` (the output channels' class names in order). With
`followme.input_pad_channels` 1 (training/quantize's int8 models) the input is [N, H, W, 4]:
RGB and a channel the network reads with zero weights, there because ONNX Runtime's int8
convolutions run four input channels much faster than three; any value will do in it. A uint8
input (training/quantize's int8 models) takes the image already quantized: each pixel value's
code is what the model's own input quantization, `followme.input_quantization` ("scale,zero
point"), makes of its normalised float (`input_codes`). A uint8 output (the int8 models
again) holds the classes' logits quantized, `followme.output_quantization` ("scale,zero
point"), instead of the softmax probabilities: a pixel's class is its largest logit, and the
hero's probability is taken from the logits only where it is wanted (`HeroProbability`).
"""

import contextlib
from dataclasses import dataclass
import hashlib
import io
import os
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

# Our class ids, the values in the mask. A model may order its output channels differently.
CLASS_IDS = {'background': 0, 'others': 1, 'hero': 2}
HERO = CLASS_IDS['hero']
# OpenVINO: Intel CPUs with the onnxruntime-openvino build (`make openvino`), where it runs
# the int8 model about 1.5 times faster than ONNX Runtime's own CPU kernels (README).
DEFAULT_PROVIDERS = ('TensorrtExecutionProvider', 'CUDAExecutionProvider',
                     'OpenVINOExecutionProvider', 'CPUExecutionProvider')
_HOW_TO_FIX = ('point the model_path parameter (or `make run RUN_ARGS="--model FILE"`) at a '
               'followme FCN exported by training/export.py, or train and export one first')


class ModelError(RuntimeError):
    """The model file is missing, unreadable or does not follow the followme contract."""


@dataclass(frozen=True)
class GpuSettings:
    """Which GPU the CUDA and TensorRT providers use, and how TensorRT keeps its engines."""

    device_id: int = 0
    # Where TensorRT keeps the engines it builds; '' builds them anew at every start (tens of
    # seconds to minutes, before the first frame).
    tensorrt_cache_dir: str = ''
    # Let TensorRT run layers in half precision: about twice as fast on tensor cores, at a
    # precision this project has not measured on a GPU (no GPU was lent to it).
    tensorrt_fp16: bool = False


def tensorrt_cache_folder(cache_dir, model_path, fp16) -> Path:
    """
    One folder per model file content and precision under `cache_dir`.

    ONNX Runtime names an engine after the model's file name and its tensors' names, not its
    weights: a retrained model saved under the same name would load the old weights' engine.
    A folder per file hash rules that out.
    """
    digest = hashlib.sha256(Path(model_path).read_bytes()).hexdigest()[:16]
    return Path(cache_dir) / (digest + ('-fp16' if fp16 else '-fp32'))


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    input_name: str
    height: int
    width: int
    scale: float
    offset: float
    classes: tuple        # output channel i holds class classes[i]
    metadata: dict
    pad_channels: int = 0  # input channels after RGB, ignored by the network
    input_codes: np.ndarray = None  # uint8 input: code per pixel value; None: float input
    output_quantization: tuple = None  # uint8 logits out: (scale, zero point); None: softmax


class HeroProbability:
    """
    The hero's softmax probability from a model's quantized logits, worked out where indexed.

    The node reads it over the hero's blob only: a few hundred pixels, where a softmax in the
    model ran over all 65,536 of a 256x256 grid. Index it like an (h, w) array.
    """

    def __init__(self, codes, hero_channel, scale):
        self._codes, self._hero, self._scale = codes, hero_channel, np.float32(scale)
        self.shape = codes.shape[:2]

    def __getitem__(self, index) -> np.ndarray:
        logits = self._codes[index].astype(np.float32)
        # softmax_h = 1 / sum_c exp(l_c - l_h); the zero point cancels in the differences.
        logits -= logits[..., self._hero, None]
        logits *= self._scale
        return np.float32(1.0) / np.exp(logits).sum(axis=-1)

    def __array__(self, dtype=None, copy=None):
        probability = self[...]
        return probability if dtype is None else probability.astype(dtype)


def softmax_of_codes(codes, scale) -> np.ndarray:
    """Probabilities (float32) from quantized logits, over the last axis (zero point cancels)."""
    logits = codes.astype(np.float32)
    logits -= logits.max(axis=-1, keepdims=True)
    logits *= np.float32(scale)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    return logits


@dataclass
class Segmentation:
    net_ids: np.ndarray     # (h, w) uint8 class ids on the network grid
    hero_prob: np.ndarray   # (h, w) hero probability on the network grid (or HeroProbability)
    size: tuple             # (H, W) the input resolution

    def class_ids(self, out=None) -> np.ndarray:
        """
        (H, W) uint8 class ids at the input resolution, written into `out` if given.

        On demand, not in postprocess: the node needs them only while someone views the mask
        or the overlay, and then writes them straight into the outgoing message's buffer.
        """
        height, width = self.size
        if self.net_ids.shape == (height, width):
            if out is None:
                return self.net_ids
            np.copyto(out, self.net_ids)
            return out
        return cv2.resize(self.net_ids, (width, height), dst=out,
                          interpolation=cv2.INTER_NEAREST)


def read_model_info(path, session) -> ModelInfo:
    """Check a session's model against the contract; raise ModelError saying what is wrong."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f'{path}: expected one input and one output, got {len(inputs)} and '
                         f'{len(outputs)}; {_HOW_TO_FIX}')
    shape = inputs[0].shape
    try:
        pad_channels = int(meta.get('followme.input_pad_channels', 0))
    except ValueError:
        pad_channels = -1
    if pad_channels not in (0, 1):
        raise ModelError(f'{path}: followme.input_pad_channels is '
                         f"{meta['followme.input_pad_channels']!r}; expected 0 or 1")
    if len(shape) != 4 or shape[3] != 3 + pad_channels:
        padding = f' and {pad_channels} padding channel' if pad_channels else ''
        raise ModelError(f'{path}: input {inputs[0].name!r} has shape {shape}; expected NHWC '
                         f'[N, H, W, {3 + pad_channels}] (RGB{padding}); {_HOW_TO_FIX}')
    if inputs[0].type not in ('tensor(float)', 'tensor(uint8)'):
        raise ModelError(f'{path}: input type is {inputs[0].type}, expected tensor(float) '
                         '(normalised pixels) or tensor(uint8) (quantized pixels)')
    height, width = _input_size(path, meta, shape)
    try:
        scale = float(meta['followme.input_scale'])
        offset = float(meta['followme.input_offset'])
        classes = tuple(name.strip() for name in meta['followme.classes'].split(','))
    except KeyError as missing:
        raise ModelError(f'{path}: metadata {missing} is missing; {_HOW_TO_FIX}') from None
    except ValueError as error:
        raise ModelError(f'{path}: bad normalisation metadata ({error})') from None
    if sorted(classes) != sorted(CLASS_IDS):
        raise ModelError(f'{path}: followme.classes is {",".join(classes)!r}; expected the '
                         f'three classes {",".join(CLASS_IDS)} in any order')
    out_shape = outputs[0].shape
    if len(out_shape) != 4 or out_shape[3] != len(classes):
        raise ModelError(f'{path}: output shape {out_shape}; expected NHWC [N, H, W, '
                         f'{len(classes)}] softmax probabilities (or quantized logits)')
    if outputs[0].type not in ('tensor(float)', 'tensor(uint8)'):
        raise ModelError(f'{path}: output type is {outputs[0].type}, expected tensor(float) '
                         '(softmax probabilities) or tensor(uint8) (quantized logits)')
    codes = output_quantization = None
    if inputs[0].type == 'tensor(uint8)':
        codes = input_codes(scale, offset, *_quantization(path, meta, 'input', 'takes'))
    if outputs[0].type == 'tensor(uint8)':
        output_quantization = _quantization(path, meta, 'output', 'gives its logits in')
    return ModelInfo(Path(path), inputs[0].name, height, width, scale, offset, classes, meta,
                     pad_channels, codes, output_quantization)


def _quantization(path, meta, side, what):
    key = f'followme.{side}_quantization'
    text = meta.get(key)
    if text is None:
        raise ModelError(f'{path}: a uint8 {side} needs {key} ("scale,zero point" of the '
                         f'quantization it {what}); make int8 models with python -m '
                         'training.quantize')
    try:
        scale, zero_point = text.split(',')
        scale, zero_point = float(scale), int(zero_point)
    except ValueError:
        raise ModelError(f'{path}: {key} is {text!r}, expected "scale,zero point"') from None
    if not (scale > 0.0 and 0 <= zero_point <= 255):
        raise ModelError(f'{path}: {key} {text!r} needs a positive scale and a zero point in '
                         '0..255')
    return scale, zero_point


def input_codes(scale, offset, quantization_scale, zero_point) -> np.ndarray:
    """
    Return the uint8 code of each pixel value 0..255 for a model that takes quantized input.

    The pixel normalised in float32 as for a float input (pixel * scale + offset), then
    quantized as ONNX Runtime's QuantizeLinear does it: divided by the scale, rounded half to
    even, plus the zero point, saturated. The same codes the int8 graph made before its
    QuantizeLinear was removed (training/graph_rewrite.take_uint8_input), bit for bit.
    """
    normalised = np.arange(256, dtype=np.float32) * np.float32(scale) + np.float32(offset)
    codes = np.rint(normalised / np.float32(quantization_scale)) + zero_point
    return np.clip(codes, 0, 255).astype(np.uint8)


def _input_size(path, meta, shape):
    fixed = [dim if isinstance(dim, int) and dim > 0 else None for dim in shape[1:3]]
    if 'followme.input_size' in meta:
        try:
            height, width = (int(v) for v in meta['followme.input_size'].split(','))
        except ValueError:
            raise ModelError(f'{path}: followme.input_size is '
                             f'{meta["followme.input_size"]!r}, expected "H,W"') from None
    elif None not in fixed:
        height, width = fixed
    else:
        raise ModelError(f'{path}: the input size is dynamic and followme.input_size metadata '
                         f'is missing; {_HOW_TO_FIX}')
    if height <= 0 or width <= 0:
        raise ModelError(f'{path}: input size {height}x{width} is not positive')
    for dim, want, name in ((fixed[0], height, 'height'), (fixed[1], width, 'width')):
        if dim is not None and dim != want:
            raise ModelError(f'{path}: input {name} is fixed at {dim} but followme.input_size '
                             f'says {want}')
    return height, width


class Segmenter:
    """An ONNX Runtime session that turns an RGB frame into class ids and hero probabilities."""

    def __init__(self, model_path, providers=DEFAULT_PROVIDERS, intra_op_threads=0,
                 inter_op_threads=0, warmup_runs=2, flip_average=False, gpu=GpuSettings()):
        path = Path(model_path)
        if not path.is_file():
            raise ModelError(f'model file {path} not found; {_HOW_TO_FIX}')
        available = ort.get_available_providers()
        self.requested_providers = tuple(providers)
        unknown = [p for p in providers if p not in ort.get_all_providers()]
        if unknown:
            raise ModelError(f'unknown execution provider(s) {", ".join(unknown)}; known: '
                             f'{", ".join(ort.get_all_providers())}')
        # Asking ONNX Runtime for a provider its build lacks is an error; skip those here and
        # let get_providers() below tell what the session really runs on.
        usable = [p for p in providers if p in available]
        # The first requested provider this build has (None: none of them; CPU it is).
        self.preferred_provider = usable[0] if usable else None
        usable = usable or ['CPUExecutionProvider']
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = int(inter_op_threads)
        options.log_severity_level = 3
        # What loading the CUDA libraries said ('' when they all loaded, or no GPU was asked for).
        self.gpu_library_report = ''
        if {'CUDAExecutionProvider', 'TensorrtExecutionProvider'} & set(usable):
            self.gpu_library_report = _preload_cuda_libraries()
        self.tensorrt_cache = None  # the engine folder, when TensorRT is asked for and cached
        if 'TensorrtExecutionProvider' in usable and gpu.tensorrt_cache_dir:
            self.tensorrt_cache = tensorrt_cache_folder(gpu.tensorrt_cache_dir, path,
                                                        gpu.tensorrt_fp16)
            try:
                self.tensorrt_cache.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ModelError(f'cannot make the TensorRT engine cache {self.tensorrt_cache}: '
                                 f'{error}; point tensorrt_cache_dir at a writable folder, or '
                                 'turn tensorrt_engine_cache off') from None
        provider_options = [_provider_options(p, intra_op_threads, gpu, self.tensorrt_cache)
                            for p in usable]
        try:
            self.session = ort.InferenceSession(
                os.fspath(path), sess_options=options, providers=usable,
                provider_options=provider_options)
        except Exception as error:  # ORT raises several private exception types
            raise ModelError(f'cannot load model {path}: {error}; {_HOW_TO_FIX}') from None
        self.providers = tuple(self.session.get_providers())
        self.info = read_model_info(path, self.session)
        # Output channel -> our class id, and which channel is the hero.
        self._channel_to_id = np.array([CLASS_IDS[c] for c in self.info.classes], np.uint8)
        self._hero_channel = self.info.classes.index('hero')
        self._identity_order = bool(np.all(self._channel_to_id == np.arange(3)))
        self._scale = np.float32(self.info.scale)
        self._offset = np.float32(self.info.offset)
        # Average with the output on the mirrored frame (test-time flip): fewer false heroes,
        # fewer far ones (docs/training.md), twice the inference.
        self.flip_average = bool(flip_average)
        self._warm_up(warmup_runs)

    @property
    def input_size(self):
        return self.info.height, self.info.width

    def fell_back(self) -> bool:
        """Tell whether the session runs on another provider than the first usable one."""
        return self.preferred_provider not in (None, self.providers[0])

    def preprocess(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> (1, h, w, 3 + pad channels) network input, float32 or uint8."""
        height, width = self.input_size
        if rgb.shape[:2] != (height, width):
            rgb = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR)
        if self.info.input_codes is not None:
            # A table lookup instead of a megabyte of floats that the model would quantize.
            rgb = cv2.LUT(rgb, self.info.input_codes)
        if self.info.pad_channels:
            # The padding channel (alpha, 255) meets only zero weights: 0.01 ms at 256x256.
            rgb = cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA)
        if self.info.input_codes is not None:
            return rgb[None]
        # A float input: in place, in float32, several times faster than a float table lookup.
        pixels = rgb.astype(np.float32)[None]
        pixels *= self._scale
        pixels += self._offset
        return pixels

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """
        (1, h, w, channels) network input -> (h, w, C) scores, in model order.

        The scores are the model's output: float probabilities, or uint8 quantized logits from
        an int8 model. Flip-averaged, they are always probabilities (the mean of the two).
        """
        scores = self.session.run(None, {self.info.input_name: batch})[0][0]
        if self.flip_average:
            mirrored = np.ascontiguousarray(batch[:, :, ::-1])
            probs = self.probabilities(scores)
            probs += self.probabilities(
                self.session.run(None, {self.info.input_name: mirrored})[0][0])[:, ::-1]
            probs *= np.float32(0.5)
            return probs
        return scores

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Return the model's output as float32 probabilities, a softmax where they are logits."""
        if scores.dtype == np.uint8:
            return softmax_of_codes(scores, self.info.output_quantization[0])
        return scores.astype(np.float32, copy=True)

    def postprocess(self, scores: np.ndarray, size) -> Segmentation:
        """Scores at network size -> class ids and hero probability, for input `size`."""
        # The largest logit is the most probable class: no softmax for the ids.
        channels = _argmax3(scores)
        net_ids = channels if self._identity_order else self._channel_to_id[channels]
        if scores.dtype == np.uint8:
            hero = HeroProbability(scores, self._hero_channel, self.info.output_quantization[0])
        else:
            hero = scores[:, :, self._hero_channel]
        return Segmentation(net_ids, hero, tuple(size))

    def segment(self, rgb: np.ndarray) -> Segmentation:
        return self.postprocess(self.infer(self.preprocess(rgb)), rgb.shape[:2])

    def _warm_up(self, runs):
        # The first runs allocate memory and pick kernels; do it before the first real frame.
        batch = np.zeros((1, *self.input_size, 3 + self.info.pad_channels),
                         np.float32 if self.info.input_codes is None else np.uint8)
        for _ in range(int(runs)):
            self.infer(batch)


def _preload_cuda_libraries() -> str:
    """
    Load CUDA and cuDNN where ONNX Runtime's GPU build looks for them; return what it reported.

    Installed as NVIDIA's pip wheels (`make gpu`), they are not on the loader's path, so the
    CUDA provider would not find them without this. It prints what it cannot load; that text
    goes to the node's log instead, with its fall-back warning.
    """
    preload = getattr(ort, 'preload_dlls', None)      # ONNX Runtime 1.21 on, GPU build only
    if preload is None:
        return ''
    report = io.StringIO()
    with contextlib.redirect_stdout(report):
        preload()
    return '; '.join(line.strip() for line in report.getvalue().splitlines() if line.strip())


def _provider_options(provider, intra_op_threads, gpu=GpuSettings(),
                      tensorrt_cache=None) -> dict:
    # OpenVINO runs the graph on its own thread pool, which ignores the session's thread count.
    if provider == 'OpenVINOExecutionProvider' and int(intra_op_threads) > 0:
        return {'num_of_threads': str(int(intra_op_threads))}
    if provider == 'CUDAExecutionProvider':
        return {'device_id': str(int(gpu.device_id))}
    if provider == 'TensorrtExecutionProvider':
        options = {'device_id': str(int(gpu.device_id)),
                   'trt_fp16_enable': str(bool(gpu.tensorrt_fp16))}
        if tensorrt_cache is not None:
            # Layer timings are not tied to one model's weights: one timing cache for all of
            # them, above the per-model engine folders, speeds up building the next model's.
            options.update({'trt_engine_cache_enable': 'True',
                            'trt_engine_cache_path': os.fspath(tensorrt_cache),
                            'trt_timing_cache_enable': 'True',
                            'trt_timing_cache_path': os.fspath(gpu.tensorrt_cache_dir)})
        return options
    return {}


def _argmax3(probs: np.ndarray) -> np.ndarray:
    """
    np.argmax(probs, axis=2) for three channels, ties to the first, as uint8.

    Two comparisons and a masked write on the channels as strided views: 3.5x faster than
    np.argmax on a 256x256 output and 2.5x faster than cv2.split with OpenCV's compare and
    max, which copies the channels out first (docs/perception.md).
    """
    first, second, third = probs[..., 0], probs[..., 1], probs[..., 2]
    ids = np.greater(second, first).view(np.uint8)                 # 1 where channel 1 wins
    np.copyto(ids, np.uint8(2), where=np.greater(third, np.maximum(first, second)))
    return ids
