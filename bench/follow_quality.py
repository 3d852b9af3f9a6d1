"""
Follow quality over every shipped scenario: our loop next to the perfect-perception reference.

Runs `followme-run` (simulator + perception + control, the same as `make run`) once per
scenario in a fresh process, collects each summary.json and prints, and optionally writes, a
Markdown table. The figures in docs/simulator.md and README.md come from this script.

    PYTHONPATH=$PWD .venv/bin/python bench/follow_quality.py --output runs/quality
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split('\n\n')[0])
    parser.add_argument('--output', type=Path, default=Path('runs/quality'),
                        help='one folder per scenario is written here (default runs/quality)')
    parser.add_argument('--model', type=Path, help='ONNX model (default: the shipped model)')
    parser.add_argument('--scenarios', nargs='*', help='subset of scenarios (default: all)')
    parser.add_argument('--markdown', type=Path, help='also write the table to this file')
    return parser.parse_args(argv)


def run_scenario(name, folder, model):
    cmd = [sys.executable, '-m', 'followme_common.runner', '--no-progress', '--output',
           str(folder), '--set', f'sim_node.scenario:={name}', '--log-level', 'warn']
    if model is not None:
        cmd += ['--model', str(model)]
    summary = folder / 'summary.json'
    summary.unlink(missing_ok=True)  # never report an earlier run's figures
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(summary.read_text())


def cell(metrics, key, fmt):
    value = metrics.get(key) if metrics else None
    return '-' if value is None else fmt.format(value)


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
    summaries = {}
    for index, name in enumerate(names, 1):
        print(f'[{index}/{len(names)}] {name}', flush=True)
        summaries[name] = run_scenario(name, args.output / name, args.model)
    text = table(summaries)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + '\n')


if __name__ == '__main__':
    main()
