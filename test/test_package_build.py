"""colcon builds the package here, and the ament index then finds what it installed."""

import os
from pathlib import Path
import shutil
import subprocess
import sys

from conftest import REPO
from followme_common import bringup
import pytest

COLCON = Path(sys.executable).parent / 'colcon'


@pytest.fixture(scope='module')
def install(tmp_path_factory):
    if not COLCON.exists():
        pytest.skip('colcon is not installed in this environment (make test installs it)')
    base = tmp_path_factory.mktemp('colcon')
    result = subprocess.run(
        [str(COLCON), '--log-base', str(base / 'log'), 'build', '--paths', str(REPO),
         '--build-base', str(base / 'build'), '--install-base', str(base / 'install')],
        cwd=base, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f'colcon build failed:\n{result.stdout}\n{result.stderr}'
    yield base / 'install'
    shutil.rmtree(base, ignore_errors=True)


def test_ament_index_finds_share_folder(install):
    env = dict(os.environ, AMENT_PREFIX_PATH=f'{install / "followme"}{os.pathsep}'
               f'{os.environ.get("AMENT_PREFIX_PATH", "")}')
    out = subprocess.run(
        [sys.executable, '-c', 'from ament_index_python.packages import '
         "get_package_share_directory as g; print(g('followme'))"],
        env=env, capture_output=True, text=True, check=True, cwd='/').stdout.strip()
    share = Path(out)
    assert share == install / 'followme' / 'share' / 'followme'
    assert (share / 'launch' / 'follow.launch.py').is_file()
    assert (share / 'config' / 'followme.yaml').is_file()
    assert (share / 'rviz' / 'followme.rviz').is_file()
    assert (share / 'models').is_dir()
    for model in (REPO / 'models').glob('*'):
        assert (share / 'models' / model.name).is_file(), f'{model.name} not installed'


def test_every_node_has_an_installed_executable(install):
    lib = install / 'followme' / 'lib' / 'followme'
    for spec in bringup.NODES:
        assert (lib / spec.name).is_file(), f'no executable for {spec.name}'
