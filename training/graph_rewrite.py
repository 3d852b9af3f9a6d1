"""
Exact rewrites of an exported ONNX graph that ONNX Runtime runs faster on the CPU. No TensorFlow.

tf2onnx writes the FCN as Keras built it. These patterns in it are slow in ONNX Runtime 1.32:

- **A channel concatenation feeding a separable convolution** (every decoder block). In the
  NHWC layout ONNX Runtime uses, concatenating channels copies a few bytes per pixel, and the
  int8 version requantizes them; at 224x224 the last one was the most expensive node of the
  int8 model. A depthwise convolution works on each channel alone and a 1x1 convolution is a
  sum over channels, so `pw(dw(concat(a, b)))` equals `pw_a(dw_a(a)) + pw_b(dw_b(b))`:
  `split_concat_separable` writes it that way and the concatenation disappears.
- **A depthwise convolution over a few channels followed by a 1x1 one** (the RGB input, in the
  first encoder block and, after the split, in the last decoder block). Three-channel depthwise
  kernels run far below a dense kernel's speed; `fold_thin_separable` writes the pair as one
  dense convolution with weights `w_pw[o, c] * w_dw[c]`.

- **An int8 dense convolution over the three RGB channels.** ONNX Runtime's int8 convolution
  runs a 3-channel input at half the speed of a 4-channel one (256x256, 3x3, 32 outputs: 1.17
  against 0.65 ms), and the FCN has two, both on the image. `pad_input_channels` gives the
  image input a fourth channel that every convolution reading it multiplies by zero weights;
  the model's `followme.input_pad_channels` metadata tells the node to send one. quantize.py
  applies it to the int8 model only: the float model's convolutions got 2 % slower with it.
- **Float pixels into an int8 model.** The int8 graph's first step quantizes the normalised
  float image back to 8 bits, and the node normalised the camera's 8-bit pixels to float only
  for that: a megabyte of floats written and read per 256x256 frame. `take_uint8_input` makes
  the input those 8-bit codes; the node looks each pixel value's code up in a 256-entry table
  (`followme.input_quantization` metadata says how to make it). quantize.py applies it to the
  int8 model.
- **A softmax at the end of an int8 model.** The node takes each pixel's class (the largest
  logit wins either way) and the hero's probability only over the hero's blob, yet
  `QLinearSoftmax` ran over every pixel: 5 % of the int8 model's time. `take_logits_output`
  makes the output the 8-bit logits the softmax read (`followme.output_quantization` says how
  to read them); whoever needs probabilities takes the softmax where it needs them.

All of these are algebra, not approximations (the last keeps each pixel's class and hands the
softmax on): export checks the rewritten graph against Keras on real frames like any other.
Measured on the shipped models in docs/training.md.
"""

import itertools

import numpy as np
import onnx
from onnx import helper, numpy_helper

# The RGB input; wider depthwise layers are fast enough as they are.
THIN_CHANNELS = 4
RGB_CHANNELS = 3
# What `pad_input_channels` pads the RGB input to.
PADDED_INPUT_CHANNELS = 4
# NHWC -> NCHW, as tf2onnx transposes a Keras model's input, and back for its output.
_TO_NCHW = [0, 3, 1, 2]
_TO_NHWC = [0, 2, 3, 1]


def speed_up(model: onnx.ModelProto) -> dict:
    """Apply every rewrite in place; return how often each one applied."""
    counts = {'split_concat_separable': split_concat_separable(model),
              'fold_thin_separable': fold_thin_separable(model)}
    onnx.checker.check_model(model)
    return counts


