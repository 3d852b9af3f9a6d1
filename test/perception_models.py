"""Tiny but real ONNX models that follow the followme model contract, for perception tests.

The colour model is a fixed 1x1 convolution (a MatMul over the channel axis) and a softmax:
a pixel's class is its strongest colour channel, in the classic mask colours: red background,
green other people, blue hero. So a synthetic frame says exactly what the mask must be.
"""

import numpy as np
import onnx
from onnx import helper, TensorProto

CLASSIC_SCALE = 1.0 / 127.5
CLASSIC_OFFSET = -1.0


def colour_model(path, size=(64, 64), classes='background,others,hero', gain=8.0,
                 metadata=None, channels_first=False, batch='N', conv=False, pad_channels=0,
                 input_quantization=None, input_type=None, output_quantization=None,
                 output_type=None):
    """Write the colour-class model to `path` and return the path.

    `classes` names the output channels in order; channel i is driven by colour channel
    (red, green, blue) of the class it names, so any order still maps blue to the hero.
    `metadata` replaces the contract's metadata (None: a complete, correct set).
    `channels_first` builds an NCHW input [N, 3, H, W] (a model that does not fit the node).
    `conv` computes the same as a 1x1 Conv between Transposes, as tf2onnx writes the FCN.
    `pad_channels` adds input channels after RGB with zero weights, and says so in metadata.
    `input_quantization` (scale, zero point) makes the input uint8 codes of that quantization,
    dequantized first, as the int8 models take it (`input_type`: another element type for the
    input, for a model that does not fit).
    `output_quantization` (scale, zero point) makes the output the logits quantized to uint8
    by ONNX Runtime's QuantizeLinear, no softmax, as the int8 models give them (`output_type`:
    another element type for the output, cast from the probabilities, a model that does not
    fit).
    """
    height, width = size
    colour_of = {'background': 0, 'others': 1, 'hero': 2}
    channels = 3 + pad_channels
    weights = np.zeros((channels, 3), np.float32)
    for channel, name in enumerate(classes.split(',')):
        weights[colour_of[name], channel] = gain
    if conv:
        kernel = weights.T.reshape(3, channels, 1, 1)
        # Straight from the input, as tf2onnx writes it.
        source = 'pixels' if channels_first else 'image'
        nodes = [helper.make_node('Transpose', [source], ['nchw'], perm=[0, 3, 1, 2]),
                 helper.make_node('Conv', ['nchw', 'weights'], ['logits_nchw']),
                 helper.make_node('Transpose', ['logits_nchw'], ['logits'], perm=[0, 2, 3, 1])]
        initializer = helper.make_tensor('weights', TensorProto.FLOAT, kernel.shape,
                                         kernel.ravel())
    else:
        nodes = [helper.make_node('MatMul', ['pixels', 'weights'], ['logits'])]
        initializer = helper.make_tensor('weights', TensorProto.FLOAT, [channels, 3],
                                         weights.ravel())
    output, output_elem = 'probabilities', TensorProto.FLOAT
    if output_quantization:
        output, output_elem = 'logit_codes', TensorProto.UINT8
        nodes.append(helper.make_node('QuantizeLinear', ['logits', 'l_scale', 'l_zero'],
                                      [output]))
    else:
        nodes.append(helper.make_node('Softmax', ['logits'], ['probabilities'], axis=-1))
    if output_type is not None:
        output, output_elem = 'cast', output_type
        nodes.append(helper.make_node('Cast', ['probabilities'], [output], to=output_type))
    if channels_first:
        shape = [batch, channels, height, width]
        nodes.insert(0, helper.make_node('Transpose', ['image'], ['pixels'], perm=[0, 2, 3, 1]))
    else:
        shape = [batch, height, width, channels]
        if not conv:
            nodes.insert(0, helper.make_node('Identity', ['image'], ['pixels']))
    initializers = [initializer]
    if output_quantization:
        initializers += [helper.make_tensor('l_scale', TensorProto.FLOAT, [],
                                            [output_quantization[0]]),
                         helper.make_tensor('l_zero', TensorProto.UINT8, [],
                                            [output_quantization[1]])]
    if input_quantization:
        nodes[0].input[0] = 'dequantized'
        nodes.insert(0, helper.make_node('DequantizeLinear', ['image', 'q_scale', 'q_zero'],
                                         ['dequantized']))
        initializers += [helper.make_tensor('q_scale', TensorProto.FLOAT, [],
                                            [input_quantization[0]]),
                         helper.make_tensor('q_zero', TensorProto.UINT8, [],
                                            [input_quantization[1]])]
    elif input_type is not None:
        nodes[0].input[0] = 'as_float'
        nodes.insert(0, helper.make_node('Cast', ['image'], ['as_float'], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes,
        'followme_colour_fcn',
        [helper.make_tensor_value_info('image', input_type or (
            TensorProto.UINT8 if input_quantization else TensorProto.FLOAT), shape)],
        [helper.make_tensor_value_info(output, output_elem, [batch, height, width, 3])],
        initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)],
                              producer_name='followme-tests')
    model.ir_version = 8
    if metadata is None:
        metadata = {'followme.input_size': f'{height},{width}',
                    'followme.input_scale': repr(CLASSIC_SCALE),
                    'followme.input_offset': repr(CLASSIC_OFFSET),
                    'followme.classes': classes}
        if pad_channels:
            metadata['followme.input_pad_channels'] = str(pad_channels)
        if input_quantization:
            metadata['followme.input_quantization'] = '{!r},{}'.format(*input_quantization)
        if output_quantization:
            metadata['followme.output_quantization'] = '{!r},{}'.format(*output_quantization)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def quantize_linear(values, scale, zero_point):
    """Run ONNX Runtime's own QuantizeLinear (uint8) on float32 `values`, any shape."""
    import onnxruntime as ort
    graph = helper.make_graph(
        [helper.make_node('QuantizeLinear', ['x', 'scale', 'zero_point'], ['q'])], 'quantize',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info('q', TensorProto.UINT8, None)],
        [helper.make_tensor('scale', TensorProto.FLOAT, [], [scale]),
         helper.make_tensor('zero_point', TensorProto.UINT8, [], [zero_point])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    return session.run(None, {'x': np.ascontiguousarray(values, np.float32)})[0]


def scene(height=240, width=320, hero_box=(140, 60, 180, 200), others_box=(20, 80, 60, 160)):
    """Draw a synthetic RGB frame: red background, a green bystander, a blue hero.

    Boxes are (x_min, y_min, x_max, y_max), max exclusive. Returns (rgb, expected class ids).
    """
    rgb = np.zeros((height, width, 3), np.uint8)
    ids = np.zeros((height, width), np.uint8)
    rgb[:, :] = (200, 40, 30)
    for box, colour, class_id in ((others_box, (30, 190, 40), 1), (hero_box, (20, 30, 210), 2)):
        if box is not None:
            x0, y0, x1, y1 = box
            rgb[y0:y1, x0:x1] = colour
            ids[y0:y1, x0:x1] = class_id
    return rgb, ids
