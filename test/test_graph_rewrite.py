"""training/graph_rewrite.py on small hand-built graphs, run by real ONNX Runtime (no TF)."""

from followme_perception.segmenter import input_codes, softmax_of_codes
import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto
import onnxruntime as ort
import pytest
from training import graph_rewrite

RNG = np.random.default_rng(7)


class Builder:
    """A float NCHW graph built node by node, with random weights."""

    def __init__(self, channels=3, size=8):
        self.nodes, self.inits, self.extra_outputs = [], [], []
        self.input = helper.make_tensor_value_info('x', TensorProto.FLOAT,
                                                   ['batch', channels, size, size])

    def const(self, shape, name):
        self.inits.append(numpy_helper.from_array(
            RNG.normal(size=shape).astype(np.float32), name))
        return name

    def conv(self, x, weight_shape, name, group=1, stride=1, bias=True):
        pad = weight_shape[2] // 2
        inputs = [x, self.const(weight_shape, f'{name}_w')]
        if bias:
            inputs.append(self.const([weight_shape[0]], f'{name}_b'))
        self.nodes.append(helper.make_node('Conv', inputs, [name], name=name, group=group,
                                           kernel_shape=weight_shape[2:], strides=[stride] * 2,
                                           pads=[pad] * 4))
        return name

    def op(self, op_type, inputs, name, **attributes):
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=name, **attributes))
        return name

    def model(self, output):
        outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * 4)
                   for name in [output, *self.extra_outputs]]
        return as_model(helper.make_graph(self.nodes, 'g', [self.input], outputs, self.inits))


def as_model(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    # As tf2onnx writes opset 17 (onnx's own default IR is newer than the OpenVINO build's
    # ONNX Runtime reads).
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run(model, x, input_name='x'):
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=['CPUExecutionProvider'])
    return session.run(None, {input_name: x})


def decoder_like():
    """Build the FCN's patterns in small: a thin separable on RGB, concat + separable blocks."""
    b = Builder()
    dw = b.conv('x', [3, 1, 3, 3], 'enc_dw', group=3, stride=2, bias=False)
    enc = b.op('Relu', [b.conv(dw, [6, 3, 1, 1], 'enc_pw')], 'enc')
    up = b.op('Resize', [enc, '', 'scales'], 'up', mode='linear')
    b.inits.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), 'scales'))
    cat = b.op('Concat', [up, 'x'], 'cat', axis=1)
    dw2 = b.conv(cat, [9, 1, 3, 3], 'dec_dw', group=9)            # a depthwise bias too
    dec = b.op('Relu', [b.conv(dw2, [5, 9, 1, 1], 'dec_pw')], 'dec')
    cat3 = b.op('Concat', [dec, up, 'x'], 'cat3', axis=1)          # three inputs
    dw3 = b.conv(cat3, [14, 1, 3, 3], 'out_dw', group=14, bias=False)
    return b.model(b.conv(dw3, [3, 14, 1, 1], 'out_pw'))


def test_rewrites_remove_the_concats_and_compute_the_same():
    model = decoder_like()
    x = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    want = run(model, x)[0]
    counts = graph_rewrite.speed_up(model)
    assert counts == {'split_concat_separable': 2, 'fold_thin_separable': 3}
    ops = [n.op_type for n in model.graph.node]
    assert 'Concat' not in ops
    assert ops.count('Add') == 1 + 2
    # No depthwise conv over the 3 RGB channels is left.
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    depthwise = [n for n in model.graph.node if n.op_type == 'Conv'
                 and weights[n.input[1]].shape[1] == 1 and weights[n.input[1]].shape[0] > 1]
    assert all(weights[n.input[1]].shape[0] > graph_rewrite.THIN_CHANNELS for n in depthwise)
    np.testing.assert_allclose(run(model, x)[0], want, atol=1e-4, rtol=1e-4)