def pad_input_channels(model: onnx.ModelProto, channels=PADDED_INPUT_CHANNELS) -> int:
    """
    Widen the image input to `channels`, the new ones read by zero weights only.

    Applies when every path from the graph input reaches a plain convolution through nothing
    but a Transpose to NCHW and (int8 models) per-tensor QuantizeLinear / DequantizeLinear; the
    weights may be a DequantizeLinear of int8 ones. Returns how many convolutions it widened
    (0: not applicable, the model is unchanged). Exact on float and int8 graphs alike.
    """
    walk = _input_walk(model)
    if walk is None:
        return 0
    axis, have, convs, weights, between = walk
    if have >= channels:
        return 0
    for weight in weights:
        array = numpy_helper.to_array(weight)
        pad = np.zeros((array.shape[0], channels - have, *array.shape[2:]), array.dtype)
        weight.CopyFrom(numpy_helper.from_array(np.concatenate([array, pad], axis=1),
                                                weight.name))
    _set_input_channels(model, axis, channels, between)
    return len(convs)


def _input_walk(model):
    """
    Follow the image input to the convolutions that read it.

    Returns (channel axis of the input, its channels, the convs, their weight tensors, the
    tensors on the way); None unless the one graph input reaches only plain convolutions
    (see pad_input_channels).
    """
    if len(model.graph.input) != 1:
        return None
    graph = _Graph(model)
    source = model.graph.input[0]
    dims = source.type.tensor_type.shape.dim
    axis, frontier, passed, convs = 1, [source.name], [], []
    while frontier:
        tensor = frontier.pop()
        if tensor in graph.outputs:
            return None
        for node in graph.consumers(tensor):
            if node.op_type == 'Transpose' and tensor == source.name \
                    and _attr(node, 'perm') == _TO_NCHW:
                axis = 3
            elif node.op_type in ('QuantizeLinear', 'DequantizeLinear') \
                    and node.input[0] == tensor and graph.is_scalar(node.input[1]):
                pass
            elif node.op_type == 'Conv' and node.input[0] == tensor \
                    and _attr(node, 'group', 1) == 1:
                convs.append(node)
                continue
            else:
                return None
            passed.append(node)
            frontier.append(node.output[0])
    if not convs or len(dims) != 4 or not dims[axis].HasField('dim_value'):
        return None
    have = dims[axis].dim_value
    weights = [graph.weight_tensor(conv) for conv in convs]
    if any(w is None or len(w.dims) != 4 or w.dims[1] != have for w in weights):
        return None
    # A Conv's weight read twice (shared) would be padded twice.
    if len({w.name for w in weights}) != len(weights):
        return None
    return axis, have, convs, weights, [out for node in passed for out in node.output]


def _set_input_channels(model, axis, channels, between):
    model.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = channels
    _forget_shapes(model, between)


def _forget_shapes(model, names):
    # Types and shapes recorded for these tensors are stale (ONNX Runtime warns about them);
    # shape inference at load time finds them again.
    for info in list(model.graph.value_info):
        if info.name in names:
            model.graph.value_info.remove(info)


def take_uint8_input(model: onnx.ModelProto):
    """
    Make an int8 graph take its input already quantized: the uint8 codes, not the floats.

    Applies where the float input reaches one per-tensor uint8 QuantizeLinear, through a
    Transpose to NCHW at most, and that feeds DequantizeLinears only. The QuantizeLinear goes
    and the input becomes uint8; whoever feeds it must quantize as it did (the node does it
    with a 256-entry table, followme_perception.segmenter.input_codes). Exact. Returns the
    removed quantization's (scale, zero point), or None where it does not apply (the model is
    unchanged).
    """
    if len(model.graph.input) != 1:
        return None
    graph, source = _Graph(model), model.graph.input[0]
    if source.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        return None
    readers = graph.consumers(source.name)
    transposed = None
    if len(readers) == 1 and readers[0].op_type == 'Transpose' \
            and _attr(readers[0], 'perm') == _TO_NCHW:
        transposed = readers[0].output[0]
        readers = graph.consumers(transposed)
    if len(readers) != 1 or readers[0].op_type != 'QuantizeLinear':
        return None
    quantize = readers[0]
    if len(quantize.input) < 3 or not (graph.is_scalar(quantize.input[1])
                                       and graph.is_scalar(quantize.input[2])):
        return None
    scale = float(numpy_helper.to_array(graph.constants[quantize.input[1]]))
    zero_point = numpy_helper.to_array(graph.constants[quantize.input[2]])
    dequantizers = graph.consumers(quantize.output[0])
    if zero_point.dtype != np.uint8 or quantize.output[0] in graph.outputs \
            or not all(n.op_type == 'DequantizeLinear' for n in dequantizers):
        return None
    for node in dequantizers:
        node.input[0] = transposed or source.name
    graph.remove([quantize])
    source.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    _forget_shapes(model, [transposed])
    return scale, int(zero_point)


