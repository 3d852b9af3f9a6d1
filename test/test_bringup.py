"""The launch file, checked structurally (no launch system here), and the runner beside it."""

import ast
import re

from conftest import REPO
from followme_common import bringup, paths, runner
import pytest

LAUNCH = REPO / 'launch' / 'follow.launch.py'
REQUIRED_ARGUMENTS = {'sim', 'model', 'params_file', 'namespace', 'image', 'depth',
                      'camera_info', 'use_sim_time', 'rviz', 'log_level'}


def launch_arguments():
    """(name, description) of each entry of the launch file's ARGUMENTS table."""
    tree = ast.parse(LAUNCH.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == 'ARGUMENTS':
            return [(ast.literal_eval(entry.elts[0]), ast.literal_eval(entry.elts[2]))
                    for entry in node.value.elts]
    raise AssertionError('launch file has no ARGUMENTS table')


def console_scripts():
    text = (REPO / 'setup.py').read_text()
    return dict(re.findall(r"'([\w-]+) = ([\w.]+:\w+)'", text))


def test_launch_arguments_are_complete_and_described():
    arguments = launch_arguments()
    names = [name for name, _ in arguments]
    assert REQUIRED_ARGUMENTS <= set(names)
    assert len(names) == len(set(names))
    for name, description in arguments:
        assert len(description) > 10, f'launch argument {name} needs a description'


def test_launch_file_starts_nodes_from_the_shared_list():
    source = LAUNCH.read_text()
    assert 'bringup.nodes_for(' in source
    assert 'executable=spec.name' in source


def test_every_executable_is_a_console_script_of_an_existing_function():
    scripts = console_scripts()
    for spec in bringup.NODES:
        assert spec.name in scripts, f'{spec.name} missing from setup.py console_scripts'
    for name, target in scripts.items():
        module, function = target.split(':')
        path = REPO / (module.replace('.', '/') + '.py')
        assert path.is_file(), f'{name}: {path} does not exist'
        assert f'def {function}(' in path.read_text(), f'{name}: no {function}() in {path}'


def test_node_classes_are_where_the_list_says():
    for spec in bringup.NODES:
        module, cls = spec.target.split(':')
        path = REPO / (module.replace('.', '/') + '.py')
        assert f'class {cls}(' in path.read_text(), f'{spec.target} not found'


def test_files_the_launch_file_reads_are_installed_by_setup():
    source = LAUNCH.read_text()
    setup = (REPO / 'setup.py').read_text()
    for folder, name in re.findall(r"os\.path\.join\(SHARE, '(\w+)', '([\w.]+)'\)", source):
        assert (REPO / folder / name).is_file() or folder == 'models', f'{folder}/{name} missing'
        assert f"share('{folder}'" in setup, f'{folder}/ is not in data_files'
    assert (REPO / 'resource' / 'followme').is_file()


def test_runner_offers_every_launch_argument_but_rviz():
    options = {action.dest for action in runner.build_parser()._actions}
    for name, _ in launch_arguments():
        if name != 'rviz':
            assert name in options, f'followme-run has no option for launch argument {name}'


def test_runner_fastdds_profile_is_the_package_file_and_checked(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(bringup.FASTDDS_PROFILE_VARIABLE, raising=False)
    shipped = paths.share_dir() / 'config' / 'fastdds.xml'
    assert runner.parse_args([]).fastdds_profile == str(shipped)
    assert bringup.fastdds_environment('') == {}
    assert runner.parse_args(['--fastdds-profile', '']).fastdds_profile == ''
    with pytest.raises(SystemExit):
        runner.parse_args(['--fastdds-profile', str(tmp_path / 'missing.xml')])
    assert 'Fast DDS profile' in capsys.readouterr().err


def test_nodes_for_each_sim_choice():
    assert [s.name for s in bringup.nodes_for('embedded')][0] == 'sim_node'
    assert 'unity_bridge' in [s.name for s in bringup.nodes_for('unity')]
    assert {s.name for s in bringup.nodes_for('none')} == {'perception_node', 'control_node'}


def test_runner_stops_on_sigterm():
    """SIGTERM: rclpy shuts the context down, and the runner must then exit, not wait on."""
    import os
    import signal
    import subprocess
    import sys
    import time
    process = subprocess.Popen(
        [sys.executable, '-m', 'followme_common.runner', '--sim', 'none'],
        cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    try:
        deadline = time.monotonic() + 60.0
        lines = []
        while time.monotonic() < deadline:
            lines.append(process.stdout.readline())
            if 'followme-run: running' in lines[-1]:  # printed once the executor spins
                break
        else:
            raise AssertionError('runner did not start: ' + ''.join(lines))
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20.0)
    finally:
        process.kill()
    assert process.returncode == 1, ''.join(lines) + output
    assert 'shut down by a signal' in output


@pytest.mark.parametrize('module, ros_args, message', [
    ('followme_perception.node', ['-p', 'model_path:=/nonexistent.onnx'],
     'perception_node: model file /nonexistent.onnx not found'),
    ('followme_control.node', ['-p', 'follow_distance:=4'],
     'write floating-point values with a decimal point'),
    ('followme_control.unity_bridge.node', ['-p', 'mode:=bogus'],
     'unity_bridge: Invalid parameter value (bogus)'),
])
def test_node_scripts_exit_1_with_a_message_on_bad_start_up(module, ros_args, message):
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, '-m', module, '--ros-args', *ros_args], cwd=REPO,
                          env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in done.stderr