def test_a_concat_read_elsewhere_stays():
    b = Builder()
    cat = b.op('Concat', ['x', 'x'], 'cat', axis=1)
    b.extra_outputs.append(cat)                                    # also a graph output
    dw = b.conv(cat, [6, 1, 3, 3], 'dw', group=6)
    model = b.model(b.conv(dw, [4, 6, 1, 1], 'pw'))
    before = model.SerializeToString()
    assert graph_rewrite.split_concat_separable(model) == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize('case', ['wide', 'multiplier', 'spatial_second'])
def test_what_is_not_a_thin_separable_stays(case):
    b = Builder(channels=8 if case == 'wide' else 3)
    if case == 'multiplier':  # depth multiplier 2: 3 groups, 6 output channels
        dw = b.conv('x', [6, 1, 3, 3], 'dw', group=3)
        second = b.conv(dw, [4, 6, 1, 1], 'pw')
    elif case == 'spatial_second':  # a 3x3 after the depthwise is not a pointwise conv
        dw = b.conv('x', [3, 1, 3, 3], 'dw', group=3)
        second = b.conv(dw, [4, 3, 3, 3], 'pw')
    else:
        dw = b.conv('x', [8, 1, 3, 3], 'dw', group=8)
        second = b.conv(dw, [4, 8, 1, 1], 'pw')
    model = b.model(second)
    x = RNG.normal(size=(1, b.input.type.tensor_type.shape.dim[1].dim_value, 8, 8))
    want = run(model, x.astype(np.float32))[0]
    assert graph_rewrite.fold_thin_separable(model) == 0
    assert len(model.graph.node) == 2
    np.testing.assert_array_equal(run(model, x.astype(np.float32))[0], want)


def test_names_stay_unique_when_rewriting_twice():
    model = decoder_like()
    graph_rewrite.speed_up(model)
    assert graph_rewrite.speed_up(model) == {'split_concat_separable': 0,
                                             'fold_thin_separable': 0}
    names = [n.name for n in model.graph.node]
    assert len(names) == len(set(names))


def nhwc_qdq_stem():
    """Build the int8 FCN's stem: NHWC input, Transpose, Q/DQ, two int8 dense convs on it."""
    nodes = [helper.make_node('Transpose', ['image'], ['nchw'], perm=[0, 3, 1, 2]),
             helper.make_node('QuantizeLinear', ['nchw', 's', 'z'], ['q']),
             helper.make_node('DequantizeLinear', ['q', 's', 'z'], ['dq'])]
    inits = [numpy_helper.from_array(np.array(2 / 255, np.float32), 's'),
             numpy_helper.from_array(np.array(128, np.uint8), 'z')]
    outputs = []
    for name, stride in (('enc', 2), ('dec', 1)):
        weight = RNG.integers(-127, 128, (5, 3, 3, 3)).astype(np.int8)
        inits += [numpy_helper.from_array(weight, f'{name}_wq'),
                  numpy_helper.from_array(RNG.uniform(0.01, 0.02, 5).astype(np.float32),
                                          f'{name}_ws'),
                  numpy_helper.from_array(np.zeros(5, np.int8), f'{name}_wz')]
        nodes += [helper.make_node('DequantizeLinear', [f'{name}_wq', f'{name}_ws', f'{name}_wz'],
                                   [f'{name}_w'], axis=0),
                  helper.make_node('Conv', ['dq', f'{name}_w'], [name], name=name,
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[stride] * 2)]
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * 4))
    return as_model(helper.make_graph(nodes, 'stem', [helper.make_tensor_value_info(
        'image', TensorProto.FLOAT, ['batch', 8, 8, 3])], outputs, inits))