def take_logits_output(model: onnx.ModelProto):
    """
    Make an int8 graph give the 8-bit logits its final softmax reads, not the probabilities.

    Applies where the one output comes from a Softmax over the channels through Quantize /
    DequantizeLinears and a Transpose to NHWC at most, and the Softmax reads a per-tensor
    uint8 DequantizeLinear. Those uint8 codes, transposed to NHWC where the Softmax ran in
    NCHW, become the output `logits`; the Softmax and all after it go. Each pixel's largest
    logit is its most probable class, and the reader gets the probabilities back as
    softmax(scale * (codes - zero point)) where it wants them. Returns the logits' (scale,
    zero point), or None where it does not apply (the model is unchanged).
    """
    if len(model.graph.output) != 1:
        return None
    graph, output = _Graph(model), model.graph.output[0]
    producer = {name: node for node in model.graph.node for name in node.output}
    tail, transposed = [], False
    node = producer.get(output.name)
    passing = ('QuantizeLinear', 'DequantizeLinear', 'Transpose')
    while node is not None and node.op_type in passing:
        if node.op_type == 'Transpose':
            if transposed or _attr(node, 'perm') != _TO_NHWC:
                return None
            transposed = True
        tail.insert(0, node)
        node = producer.get(node.input[0])
    softmax = node
    if softmax is None or softmax.op_type != 'Softmax' \
            or _attr(softmax, 'axis', -1) not in ((1,) if transposed else (3, -1)):
        return None
    chain = [softmax] + tail
    if any(graph.only_consumer(node) is not after for node, after in zip(chain, chain[1:])):
        return None
    dequantize = producer.get(softmax.input[0])
    if dequantize is None or dequantize.op_type != 'DequantizeLinear' \
            or len(dequantize.input) < 3 or not (graph.is_scalar(dequantize.input[1])
                                                 and graph.is_scalar(dequantize.input[2])):
        return None
    scale = float(numpy_helper.to_array(graph.constants[dequantize.input[1]]))
    zero_point = numpy_helper.to_array(graph.constants[dequantize.input[2]])
    if zero_point.dtype != np.uint8:
        return None
    codes, logits = dequantize.input[0], graph.fresh('logits')
    graph.insert_before(softmax, [helper.make_node(
        'Transpose', [codes], [logits], perm=_TO_NHWC, name=graph.fresh('logits_to_nhwc'))
        if transposed else helper.make_node('Identity', [codes], [logits],
                                            name=graph.fresh('logits'))])
    graph.remove(chain)
    if not graph.consumers(dequantize.output[0]):
        graph.remove([dequantize])
    graph.drop_unused_constants()
    output.name = logits
    output.type.tensor_type.elem_type = onnx.TensorProto.UINT8
    _forget_shapes(model, [n for node in chain + [dequantize] for n in node.output])
    return scale, int(zero_point)


