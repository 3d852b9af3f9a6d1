"""
Quantize an exported float model to int8 with ONNX Runtime, checked against the float model.

    python -m training.quantize --model models/followme_fcn.onnx \
        --output models/followme_fcn_int8.onnx --card models/MODEL_CARD.md

Static quantization (QDQ format, int8 weights per channel, uint8 activations), calibrated on
real training frames. The file keeps the float model's contract metadata, so the perception
node reads it the same way. Before writing anything it checks, on real frames, that the int8
model picks the same class as the float model for nearly every pixel (--min-agreement) and,
when the evaluation sets are there, that the classic score drops by at most --max-score-drop.
On a CPU the int8 model runs about twice as fast; the float model stays the reference for
GPUs and for parity with Keras. The int8 model's image input gets a fourth channel that the
network ignores (graph_rewrite.pad_input_channels, `followme.input_pad_channels` = 1): ONNX
Runtime's int8 convolutions are much faster on four input channels than on three. It takes its
input already quantized (graph_rewrite.take_uint8_input, `followme.input_quantization`): the
node looks the codes up instead of normalising to float for the model to quantize. And it
gives its logits quantized, without the final softmax (graph_rewrite.take_logits_output,
`followme.output_quantization`): the node needs each pixel's largest logit, and probabilities
only over the hero's blob. TensorFlow only decodes the frames, in training.data's pipeline;
the quantization is ONNX Runtime's.
"""

import argparse
import json
import os
from pathlib import Path
import tempfile

from followme_common import scoring
import numpy as np
from training import graph_rewrite

REPO = Path(__file__).resolve().parent.parent
CARD_START = '<!-- int8 section: written by python -m training.quantize -->'
CARD_END = '<!-- end of int8 section -->'


class QuantizationError(RuntimeError):
    """The int8 model does not agree with the float model closely enough."""


def _calibration_reader(input_name, batches):
    from onnxruntime.quantization import CalibrationDataReader

    class Frames(CalibrationDataReader):
        def __init__(self):
            self._batches = iter(batches)

        def get_next(self):
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    return Frames()


def quantize(float_path, output, calibration_images, agreement_images, min_agreement=0.99,
             calibration=''):
    """
    Write the int8 model of `float_path` to `output`; return the pixel agreement.

    `calibration` says which frames calibrated it (kept as `followme.calibration`), so the
    file can be made again.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static, QuantType
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from training.evaluate import OnnxPredictor
    from training.export import set_metadata
    float_model = OnnxPredictor(float_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, draft = Path(tmp) / 'prepared.onnx', Path(tmp) / 'int8.onnx'
        # Shape inference only: ORT's graph optimizations would bake this CPU's layout
        # (NCHWc) into the file, and ORT applies them at load time anyway.
        quant_pre_process(os.fspath(float_path), os.fspath(prepared), skip_optimization=True,
                          skip_symbolic_shape=True)
        batches = [float_model.model_input(image[None]) for image in calibration_images]
        quantize_static(os.fspath(prepared), os.fspath(draft),
                        _calibration_reader(float_model.input_name, batches),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        proto = onnx.load(os.fspath(draft))
        # The int8 graph's own input and output contract, for the agreement check and the file.
        contract = int8_contract(proto)
        set_metadata(proto, {**_metadata(proto), **contract})
        onnx.save(proto, os.fspath(draft))
        int8_model = OnnxPredictor(draft)
        agreement = class_agreement(float_model, int8_model, agreement_images)
        if agreement < min_agreement:
            raise QuantizationError(
                "the int8 model picks the float model's class for "
                f'{agreement:.2%} of pixels '
                f'on {len(agreement_images)} real frames (minimum {min_agreement:.2%}); not '
                'written. Calibrate on more or more typical frames (--calibration-frames)')
    metadata = _metadata(onnx.load(os.fspath(float_path)))
    metadata.update({'followme.quantized': 'int8 QDQ, per-channel weights, uint8 activations',
                     'followme.float_model': Path(float_path).name,
                     'followme.float_agreement': f'{agreement:.6f}'})
    metadata.update(contract)
    if calibration:
        metadata['followme.calibration'] = calibration
    set_metadata(proto, metadata)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, os.fspath(output))
    return agreement


def int8_contract(proto) -> dict:
    """Rewrite a fresh int8 graph for ONNX Runtime's CPU kernels; return the metadata it needs."""
    contract = {}
    # Exact, and about 9 % faster on ONNX Runtime's int8 kernels (graph_rewrite.py).
    if graph_rewrite.pad_input_channels(proto):
        contract['followme.input_pad_channels'] = (graph_rewrite.PADDED_INPUT_CHANNELS
                                                   - graph_rewrite.RGB_CHANNELS)
    # Exact too: the node feeds the codes the model's QuantizeLinear made (graph_rewrite.py).
    input_quantization = graph_rewrite.take_uint8_input(proto)
    if input_quantization:
        contract['followme.input_quantization'] = '{!r},{}'.format(*input_quantization)
    # The same classes: the softmax that goes kept each pixel's largest logit (graph_rewrite.py).
    output_quantization = graph_rewrite.take_logits_output(proto)
    if output_quantization:
        contract['followme.output_quantization'] = '{!r},{}'.format(*output_quantization)
    return contract


