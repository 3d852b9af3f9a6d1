"""
The follow-me FCN: the classic encoder / 1x1 / decoder network, configurable.

Classic defaults: three encoder blocks (3x3 separable conv, stride 2, batch norm, ReLU) with
32/64/128 filters, a 1x1 conv + batch norm, three decoder blocks (bilinear x2 upsampling,
concatenation with the matching encoder output, the last one with the input, separable convs
+ batch norm) and a 1x1 softmax over the 3 classes. Input: RGB scaled to [-1, 1].
Beyond the classic: the number of separable convs per decoder block, and an optional 1x1
convolution that narrows a block's input before its upsampling (upsampling and the depthwise
convolution after it cost per channel at the higher resolution), and an optional context level
that adds a wider view to the bottleneck and starts as a no-op, so a trained network can grow it.
Only keras.layers / keras.ops are used, so the model also runs on the JAX backend.
"""

from dataclasses import dataclass

import keras

NUM_CLASSES = 3


@dataclass(frozen=True)
class ModelConfig:
    input_size: tuple = (160, 160)          # (H, W), multiples of 2 ** depth
    encoder_filters: tuple = (32, 64, 128)  # one encoder block each; depth = len()
    bottleneck_filters: int = 128           # the 1x1 convolution
    decoder_filters: tuple = ()             # default: encoder_filters reversed
    kernel_size: int = 3
    decoder_convs: object = 2               # separable convs per decoder block: int or one each
    # Per decoder block: a 1x1 conv to this many channels before its upsampling (0: none).
    decoder_reduce: tuple = ()
    # A context level below the deepest encoder block (0: none): one more stride-2 block whose
    # output, projected by a zero-initialised 1x1 conv and upsampled, is added to the
    # bottleneck. Zero at the start, so a trained network keeps its function when it is added.
    context_filters: int = 0

    @classmethod
    def from_dict(cls, values):
        values = dict(values or {})
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model settings: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(cls.__dataclass_fields__)})")
        for key in ('input_size', 'encoder_filters', 'decoder_filters', 'decoder_reduce'):
            if key in values:
                values[key] = tuple(int(v) for v in values[key])
        convs = values.get('decoder_convs')
        if isinstance(convs, (list, tuple)):
            values['decoder_convs'] = tuple(int(v) for v in convs)
        config = cls(**values)
        config.validate()
        return config

    @property
    def decoder(self) -> tuple:
        return self.decoder_filters or tuple(reversed(self.encoder_filters))

    @property
    def convs_per_block(self) -> tuple:
        if isinstance(self.decoder_convs, tuple):
            return self.decoder_convs
        return (self.decoder_convs,) * len(self.decoder)

    @property
    def reduce_per_block(self) -> tuple:
        return self.decoder_reduce or (0,) * len(self.decoder)

    def validate(self):
        depth = len(self.encoder_filters)
        if depth < 1 or len(self.decoder) != depth:
            raise ValueError(f'need as many decoder as encoder blocks (>= 1), got '
                             f'{len(self.decoder)} and {depth}')
        levels = depth + (1 if self.context_filters else 0)
        if len(self.input_size) != 2 or any(s % (2 ** levels) for s in self.input_size):
            raise ValueError(f'input_size {self.input_size} must be (H, W), each a multiple '
                             f'of 2 ** {levels} = {2 ** levels} (encoder and context levels)')
        if self.context_filters < 0:
            raise ValueError(f'context_filters must be 0 (none) or positive, got '
                             f'{self.context_filters}')
        for key, values in (('decoder_convs', self.convs_per_block),
                            ('decoder_reduce', self.reduce_per_block)):
            if len(values) != depth:
                raise ValueError(f'{key} needs one value per decoder block ({depth}), got '
                                 f'{list(values)}')
        if any(c < 1 for c in self.convs_per_block):
            raise ValueError(f'decoder_convs must be at least 1, got {self.decoder_convs}')
        if any(r < 0 for r in self.reduce_per_block):
            raise ValueError(f'decoder_reduce must be 0 (none) or positive, got '
                             f'{list(self.decoder_reduce)}')
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f'kernel_size must be odd and positive, got {self.kernel_size}')


@keras.saving.register_keras_serializable(package='followme')
class BilinearUpsample2x(keras.layers.Layer):
    """Bilinear x2 upsampling on static shapes (exports to a single ONNX Resize)."""

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        return keras.ops.image.resize(inputs, (2 * height, 2 * width),
                                      interpolation='bilinear', antialias=False,
                                      data_format='channels_last')

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, 2 * height, 2 * width, channels)


def _separable_bn(x, filters, kernel_size, strides, name):
    x = keras.layers.SeparableConv2D(filters, kernel_size, strides=strides, padding='same',
                                     use_bias=False, name=f'{name}_sepconv')(x)
    x = keras.layers.BatchNormalization(name=f'{name}_bn')(x)
    return keras.layers.ReLU(name=f'{name}_relu')(x)


def build_model(config: ModelConfig = ModelConfig(), name='followme_fcn') -> keras.Model:
    """Build the FCN: input float32 (N, H, W, 3) in [-1, 1], output softmax (N, H, W, 3)."""
    config.validate()
    inputs = keras.Input((*config.input_size, 3), name='image')
    skips = [inputs]
    x = inputs
    for i, filters in enumerate(config.encoder_filters):
        x = _separable_bn(x, filters, config.kernel_size, 2, f'encoder{i + 1}')
        skips.append(x)
    x = keras.layers.Conv2D(config.bottleneck_filters, 1, use_bias=False, name='bottleneck')(x)
    x = keras.layers.BatchNormalization(name='bottleneck_bn')(x)
    if config.context_filters:
        context = _separable_bn(skips[-1], config.context_filters, config.kernel_size, 2,
                                'context')
        context = keras.layers.Conv2D(config.bottleneck_filters, 1, use_bias=False,
                                      kernel_initializer='zeros', name='context_project')(context)
        context = BilinearUpsample2x(name='context_up')(context)
        x = keras.layers.Add(name='context_add')([x, context])
    x = keras.layers.ReLU(name='bottleneck_relu')(x)
    skips.pop()  # the deepest encoder output feeds the bottleneck, not a skip
    blocks = zip(config.decoder, config.convs_per_block, config.reduce_per_block)
    for i, (filters, convs, reduce) in enumerate(blocks):
        if reduce:
            x = keras.layers.Conv2D(reduce, 1, use_bias=False, name=f'decoder{i + 1}_reduce')(x)
            x = keras.layers.BatchNormalization(name=f'decoder{i + 1}_reduce_bn')(x)
            x = keras.layers.ReLU(name=f'decoder{i + 1}_reduce_relu')(x)
        x = BilinearUpsample2x(name=f'decoder{i + 1}_up')(x)
        x = keras.layers.Concatenate(name=f'decoder{i + 1}_concat')([x, skips.pop()])
        for j in range(convs):
            x = _separable_bn(x, filters, config.kernel_size, 1, f'decoder{i + 1}_{j + 1}')
    outputs = keras.layers.Conv2D(NUM_CLASSES, 1, activation='softmax', name='classes')(x)
    return keras.Model(inputs, outputs, name=name)
