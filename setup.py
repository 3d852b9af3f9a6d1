from glob import glob
import os

from setuptools import find_packages, setup

PACKAGE = 'followme'


def share(folder, pattern='*'):
    return (os.path.join('share', PACKAGE, folder),
            [f for f in glob(os.path.join(folder, pattern)) if os.path.isfile(f)])


setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*', 'training', 'training.*', 'bench']),
    package_data={'followme_sim': ['scenarios/*.yaml', 'assets/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
        share('launch', '*.launch.py'),
        share('config', '*.yaml'),
        share('config', '*.xml'),
        share('rviz', '*.rviz'),
        share('models'),
    ],
    install_requires=['setuptools'],
    zip_safe=True,
    maintainer='followme developers',
    maintainer_email='followme@users.noreply.github.com',
    description='A drone follows the hero through a crowd: FCN segmentation, control, '
                'simulators.',
    license='MIT',
    entry_points={
        'console_scripts': [
            'perception_node = followme_perception.node:main',
            'control_node = followme_control.node:main',
            'sim_node = followme_sim.node:main',
            'unity_bridge = followme_control.unity_bridge.node:main',
            'replay = followme_common.bags.replay:main',
            'record = followme_common.bags.record:main',
            'bag_export = followme_common.bags.export:main',
            'followme-run = followme_common.runner:main',
        ],
    },
)