def _metadata(proto) -> dict:
    return {p.key: p.value for p in proto.metadata_props}


def class_agreement(reference, candidate, images, batch_size=32) -> float:
    """Share of pixels where both models pick the same class."""
    same = total = 0
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        want = np.argmax(reference(batch), axis=-1)
        got = np.argmax(candidate(batch), axis=-1)
        same += int(np.count_nonzero(want == got))
        total += want.size
    return same / total if total else 1.0


def calibration_summary(folders, frames: int) -> str:
    """Name the calibration frames without this machine's paths."""
    from training.export import short_path
    return f'{frames} frames evenly spread over {", ".join(short_path(f) for f in folders)}'


def write_card_section(card, float_report, int8_report, float_timing, int8_timing,
                       agreement, output, calibration='training frames', pad_channels=0,
                       quantized_input=False, quantized_logits=False):
    """Put (or replace) the int8 section at the end of the model card."""
    from training.export import describe_timing
    lines = [
        CARD_START, '', f'## The int8 model: {Path(output).name}', '',
        'Made from the float model by `python -m training.quantize` (ONNX Runtime static '
        'quantization, QDQ, int8 weights per channel, uint8 activations, calibrated on '
        f'{calibration}). The perception node uses it by default on the CPU, also on '
        "OpenVINO's provider after `make openvino` (its int8 kernels round differently: "
        'score it there with `training.evaluate --provider`); use the float model on a GPU. '
        "The figures below are ONNX Runtime's CPU provider's.", '',
        '| | float | int8 |', '|---|---|---|',
    ]
    if pad_channels:
        plural = 's' if pad_channels > 1 else ''
        lines[6:6] = [f'Its input takes {pad_channels} channel{plural} after RGB that the '
                      'network multiplies by zero weights (`followme.input_pad_channels`, filled '
                      "in by the node): ONNX Runtime's int8 convolutions over the image run much "
                      'faster on four input channels than on three '
                      '(graph_rewrite.pad_input_channels, exact).', '']
    if quantized_logits:
        lines[6:6] = ["It gives the classes' logits quantized to uint8 (`followme.output_"
                      'quantization`), not softmax probabilities: the largest logit is each '
                      "pixel's class, and the node takes the softmax only over the hero's blob, "
                      'for the confidence (graph_rewrite.take_logits_output; the scores below '
                      'threshold that softmax).', '']
    if quantized_input:
        lines[6:6] = ['It takes its input already quantized to uint8 (`followme.input_'
                      'quantization`, looked up per pixel value by the node): the same codes its '
                      'first QuantizeLinear made of the normalised floats, without the floats '
                      '(graph_rewrite.take_uint8_input, exact).', '']
    if float_report and int8_report:
        lines.append(f"| final score | {float_report['final_score']:.4f} | "
                     f"{int8_report['final_score']:.4f} |")
        lines.append(f"| final IoU / weight | {float_report['final_iou']:.4f} / "
                     f"{float_report['weight']:.4f} | {int8_report['final_iou']:.4f} / "
                     f"{int8_report['weight']:.4f} |")
    lines.append('| ONNX Runtime ms per frame, median (p90), one after the other | '
                 f"{float_timing['median_ms']:.2f} ({float_timing['p90_ms']:.2f}) | "
                 f"{int8_timing['median_ms']:.2f} ({int8_timing['p90_ms']:.2f}) |")
    lines += ['', "Pixels where int8 picks the float model's class (validation frames): "
                  f'{agreement:.2%}. Timing: float {describe_timing(float_timing)}; int8 '
                  f'{describe_timing(int8_timing)}.', '',
              'Reproduce the int8 score: `python -m training.evaluate --model '
              f'models/{Path(output).name}`.', '', CARD_END, '']
    section = '\n'.join(lines)
    path = Path(card)
    text = path.read_text() if path.is_file() else ''
    if CARD_START in text:
        before = text[:text.index(CARD_START)]
        after = text[text.index(CARD_END) + len(CARD_END):].lstrip('\n') if CARD_END in text \
            else ''
        text = before + section + after
    else:
        text = text.rstrip('\n') + '\n\n' + section
    path.write_text(text)


