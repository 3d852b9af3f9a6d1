"""
Is the input pipeline the bottleneck? Training steps/s fed by it vs by cached tensors.

    PYTHONPATH=$PWD python bench/bench_input_pipeline.py --steps 30

Measures, with the config's model, batch size and augmentation:
  1. the pipeline alone: batches per second (decode cache filled, shuffle, augment, prefetch);
  2. training steps per second fed by the real pipeline;
  3. the same number of training steps on batches already sitting in memory as tensors.
If 2 is close to 3, the data path is not the bottleneck.
"""

import argparse
import time

from tqdm import tqdm

from training.augment import AugmentConfig, make_augment_fn
from training.data import DataError, find_all_pairs, materialize, training_dataset
from training.model import build_model, ModelConfig
from training.train import ConfigError, data_roots, load_config, make_loss, subset


def steps_per_second(step, batches, label) -> float:
    start = time.perf_counter()
    for batch in tqdm(batches, desc=label, unit='step', leave=False):
        step(batch)
    return len(batches) / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Training steps/s fed by the tf.data pipeline vs by cached tensors.')
    parser.add_argument('--config', default='training/configs/shipped.yaml',
                        help='experiment YAML (default: %(default)s)')
    parser.add_argument('--steps', type=int, default=30, help='timed steps (default: %(default)s)')
    parser.add_argument('--frames', type=int, default=1000,
                        help='training frames to load (default: %(default)s)')
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        settings = config['train']
        model_config = ModelConfig.from_dict(config['model'])
        pairs = subset(find_all_pairs(data_roots(config['data']['train'], 'train')),
                       args.frames, int(config['seed']))
        frames = materialize(pairs, model_config.input_size, 'decoding')
    except (ConfigError, DataError) as err:
        parser.exit(2, f'error: {err}\n')
    dataset = training_dataset(
        frames, int(settings['batch_size']), int(config['seed']),
        make_augment_fn(AugmentConfig.from_dict(config['augment'])),
        int(settings['small_hero_pixels']), int(settings['small_hero_repeats']))

    iterator = iter(dataset)
    next(iterator)  # warm-up: fills the prefetch buffer and traces the map functions
    start = time.perf_counter()
    for _ in tqdm(range(args.steps * 3), desc='pipeline only', unit='batch', leave=False):
        next(iterator)
    pipeline_rate = 3 * args.steps / (time.perf_counter() - start)

    model = build_model(model_config)
    model.compile(optimizer='adam', loss=make_loss(settings['hero_weight'],
                                                   settings['dice_weight']))
    cached = [next(iterator) for _ in range(args.steps)]
    model.train_on_batch(*cached[0])  # warm-up: traces the train step

    def real_step(_):
        model.train_on_batch(*next(iterator))

    real_rate = steps_per_second(real_step, list(range(args.steps)), 'real pipeline')
    cached_rate = steps_per_second(lambda batch: model.train_on_batch(*batch), cached,
                                   'cached tensors')
    height, width = model_config.input_size
    print(f"batch {settings['batch_size']}, {height}x{width}, {args.steps} steps")
    print(f'pipeline alone:            {pipeline_rate:8.2f} batches/s')
    print(f'training, real pipeline:   {real_rate:8.3f} steps/s')
    print(f'training, cached tensors:  {cached_rate:8.3f} steps/s')
    print(f'real / cached:             {real_rate / cached_rate:8.3f}')


if __name__ == '__main__':
    main()
