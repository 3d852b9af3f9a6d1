"""
Follow quality over every shipped scenario: our loop next to the perfect-perception reference.

Runs `followme-run` (simulator + perception + control, the same as `make run`) once per
scenario and world seed in a fresh process, collects each summary.json and prints, and
optionally writes, a Markdown table, with each run checked against the follow goals. The
figures in docs/simulator.md and README.md come from this script.

    PYTHONPATH=$PWD .venv/bin/python bench/follow_quality.py --output runs/quality

One seed (0, the default) is one world per scenario, and one hero lost to a stranger decides
a scenario's figures; `--seeds 0 1 2 3 4` compares models over five worlds each. Give two
runs at once their own ROS_DOMAIN_ID: on one domain their simulators hear each other.
"""

import argparse
import json
from pathlib import Path
import subprocess
import sys

from followme_sim import scenario

COLUMNS = (
    ('hero_in_view_pct', 'in view %', '{:.1f}'),
    ('hero_seen_pct', 'seen %', '{:.1f}'),
    ('distance_rms_error_m', 'RMS dist. err. m', '{:.2f}'),
    ('reacquire_max_s', 're-acquire s', '{:.1f}'),
    ('max_cmd_speed_mps', 'max speed m/s', '{:.2f}'),
    ('jerk_rms', 'jerk RMS m/s³', '{:.2f}'),
    ('collisions', 'collisions', '{:d}'),
)

# The follow goals (README, docs/simulator.md): hero in view at least 95 % of the time, RMS
# distance error at most 1 m and at most 1.2 times that of perfect perception.
MIN_IN_VIEW_PCT = 95.0
MAX_DISTANCE_ERROR_M = 1.0
MAX_ERROR_RATIO = 1.2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n\n')[0])
    parser.add_argument('--output', type=Path, default=Path('runs/quality'),
                        help='one folder per scenario is written here (default runs/quality)')
    parser.add_argument('--model', type=Path, help='ONNX model (default: the shipped model)')
    parser.add_argument('--scenarios', nargs='*', help='subset of scenarios (default: all)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0],
                        help='world seeds to run each scenario with (default: 0)')
    parser.add_argument('--set', action='append', default=[], metavar='NODE.PARAM:=VALUE',
                        help="a parameter for every run, as followme-run's --set takes it "
                             '(repeatable), e.g. perception_node.min_hero_pixels:=100')
    parser.add_argument('--markdown', type=Path, help='also write the table to this file')
    return parser.parse_args(argv)


def run_scenario(name, seed, folder, model, settings=()):
    cmd = [sys.executable, '-m', 'followme_common.runner', '--no-progress', '--output',
           str(folder), '--set', f'sim_node.scenario:={name}', '--set', f'sim_node.seed:={seed}',
           '--log-level', 'warn']
    for setting in settings:
        cmd += ['--set', setting]
    if model is not None:
        cmd += ['--model', str(model)]
    summary = folder / 'summary.json'
    summary.unlink(missing_ok=True)  # never report an earlier run's figures
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def cell(metrics, key, fmt):
    value = metrics.get(key) if metrics else None
    return '-' if value is None else fmt.format(value)


def meets_goals(summary):
    ours = summary['our_loop']
    ratio = (summary['ratio_to_reference'] or {}).get('distance_rms_error_m')
    return (ours['hero_in_view_pct'] >= MIN_IN_VIEW_PCT
            and ours['distance_rms_error_m'] <= MAX_DISTANCE_ERROR_M
            and ratio is not None and ratio <= MAX_ERROR_RATIO)


def goal_summary(summaries):
    met = [label for label, summary in summaries.items() if meets_goals(summary)]
    missed = [label for label in summaries if label not in met]
    errors = [summary['our_loop']['distance_rms_error_m'] for summary in summaries.values()]
    return (f'follow goals met in {len(met)} of {len(summaries)} runs'
            + (f" (missed: {', '.join(missed)})" if missed else '')
            + f'; mean RMS distance error {sum(errors) / len(errors):.2f} m')


def table(summaries):
    header = '| scenario | run | ' + ' | '.join(title for _, title, _ in COLUMNS) + ' |'
    lines = [header, '|' + '---|' * (len(COLUMNS) + 2)]
    for name, summary in summaries.items():
        for run, label in (('our_loop', 'our loop'), ('reference', 'reference')):
            lines.append(f'| {name} | {label} | ' + ' | '.join(
                cell(summary[run], key, fmt) for key, _, fmt in COLUMNS) + ' |')
        ratio = summary['ratio_to_reference'] or {}
        lines.append(f'| {name} | ratio | ' + ' | '.join(
            '-' if ratio.get(key) is None else f'{ratio[key]:.2f}' for key, _, _ in COLUMNS)
            + ' |')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    names = args.scenarios or scenario.available()
    runs = [(name, seed) for name in names for seed in args.seeds]
    summaries = {}
    # Seed 0 alone keeps the table's and the folders' names as they always were.
    plain_names = args.seeds == [0]
    for index, (name, seed) in enumerate(runs, 1):
        label = name if plain_names else f'{name} (seed {seed})'
        folder = args.output / (name if plain_names else f'{name}_seed{seed}')
        print(f'[{index}/{len(runs)}] {label}', flush=True)
        summaries[label] = run_scenario(name, seed, folder, args.model, args.set)
    text = table(summaries) + '\n\n' + goal_summary(summaries)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + '\n')


if __name__ == '__main__':
    main()