def main(argv=None):
    from training.data import DataError, DEFAULT_DATA_ROOT, find_all_pairs, materialize
    from training.evaluate import evaluate, format_report, OnnxPredictor
    from training.export import ms_per_frame
    parser = argparse.ArgumentParser(
        description='Quantize an exported float ONNX model to int8 (ONNX Runtime static '
                    'quantization), check it against the float model, score and time both.')
    parser.add_argument('--model', default=str(REPO / 'models' / 'followme_fcn.onnx'),
                        help='float ONNX model from training.export (default: %(default)s)')
    parser.add_argument('--output', default=str(REPO / 'models' / 'followme_fcn_int8.onnx'),
                        help='int8 ONNX file to write (default: %(default)s)')
    parser.add_argument('--calibration-data', nargs='+',
                        default=[str(DEFAULT_DATA_ROOT / 'train')],
                        help='classic-layout folders to calibrate on (default: %(default)s)')
    parser.add_argument('--calibration-frames', type=int, default=200,
                        help='frames, evenly spread over the folders (default: %(default)s)')
    parser.add_argument('--agreement-data', default=str(DEFAULT_DATA_ROOT / 'validation'),
                        help='frames to compare the two models on (default: %(default)s)')
    parser.add_argument('--min-agreement', type=float, default=0.99,
                        help='least share of pixels with the same class (default: %(default)s)')
    parser.add_argument('--eval-data', default=str(DEFAULT_DATA_ROOT / 'sample_evaluation_data'),
                        help='evaluation sets; skipped when absent (default: %(default)s)')
    parser.add_argument('--max-score-drop', type=float, default=0.01,
                        help='largest final-score loss allowed (default: %(default)s)')
    parser.add_argument('--card', help='also write the int8 section of this model card')
    args = parser.parse_args(argv)
    try:
        float_model = OnnxPredictor(args.model)
        size = float_model.input_size
        pairs = find_all_pairs(args.calibration_data)
        step = max(1, len(pairs) // args.calibration_frames)
        calibration = materialize(pairs[::step][:args.calibration_frames], size,
                                  'calibration frames').images
        calibrated_on = calibration_summary(args.calibration_data, len(calibration))
        agreement_pairs = find_all_pairs([args.agreement_data])
        agreement_images = materialize(agreement_pairs[::max(1, len(agreement_pairs) // 200)],
                                       size, 'agreement frames').images
        output = Path(args.output)
        with tempfile.TemporaryDirectory() as tmp:
            draft = Path(tmp) / output.name
            agreement = quantize(args.model, draft, calibration, agreement_images,
                                 args.min_agreement, calibrated_on)
            print(f'int8 picks the float class for {agreement:.2%} of pixels')
            float_report = int8_report = None
            if all((Path(args.eval_data) / name).is_dir() for name in scoring.EVAL_SETS):
                float_report = evaluate(float_model, args.eval_data)
                int8_report = evaluate(OnnxPredictor(draft), args.eval_data)
                drop = float_report['final_score'] - int8_report['final_score']
                if drop > args.max_score_drop:
                    raise QuantizationError(
                        f'int8 scores {int8_report["final_score"]:.4f} against the float '
                        f'model\'s {float_report["final_score"]:.4f} (drop {drop:.4f} > '
                        f'{args.max_score_drop}); not written')
                print(format_report(int8_report))
                _store_score(draft, int8_report)
            else:
                print(f'no evaluation sets in {args.eval_data}: score not checked')
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_bytes(draft.read_bytes())
    except (DataError, FileNotFoundError, ValueError, QuantizationError) as err:
        parser.exit(2, f'error: {err}\n')
    float_timing = ms_per_frame(args.model, size)
    int8_timing = ms_per_frame(output, size)
    print(f"ONNX Runtime ms per frame, median: float {float_timing['median_ms']:.2f}, int8 "
          f"{int8_timing['median_ms']:.2f}; written {output}")
    if args.card:
        int8_model = OnnxPredictor(output)
        write_card_section(args.card, float_report, int8_report, float_timing, int8_timing,
                           agreement, output, calibrated_on, int8_model.pad_channels,
                           int8_model.input_codes is not None,
                           int8_model.metadata.get('followme.output_quantization') is not None)


def _store_score(path, report):
    import onnx

    from training.export import short_score
    proto = onnx.load(os.fspath(path))
    for entry in proto.metadata_props:
        if entry.key == 'followme.score':
            entry.value = json.dumps(short_score(report))
    onnx.save(proto, os.fspath(path))


if __name__ == '__main__':
    main()