def split_concat_separable(model: onnx.ModelProto) -> int:
    """Replace Concat(channels) -> depthwise Conv -> 1x1 Conv by one branch per input + Add."""
    graph = _Graph(model)
    channels = _channel_counts(model)
    done = 0
    for concat in list(model.graph.node):
        if concat.op_type != 'Concat' or _attr(concat, 'axis') != 1:
            continue
        pair = graph.separable_after(concat)
        if pair is None:
            continue
        parts = [channels.get(name) for name in concat.input]
        depthwise, pointwise = pair
        w_dw = graph.weight(depthwise)
        if None in parts or sum(parts) != w_dw.shape[0]:
            continue
        w_pw, b_dw = graph.weight(pointwise), graph.bias(depthwise)
        branches = []
        bounds = [0, *itertools.accumulate(parts)]
        for k, (source, lo, hi) in enumerate(zip(concat.input, bounds, bounds[1:])):
            dw_inputs = [source, graph.constant(w_dw[lo:hi], depthwise.name)]
            if b_dw is not None:
                dw_inputs.append(graph.constant(b_dw[lo:hi], depthwise.name))
            dw_out = graph.fresh(f'{depthwise.name}_part{k}')
            pw_inputs = [dw_out, graph.constant(w_pw[:, lo:hi], pointwise.name)]
            if k == 0 and len(pointwise.input) > 2:  # the bias, once
                pw_inputs.append(pointwise.input[2])
            pw_out = graph.fresh(f'{pointwise.name}_part{k}')
            graph.insert_before(pointwise, [
                _like(depthwise, dw_inputs, dw_out, group=hi - lo),
                _like(pointwise, pw_inputs, pw_out)])
            branches.append(pw_out)
        total = branches[0]
        for k, branch in enumerate(branches[1:], 1):
            out = pointwise.output[0] if k == len(branches) - 1 else graph.fresh(
                f'{pointwise.name}_sum{k}')
            graph.insert_before(pointwise, [helper.make_node(
                'Add', [total, branch], [out], name=graph.fresh(f'{pointwise.name}_sum{k}'))])
            total = out
        graph.remove([concat, depthwise, pointwise])
        done += 1
    graph.drop_unused_constants()
    return done


def fold_thin_separable(model: onnx.ModelProto, max_channels=THIN_CHANNELS) -> int:
    """Replace a depthwise Conv over <= max_channels + a 1x1 Conv by one dense Conv."""
    graph = _Graph(model)
    done = 0
    for depthwise in list(model.graph.node):
        pair = graph.separable_after(depthwise, first_is_depthwise=True)
        if pair is None:
            continue
        w_dw = graph.weight(depthwise)
        if w_dw.shape[0] > max_channels:
            continue
        pointwise = pair[1]
        w_pw = graph.weight(pointwise)[:, :, 0, 0]                     # (out, in)
        weight = w_pw[:, :, None, None] * w_dw[:, 0][None]             # (out, in, kh, kw)
        inputs = [depthwise.input[0], graph.constant(weight, pointwise.name)]
        b_dw = graph.bias(depthwise)
        if b_dw is None:
            inputs += pointwise.input[2:]  # the pointwise bias, if any, as it is
        else:
            bias = w_pw @ b_dw + (0 if len(pointwise.input) < 3 else graph.bias(pointwise))
            inputs.append(graph.constant(np.asarray(bias, w_dw.dtype), pointwise.name))
        graph.insert_before(pointwise, [_like(depthwise, inputs, pointwise.output[0], group=1,
                                              name=graph.fresh(f'{pointwise.name}_folded'))])
        graph.remove([depthwise, pointwise])
        done += 1
    graph.drop_unused_constants()
    return done


