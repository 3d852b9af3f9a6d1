"""
Hyper-parameter search with Optuna on a subset of the data, bounded by trials and time.

    python -m training.search --config training/configs/shipped.yaml --trials 12

Each trial is a short training run (training.train) on a seeded subset; its objective is the
best validation score of that run. The study, every trial and the best config (a YAML that
training.train accepts as is) are written to training_runs/search-<time>/.
"""

import argparse
import copy
import json
from pathlib import Path
import time

import yaml

REPO = Path(__file__).resolve().parent.parent


def suggest(trial, base: dict) -> dict:
    """Return one trial's config: the base config with the searched settings drawn."""
    config = copy.deepcopy(base)
    train = config['train']
    train['learning_rate'] = trial.suggest_float('learning_rate', 3e-4, 1e-2, log=True)
    train['batch_size'] = trial.suggest_categorical('batch_size', [8, 16, 32])
    train['hero_weight'] = trial.suggest_float('hero_weight', 1.0, 4.0)
    train['dice_weight'] = trial.suggest_float('dice_weight', 0.0, 1.0)
    train['small_hero_repeats'] = trial.suggest_int('small_hero_repeats', 1, 3)
    augment = dict(config.get('augment') or {})
    augment['scale'] = [trial.suggest_float('scale_min', 0.5, 1.0), 1.3]
    config['augment'] = augment
    return config


def search(base: dict, trials: int, timeout_minutes: float, output: Path, seed=42):
    import optuna

    from training.train import ConfigError, train

    # The study lives in memory, so it cannot go on in an old folder, and a trial folder left
    # unfinished there would make training refuse it (it could be resumed) halfway through.
    if output.is_dir() and any(output.iterdir()):
        raise ConfigError(f'{output} is not empty (an earlier study?): a study cannot be '
                          'continued; give a new --output, or remove that folder')
    output.mkdir(parents=True, exist_ok=True)

    def objective(trial):
        config = suggest(trial, base)
        run_dir = train(config, output, f'trial{trial.number:03d}')
        best_file = run_dir / 'best.json'
        if not best_file.is_file():
            raise optuna.TrialPruned('the trial stopped before its first epoch ended')
        return json.loads(best_file.read_text())['val_score']

    study = optuna.create_study(direction='maximize', study_name=output.name,
                                sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials, timeout=60.0 * timeout_minutes or None,
                   show_progress_bar=True)
    completed = [t for t in study.trials if t.value is not None]
    summary = {
        'trials': [{'number': t.number, 'value': t.value, 'params': t.params,
                    'state': t.state.name} for t in study.trials],
    }
    if completed:
        best = study.best_trial
        summary['best'] = {'number': best.number, 'value': best.value, 'params': best.params}
        best_config = suggest(optuna.trial.FixedTrial(best.params), base)
        best_config['name'] = f"{base['name']}-searched"
        for key in ('max_train_frames', 'max_val_frames', 'max_minutes'):
            best_config['train'][key] = 0
        (output / 'best_config.yaml').write_text(yaml.safe_dump(best_config, sort_keys=False))
    (output / 'study.json').write_text(json.dumps(summary, indent=2) + '\n')
    return summary


def main(argv=None):
    from training.data import DataError
    from training.train import ConfigError, load_config
    parser = argparse.ArgumentParser(
        description='Search learning rate, batch size, loss weights and augmentation with '
                    'Optuna: short training runs on a subset, bounded by trials and time.')
    parser.add_argument('--config', required=True, help='base experiment YAML')
    parser.add_argument('--trials', type=int, default=12, help='default: %(default)s')
    parser.add_argument('--timeout-minutes', type=float, default=60.0,
                        help='stop starting trials after this long (default: %(default)s)')
    parser.add_argument('--train-frames', type=int, default=800,
                        help='training subset size (default: %(default)s)')
    parser.add_argument('--val-frames', type=int, default=300,
                        help='validation subset size (default: %(default)s)')
    parser.add_argument('--epochs', type=int, default=8, help='per trial (default: %(default)s)')
    parser.add_argument('--steps-per-epoch', type=int, default=100,
                        help='per trial (default: %(default)s)')
    parser.add_argument('--output', help='study folder (default: training_runs/search-<time>)')
    args = parser.parse_args(argv)
    if args.trials < 1 or args.timeout_minutes <= 0:
        parser.error('--trials must be >= 1 and --timeout-minutes > 0')
    output = Path(args.output) if args.output else (
        REPO / 'training_runs' / f"search-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        base = load_config(args.config)
        base['train'].update({'epochs': args.epochs, 'steps_per_epoch': args.steps_per_epoch,
                              'max_train_frames': args.train_frames,
                              'max_val_frames': args.val_frames, 'max_minutes': 0})
        summary = search(base, args.trials, args.timeout_minutes, output)
    except (ConfigError, DataError) as err:
        parser.exit(2, f'error: {err}\n')
    if 'best' in summary:
        print(f"best trial {summary['best']['number']}: val_score "
              f"{summary['best']['value']:.4f} {summary['best']['params']}")
        print(f'best config: {output / "best_config.yaml"}')
    else:
        print('no trial finished')


if __name__ == '__main__':
    main()
