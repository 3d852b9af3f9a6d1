"""An interrupted run goes on from its last finished epoch (training.train --resume)."""

import filecmp
import json

import keras
import pytest
from test_training_finetune import tiny_config
from training import train

STEPS, EPOCHS, LEARNING_RATE = 2, 3, 0.01


@pytest.fixture
def stopped_run(tmp_path, capsys):
    """Train a cosine-schedule run that its time limit stops after the first epoch."""
    config = tiny_config(tmp_path, epochs=EPOCHS, steps_per_epoch=STEPS,
                         learning_rate=LEARNING_RATE, lr_schedule='cosine',
                         keep_epoch_weights=True, max_minutes=1e-9)
    run_dir = train.train(config, tmp_path / 'runs', 'stopped')
    assert f'stopped after epoch 1 of 3: `python -m training.train --resume {run_dir}`' \
        in capsys.readouterr().out
    return config, run_dir


def schedule_at(step):
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, STEPS * EPOCHS)
    return float(schedule(step))


def test_a_resumed_run_goes_on_where_it_stopped(stopped_run):
    _, run_dir = stopped_run
    assert train.epochs_done(run_dir) == 1
    first_epoch = run_dir / 'first_epoch.weights.h5'
    first_epoch.write_bytes((run_dir / 'epochs' / 'epoch_01.weights.h5').read_bytes())

    # The command, as a user would run it; --max-minutes lifts the limit that stopped it.
    train.main(['--resume', str(run_dir), '--max-minutes', '0'])
    history = train.read_history(run_dir, EPOCHS)
    assert [row['epoch'] for row in history] == [1, 2, 3]
    assert train.epochs_done(run_dir) == EPOCHS
    # The optimizer's step count came back with its state: the schedule goes on, it does not
    # start again (a fresh optimizer would log epoch 2 at the rate of epoch 1).
    for row in history:
        assert row['learning_rate'] == pytest.approx(schedule_at(row['epoch'] * STEPS),
                                                     abs=1e-7)
    assert filecmp.cmp(first_epoch, run_dir / 'epochs' / 'epoch_01.weights.h5', shallow=False)
    assert (run_dir / 'epochs' / 'epoch_03.weights.h5').is_file()
    best = max(history, key=lambda row: row['val_score'])
    assert json.loads((run_dir / 'best.json').read_text())['epoch'] == best['epoch']


def test_a_finished_run_has_nothing_to_resume(stopped_run):
    config, run_dir = stopped_run
    config['train']['max_minutes'] = 0.0
    train.train(config, run_dir.parent, run_dir.name, resume=True)
    with pytest.raises(train.ConfigError, match='all 3 epochs are done'):
        train.train(config, run_dir.parent, run_dir.name, resume=True)


def test_a_finished_run_folder_can_be_trained_again(stopped_run):
    """Its backup must not make the new run start as finished."""
    config, run_dir = stopped_run
    config['train'].update(max_minutes=0.0, epochs=2)
    train.train(config, run_dir.parent, 'again')
    train.train(config, run_dir.parent, 'again')
    assert [row['epoch'] for row in train.read_history(run_dir.parent / 'again', 2)] == [1, 2]


def test_an_unfinished_run_is_not_overwritten_by_a_new_one(stopped_run):
    config, run_dir = stopped_run
    with pytest.raises(train.ConfigError, match='holds an unfinished run: --resume'):
        train.train(config, run_dir.parent, run_dir.name)


def test_resume_refuses_other_data(stopped_run, tmp_path):
    config, run_dir = stopped_run
    sorted((tmp_path / 'train' / 'images').iterdir())[0].write_bytes(b'changed')
    with pytest.raises(train.ConfigError, match='the train data is not what the run started'):
        train.train(config, run_dir.parent, run_dir.name, resume=True)


def test_resume_command_errors(stopped_run, tmp_path, capsys):
    _, run_dir = stopped_run
    with pytest.raises(SystemExit):
        train.main(['--resume', str(run_dir), '--epochs', '5'])
    assert '--epochs cannot change it' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(['--resume', str(tmp_path / 'nowhere')])
    assert 'no config.yaml there' in capsys.readouterr().err
    (tmp_path / 'early').mkdir()
    (tmp_path / 'early' / 'config.yaml').write_text((run_dir / 'config.yaml').read_text())
    with pytest.raises(SystemExit):
        train.main(['--resume', str(tmp_path / 'early')])
    assert 'no finished epoch is backed up there' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(['--config', 'x.yaml', '--resume', str(run_dir)])