class _Graph:
    """Just enough bookkeeping over a GraphProto to find, insert and remove nodes."""

    def __init__(self, model):
        self.graph = model.graph
        self.constants = {init.name: init for init in self.graph.initializer}
        self.outputs = {out.name for out in self.graph.output}
        self.names = set(self.constants) | {n.name for n in self.graph.node} | {
            out for n in self.graph.node for out in n.output}

    def consumers(self, tensor):
        return [n for n in self.graph.node if tensor in n.input]

    def only_consumer(self, node):
        """Return the one node reading node's output; None if several, none or a graph output."""
        if len(node.output) != 1 or node.output[0] in self.outputs:
            return None
        readers = self.consumers(node.output[0])
        return readers[0] if len(readers) == 1 else None

    def separable_after(self, node, first_is_depthwise=False):
        """(depthwise, pointwise) Convs reading node's output (or starting at node), else None."""
        depthwise = node if first_is_depthwise else self.only_consumer(node)
        if not self._is_depthwise(depthwise):
            return None
        pointwise = self.only_consumer(depthwise)
        if not self._is_pointwise(pointwise):
            return None
        return depthwise, pointwise

    def _is_depthwise(self, node):
        if node is None or node.op_type != 'Conv' or not self._constant_inputs(node):
            return False
        weight = self.weight(node)
        return (weight.ndim == 4 and weight.shape[1] == 1
                and _attr(node, 'group') == weight.shape[0])

    def _is_pointwise(self, node):
        if node is None or node.op_type != 'Conv' or not self._constant_inputs(node):
            return False
        weight = self.weight(node)
        return (weight.ndim == 4 and weight.shape[2:] == (1, 1) and _attr(node, 'group', 1) == 1
                and set(_attr(node, 'strides', [1, 1])) == {1}
                and set(_attr(node, 'pads', [0, 0, 0, 0])) == {0})

    def _constant_inputs(self, node):
        return all(name in self.constants for name in node.input[1:])

    def weight(self, node):
        return numpy_helper.to_array(self.constants[node.input[1]])

    def weight_tensor(self, node):
        """Return a Conv's weight initializer, also behind a DequantizeLinear; else None."""
        name = node.input[1]
        if name in self.constants:
            return self.constants[name]
        producer = next((n for n in self.graph.node if name in n.output), None)
        # Per-tensor or per output channel (axis 0) scales: padding input channels keeps them.
        if producer is not None and producer.op_type == 'DequantizeLinear' \
                and (self.is_scalar(producer.input[1]) or _attr(producer, 'axis', 1) == 0) \
                and producer.input[0] in self.constants:
            return self.constants[producer.input[0]]
        return None

    def is_scalar(self, name):
        return name in self.constants and not self.constants[name].dims

    def bias(self, node):
        if len(node.input) < 3:
            return None
        return numpy_helper.to_array(self.constants[node.input[2]])

    def fresh(self, base):
        """Return a node or tensor name not used yet, starting with base."""
        name, k = base, 0
        while name in self.names:
            k += 1
            name = f'{base}_{k}'
        self.names.add(name)
        return name

    def constant(self, array, base):
        tensor = numpy_helper.from_array(np.ascontiguousarray(array), self.fresh(f'{base}_w'))
        self.graph.initializer.append(tensor)
        self.constants[tensor.name] = tensor
        return tensor.name

    def insert_before(self, anchor, nodes):
        index = list(self.graph.node).index(anchor)
        for offset, node in enumerate(nodes):
            self.graph.node.insert(index + offset, node)

    def remove(self, nodes):
        for node in nodes:
            self.graph.node.remove(node)

    def drop_unused_constants(self):
        used = {name for node in self.graph.node for name in node.input}
        unused = [init for init in self.graph.initializer if init.name not in used]
        for init in unused:
            self.graph.initializer.remove(init)
            del self.constants[init.name]


def _attr(node, name, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _like(conv, inputs, output, group=None, name=None):
    """Make a Conv with conv's attributes (strides, pads, ...), new inputs and output."""
    attributes = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    if group is not None:
        attributes['group'] = group
    return helper.make_node('Conv', inputs, [output], name=name or output, **attributes)


def _channel_counts(model):
    """Tensor name -> size of dim 1 (channels, NCHW) where shape inference knows it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    counts = {}
    for info in itertools.chain(inferred.graph.input, inferred.graph.value_info,
                                inferred.graph.output):
        dims = info.type.tensor_type.shape.dim
        if len(dims) >= 2 and dims[1].HasField('dim_value'):
            counts[info.name] = dims[1].dim_value
    for init in model.graph.initializer:
        if len(init.dims) >= 2:
            counts[init.name] = init.dims[1]
    return counts