def test_input_padding_is_exact_on_an_int8_stem_whatever_the_padding_holds():
    model = nhwc_qdq_stem()
    image = RNG.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
    want = run(model, image, 'image')
    assert graph_rewrite.pad_input_channels(model) == 2
    assert model.graph.input[0].type.tensor_type.shape.dim[3].dim_value == 4
    for fill in (0.0, 1.0, -1.0):
        padded = np.concatenate([image, np.full((2, 8, 8, 1), fill, np.float32)], axis=-1)
        for got, expected in zip(run(model, padded, 'image'), want):
            np.testing.assert_array_equal(got, expected)
    assert graph_rewrite.pad_input_channels(model) == 0     # already four


def test_input_padding_on_a_float_nchw_graph_and_where_it_does_not_apply():
    b = Builder()
    model = b.model(b.op('Relu', [b.conv('x', [4, 3, 3, 3], 'c')], 'out'))
    x = RNG.normal(size=(1, 3, 8, 8)).astype(np.float32)
    want = run(model, x)[0]
    assert graph_rewrite.pad_input_channels(model) == 1
    padded = np.concatenate([x, RNG.normal(size=(1, 1, 8, 8)).astype(np.float32)], axis=1)
    np.testing.assert_allclose(run(model, padded)[0], want, atol=1e-5)

    # The input also read by something that is not a convolution (a concat, a graph output):
    # a fourth channel would change what it computes, so nothing is touched.
    b = Builder()
    cat = b.op('Concat', [b.conv('x', [4, 3, 3, 3], 'c'), 'x'], 'cat', axis=1)
    model = b.model(cat)
    before = model.SerializeToString()
    assert graph_rewrite.pad_input_channels(model) == 0
    assert model.SerializeToString() == before
    b = Builder()
    b.extra_outputs.append('x')
    model = b.model(b.conv('x', [4, 3, 3, 3], 'c'))
    assert graph_rewrite.pad_input_channels(model) == 0
    # A depthwise convolution reads each channel on its own: not padded either.
    b = Builder()
    model = b.model(b.conv('x', [3, 1, 3, 3], 'dw', group=3))
    assert graph_rewrite.pad_input_channels(model) == 0


def test_a_quantized_input_is_exact_when_fed_the_codes_of_its_quantization():
    """take_uint8_input on the int8 stem: the node's table gives the same outputs, bit for bit."""
    model = nhwc_qdq_stem()
    # Every pixel value 0..255, at least once.
    pixels = np.resize(np.arange(256, dtype=np.uint8), (2, 8, 8, 3))
    normalised = pixels.astype(np.float32) * np.float32(1 / 127.5) + np.float32(-1.0)
    want = run(model, normalised, 'image')
    scale, zero_point = graph_rewrite.take_uint8_input(model)
    assert (scale, zero_point) == (pytest.approx(2 / 255), 128)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert 'QuantizeLinear' not in {node.op_type for node in model.graph.node}
    codes = input_codes(1 / 127.5, -1.0, scale, zero_point)
    for got, expected in zip(run(model, codes[pixels], 'image'), want):
        np.testing.assert_array_equal(got, expected)
    assert graph_rewrite.take_uint8_input(model) is None       # already uint8


def test_a_quantized_input_where_it_does_not_apply():
    # A float graph (no QuantizeLinear on the input): unchanged.
    b = Builder()
    model = b.model(b.conv('x', [4, 3, 3, 3], 'c'))
    before = model.SerializeToString()
    assert graph_rewrite.take_uint8_input(model) is None
    assert model.SerializeToString() == before
    # The quantized input also read by something other than a DequantizeLinear.
    model = nhwc_qdq_stem()
    model.graph.node.append(helper.make_node('Identity', ['q'], ['q_copy']))
    model.graph.output.append(helper.make_tensor_value_info('q_copy', TensorProto.UINT8,
                                                            [None] * 4))
    before = model.SerializeToString()
    assert graph_rewrite.take_uint8_input(model) is None
    assert model.SerializeToString() == before


def qdq_head(softmax_axis=1, transposed=True):
    """Build the int8 FCN's head: an int8 1x1 classes conv, Q/DQ, softmax, Q/DQ, to NHWC."""
    def qdq(x, name, scale, zero_point):
        inits.extend([numpy_helper.from_array(np.array(scale, np.float32), f'{name}_s'),
                      numpy_helper.from_array(np.array(zero_point, np.uint8), f'{name}_z')])
        nodes.extend([
            helper.make_node('QuantizeLinear', [x, f'{name}_s', f'{name}_z'], [f'{name}_q']),
            helper.make_node('DequantizeLinear', [f'{name}_q', f'{name}_s', f'{name}_z'],
                             [f'{name}_dq'])])
        return f'{name}_dq'
    nodes, inits = [], [numpy_helper.from_array(
        RNG.normal(size=(3, 5, 1, 1)).astype(np.float32), 'classes_w')]
    nodes.append(helper.make_node('Conv', [qdq('x', 'features', 0.02, 128), 'classes_w'],
                                  ['classes'], kernel_shape=[1, 1]))
    nodes.append(helper.make_node('Softmax', [qdq('classes', 'logits', 0.05, 120)], ['probs'],
                                  axis=softmax_axis))
    probs = qdq('probs', 'probs', 1 / 255, 0)
    if transposed:
        nodes.append(helper.make_node('Transpose', [probs], ['nhwc'], perm=[0, 2, 3, 1]))
        probs = qdq('nhwc', 'out', 1 / 255, 0)
    graph = helper.make_graph(nodes, 'head', [helper.make_tensor_value_info(
        'x', TensorProto.FLOAT, ['batch', 5, 8, 8])], [helper.make_tensor_value_info(
            probs, TensorProto.FLOAT, [None] * 4)], inits)
    return as_model(graph)


def test_logits_out_keep_every_pixels_class_and_give_the_probabilities_back():
    """take_logits_output on the int8 head: same argmax, softmax of the codes = the output."""
    model = qdq_head()
    x = RNG.normal(size=(2, 5, 8, 8)).astype(np.float32) * 3
    probs = run(model, x)[0]
    assert graph_rewrite.take_logits_output(model) == (pytest.approx(0.05), 120)
    onnx.checker.check_model(model, full_check=True)
    assert 'Softmax' not in {node.op_type for node in model.graph.node}
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8
    codes = run(model, x)[0]
    assert codes.dtype == np.uint8 and codes.shape == probs.shape == (2, 8, 8, 3)
    # The model's probabilities came in steps of 1/255 from ONNX Runtime's int8 softmax, which
    # rounds on its own too: the float softmax of the same logits lies within two steps, and
    # ranks the classes as the model did.
    np.testing.assert_allclose(softmax_of_codes(codes, 0.05), probs, atol=2 / 255)
    np.testing.assert_array_equal(np.argmax(codes, -1), np.argmax(probs, -1))
    assert graph_rewrite.take_logits_output(model) is None         # no softmax left
    # A softmax over the channels of an NHWC head, with nothing after it, goes the same way.
    nhwc = qdq_head(softmax_axis=-1, transposed=False)
    assert graph_rewrite.take_logits_output(nhwc) == (pytest.approx(0.05), 120)
    assert nhwc.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8


def test_logits_out_where_it_does_not_apply():
    # A softmax over a spatial axis, a float softmax (no quantized logits), a softmax whose
    # probabilities are also read elsewhere: the model is left as it is.
    over_width = qdq_head(softmax_axis=3)
    b = Builder()
    float_head = b.model(b.op('Softmax', [b.conv('x', [3, 3, 1, 1], 'c')], 'p', axis=1))
    read_twice = qdq_head()
    read_twice.graph.node.append(helper.make_node('Identity', ['probs'], ['probs_copy']))
    read_twice.graph.output.append(helper.make_tensor_value_info('probs_copy', TensorProto.FLOAT,
                                                                 [None] * 4))
    for model in (over_width, float_head, read_twice):
        before = model.SerializeToString()
        assert graph_rewrite.take_logits_output(model) is None
        assert model.SerializeToString() == before
