"""
Benchmark perception_node: stage timings, overhead, 30 Hz throughput, and Keras side by side.

Everything goes through the real node over real DDS (Fast DDS on loopback), in three
processes: perception_node on its own, as `ros2 run` starts it; this bench, playing the camera;
a viewer subscribed to the images, as rviz would be.
1. stages: frames at 256x256 and 640x480, published one at a time, so none is dropped; the
   node's own per-frame timings (convert, preprocess, infer, postprocess, publish), read from
   its /diagnostics (medians of its last 100 frames), give the overhead: everything but
   inference as a share of inference. The round trip is image published -> detection
   received here;
2. throughput: 640x480 rgb8 at 30 Hz for a while; frames in, processed, dropped, and the
   latency (image stamp -> detection summary received) early and late in the run;
3. classic: the same network run per frame with Keras `model.predict` (the classic approach)
   and with ONNX Runtime, side by side, on the same frames, in turns: a block of frames each,
   several rounds over, so that a slow stretch of the machine falls on both alike; each round
   gives Keras against the node's model, and the median of those ratios is reported with
   their range;
4. overlay cost: 640x480 at 30 Hz again, with a fresh node each time, nobody viewing the
   overlay, the overlay viewed with every frame, viewed with `overlay_max_rate` 10 Hz, and only
   its JPEG (`mask_overlay/compressed`, as rviz on another machine) viewed: the worker's CPU
   time beyond inference per frame, the mean of the last 100 frames (diagnostics
   `beyond_infer_cpu_mean_ms`), against the median inference time. A mean, not a median: a
   cost paid on every third frame is invisible in a median. (The process's whole CPU time is
   no use here: ONNX Runtime's threads spin between frames, several times the overlay's cost.)

The network is training.model.build_model() exported to ONNX with tf2onnx (random weights:
timing does not depend on them) with the architecture and input size of the --model file when
one is given (from its `followme.architecture` metadata; the node runs that file in stages
1-2), else the classic network at 160x160.
TensorFlow is imported here only; runtime code never imports it.
"""

import argparse
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
NAMESPACE = '/bench'
NODE_NAME = 'perception_node'
DIAGNOSTICS_PERIOD_S = 0.2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog='\n'.join(__doc__.strip().splitlines()[1:]))
    parser.add_argument('--model', type=Path, default=None,
                        help='ONNX model for stages and throughput (default: the classic '
                             'architecture exported with random weights)')
    parser.add_argument('--frames', type=int, default=100,
                        help='frames per stage run, at least 100 (the node reports the '
                             'medians of its last 100 frames)')
    parser.add_argument('--seconds', type=float, default=15.0, help='length of the 30 Hz run')
    parser.add_argument('--rate', type=float, default=30.0, help='input rate of that run (Hz)')
    parser.add_argument('--size', default='640x480', type=_size, metavar='WxH',
                        help='camera size of the throughput and overlay cost runs (default '
                             '640x480); another size also gets its own stage run')
    parser.add_argument('--providers', default=None, metavar='P1,P2,...',
                        help="the node's providers parameter, comma-separated (default: the "
                             "node's own default list); the node's model is timed against "
                             'Keras with the providers the node really got')
    parser.add_argument('--encoding', default='rgb8', choices=CAMERA_ENCODINGS,
                        help='encoding of the camera frames sent (default rgb8); the node '
                             "converts the others to RGB in its convert stage; 'jpeg' sends "
                             'CompressedImage (quality 80) on image/compressed, with the '
                             "node's image_transport compressed")
    parser.add_argument('--classic-frames', type=int, default=20,
                        help='frames per block of the Keras vs ONNX Runtime comparison')
    parser.add_argument('--classic-rounds', type=int, default=8,
                        help='rounds of that comparison: each contender runs one block per '
                             'round, in turns')
    parser.add_argument('--skip-classic', action='store_true', help='skip the Keras comparison')
    parser.add_argument('--skip-overlay-cost', action='store_true',
                        help='skip the overlay cost runs (three more 30 Hz runs)')
    args = parser.parse_args(argv)
    from followme_perception.node import TIMING_WINDOW
    if args.classic_frames < 1 or args.classic_rounds < 1:
        parser.error('--classic-frames and --classic-rounds must be at least 1')
    if args.frames < TIMING_WINDOW:
        parser.error(f'--frames must be at least {TIMING_WINDOW}: the node reports the medians '
                     f'of its last {TIMING_WINDOW} frames')
    return args


def node_model_architecture(path) -> dict:
    """
    Return the training.model.ModelConfig fields of a followme ONNX model, from its metadata.

    Exports since the architecture went into the metadata (`followme.architecture`) give the
    whole network; older ones only their input size, with the classic layers assumed.
    """
    import json

    import onnxruntime as ort

    from followme_perception.segmenter import read_model_info
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    info = read_model_info(path, session)
    stored = session.get_modelmeta().custom_metadata_map.get('followme.architecture')
    architecture = json.loads(stored) if stored else {}
    architecture['input_size'] = [info.height, info.width]
    return architecture


def export_random_weights_model(folder, architecture=None):
    """Build the FCN (training.model; classic by default), random weights, export to ONNX."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    from training.export import convert, set_metadata
    from training.model import build_model, ModelConfig
    config = ModelConfig.from_dict(architecture or {})
    model = build_model(config)
    proto = convert(model, config.input_size)  # as training.export writes it, graph rewrites too
    set_metadata(proto, {'followme.input_size': '%d,%d' % config.input_size,
                         'followme.input_scale': repr(1 / 127.5), 'followme.input_offset': '-1.0',
                         'followme.classes': 'background,others,hero',
                         'followme.training_data': 'none (random weights, for timing only)'})
    path = Path(folder) / 'classic_random.onnx'
    path.write_bytes(proto.SerializeToString())
    return model, path


def _size(text):
    try:
        width, height = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not WIDTHxHEIGHT, e.g. 1280x720') from None
    if width < 1 or height < 1:
        raise argparse.ArgumentTypeError(f'{text!r}: width and height must be positive')
    return height, width


def frames(height, width, count, seed=0):
    """Frames of the shared data set, resized, when it is here; else random noise frames."""
    import cv2
    folder = REPO.parent / 'shared' / 'data' / 'udacity_followme' / 'train' / 'images'
    files = sorted(folder.glob('*.jpeg'))[:count] if folder.is_dir() else []
    if files:
        return [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (width, height),
                           interpolation=cv2.INTER_LINEAR) for f in files]
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width, 3), np.uint8) for _ in range(count)]


VIEWER = """
import sys
import rclpy
from sensor_msgs.msg import CompressedImage, Image
rclpy.init()
node = rclpy.create_node('bench_viewer', namespace=sys.argv[1])
for topic in sys.argv[2:]:
    kind = CompressedImage if topic.endswith('/compressed') else Image
    node.create_subscription(kind, topic, lambda _msg: None, 1)
try:
    rclpy.spin(node)
except BaseException:
    pass
"""


class Viewer:
    """A separate process subscribed to image topics, standing in for rviz."""

    def __init__(self, topics):
        self.process = subprocess.Popen([sys.executable, '-c', VIEWER, NAMESPACE, *topics])

    def close(self):
        _stop(self.process)


class Rig:
    """
    perception_node in its own process, as `ros2 run` starts it; a probe node here.

    The probe plays the camera (image), reads hero_detection for latency, and reads the
    node's /diagnostics for its own per-stage timings and frame counters. Nothing of the
    bench (its threads, TensorFlow, the probe's callbacks) shares the node's process.
    """

    def __init__(self, model_path, parameters=()):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import CompressedImage, Image
        from std_msgs.msg import Float64MultiArray

        # JPEG frames (--encoding jpeg) go where image_transport's compressed transport puts them.
        compressed = ('image_transport', 'compressed') in parameters
        self.node_process = subprocess.Popen([
            sys.executable, '-m', 'followme_perception.node', '--ros-args',
            '-r', f'__ns:={NAMESPACE}', '-p', f'model_path:={model_path}',
            '-p', f'diagnostics_period:={DIAGNOSTICS_PERIOD_S}',
            *[arg for name, value in parameters for arg in ('-p', f'{name}:={value}')]])
        self.probe = rclpy.create_node('bench_probe', namespace=NAMESPACE)
        self.pub = self.probe.create_publisher(
            CompressedImage if compressed else Image,
            'image/compressed' if compressed else 'image',
            QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
        self.arrivals = {}   # image stamp (ns) -> wall time the detection arrived
        self.probe.create_subscription(Float64MultiArray, 'hero_detection', self._on_detection,
                                       100)
        self._report = None  # the node's newest diagnostics values
        self._report_lock = threading.Lock()
        self.probe.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                       10)
        # Listen to the images too, so the node really fills and publishes them: from another
        # process, as rviz would.
        self.viewer = Viewer(('mask', 'mask_overlay'))
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.probe)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        try:
            self._wait_until_up()
        except BaseException:
            self.close()
            raise

    def _wait_until_up(self):
        self.wait_for(lambda: self.pub.get_subscription_count()
                      and self.probe.count_subscribers(f'{NAMESPACE}/mask_overlay')
                      and self.report() is not None, 'perception_node and the viewer')
        time.sleep(1.0)  # let the viewer finish starting before timing
        self.providers = self.report()['providers_active']

    def wait_for(self, condition, what, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not condition():
            if self.node_process.poll() is not None:
                raise RuntimeError(f'perception_node exited ({self.node_process.returncode})')
            if time.monotonic() > deadline:
                raise RuntimeError(f'timed out waiting for {what}')
            time.sleep(0.05)

    def stop_overlay(self, overlay_topic=None):
        """
        Unsubscribe from mask_overlay: the node then skips it, as when rviz is closed.

        With `overlay_topic` ('mask_overlay/compressed'), view that one instead, as rviz on
        another machine would.
        """
        self.viewer.close()
        self.viewer = Viewer(('mask',) + ((overlay_topic,) if overlay_topic else ()))
        self.wait_for(lambda: self.probe.count_subscribers(f'{NAMESPACE}/mask')
                      and not self.probe.count_subscribers(f'{NAMESPACE}/mask_overlay')
                      and (not overlay_topic
                           or self.probe.count_subscribers(f'{NAMESPACE}/{overlay_topic}')),
                      'the viewer without the overlay')
        time.sleep(1.0)  # let the new viewer finish starting before timing

    def _on_detection(self, msg):
        self.arrivals[int(msg.data[0]) * 10**9 + int(msg.data[1])] = time.time()

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.startswith(f'{NODE_NAME}:'):
                with self._report_lock:
                    self._report = {kv.key: kv.value for kv in status.values}

    def report(self):
        """Return the newest diagnostics values of the node ({} keys as in /diagnostics)."""
        with self._report_lock:
            return self._report

    def report_after(self, processed):
        """Return the first diagnostics report counting at least `processed` frames."""
        self.wait_for(lambda: int(self.report()['frames_processed']) >= processed,
                      f'a diagnostics report with {processed} frames', timeout=10.0)
        return self.report()

    def publish(self, msg):
        """Stamp `msg` with the wall clock, publish it, return the stamp in ns."""
        now = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = now // 10**9, now % 10**9
        self.pub.publish(msg)
        return now

    def close(self):
        self.viewer.close()
        _stop(self.node_process)
        self.executor.shutdown()
        self.probe.destroy_node()


def _stop(process):
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        process.kill()


# What a camera driver might publish, made from an RGB frame with OpenCV's conversion codes;
# 'jpeg': a CompressedImage as compressed_image_transport sends it (quality 80).
CAMERA_ENCODINGS = {'rgb8': None, 'bgr8': 'COLOR_RGB2BGR', 'bgra8': 'COLOR_RGB2BGRA',
                    'mono8': 'COLOR_RGB2GRAY', 'yuyv': 'COLOR_RGB2YUV_YUY2', 'jpeg': None}
JPEG_QUALITY = 80


def image_message(rgb, encoding='rgb8'):
    import cv2
    from sensor_msgs.msg import CompressedImage, Image

    from followme_common.image_msgs import fill_image
    if encoding == 'jpeg':
        from followme_perception.overlay import encode_jpeg, JPEG_FORMAT
        msg = CompressedImage(format=JPEG_FORMAT)
        msg.data.frombytes(encode_jpeg(rgb, JPEG_QUALITY))
        msg.header.frame_id = 'camera_optical'
        return msg
    code = CAMERA_ENCODINGS[encoding]
    msg = fill_image(Image(), rgb if code is None else cv2.cvtColor(rgb, getattr(cv2, code)),
                     encoding)
    msg.header.frame_id = 'camera_optical'
    return msg


def bench_stages(rig, size, count, encoding='rgb8'):
    """
    Return the median ms per stage for `count` frames of `size`, sent one at a time.

    The stages come from the node's diagnostics; the round trip (image published ->
    detection received here) is measured here.
    """
    from tqdm import tqdm
    messages = [image_message(f, encoding) for f in frames(*size, count)]
    processed = int(rig.report()['frames_processed'])
    round_trip = []
    for msg in tqdm(messages, desc=f'stages {size[1]}x{size[0]}', unit='frame'):
        stamp = rig.publish(msg)
        rig.wait_for(lambda: stamp in rig.arrivals,
                     f'the detection of a {size[1]}x{size[0]} frame (with Fast DDS, large '
                     'frames between processes need config/fastdds.xml: source env.sh)',
                     timeout=5.0)
        round_trip.append((rig.arrivals[stamp] - stamp * 1e-9) * 1e3)
    from followme_perception.node import CPU_STAGES, STAGES
    report = rig.report_after(processed + count)
    stages = {name: float(report[f'{name}_ms']) for name in STAGES}
    stages['cpu_by_stage'] = {name: float(report[f'{name}_cpu_ms']) for name in CPU_STAGES}
    stages['cpu'] = sum(stages['cpu_by_stage'].values())
    stages['round_trip'] = float(np.median(round_trip))
    return stages


def bench_throughput(rig, rate, seconds, encoding='rgb8', size=(480, 640)):
    """Publish frames of `size` (H, W) at `rate` Hz; return counts and latency early and late."""
    from tqdm import tqdm
    messages = [image_message(f, encoding) for f in frames(*size, 30)]
    before = rig.report()
    stamps = []
    period = 1.0 / rate
    start = time.monotonic()
    total = int(rate * seconds)
    for i in tqdm(range(total), desc=f'{rate:.0f} Hz {size[1]}x{size[0]}', unit='frame'):
        wait = start + i * period - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        stamps.append(rig.publish(messages[i % len(messages)]))
    sent_for = time.monotonic() - start
    time.sleep(1.0)
    after = rig.report()
    latency = [(stamp, (rig.arrivals[stamp] - stamp * 1e-9) * 1e3)
               for stamp in stamps if stamp in rig.arrivals]
    third = max(1, len(latency) // 3)

    def delta(key):
        return int(after[key]) - int(before[key])
    return {
        'sent': total, 'sent_hz': total / sent_for,
        'received': delta('images_received'),
        'processed': delta('frames_processed'),
        'dropped': delta('frames_dropped'),
        'processed_hz': delta('frames_processed') / sent_for,
        'latency_first_third_ms': float(np.median([ms for _, ms in latency[:third]])),
        'latency_last_third_ms': float(np.median([ms for _, ms in latency[-third:]])),
        'latency_p95_ms': float(np.percentile([ms for _, ms in latency], 95)),
    }


# label, node parameters, the overlay topic viewed (None: none)
OVERLAY_CASES = (('nobody views the overlay', (), None),
                 ('overlay viewed, every frame', (), 'mask_overlay'),
                 ('overlay viewed, overlay_max_rate 10', (('overlay_max_rate', 10.0),),
                  'mask_overlay'),
                 ('only the JPEG overlay viewed (remote rviz), every frame', (),
                  'mask_overlay/compressed'))


def bench_overlay_cost(model_path, rate, seconds, node_parameters=(), encoding='rgb8',
                       size=(480, 640)):
    """Per overlay case, frames of `size` at `rate` Hz: CPU beyond inference and inference."""
    results = {}
    for label, parameters, viewed in OVERLAY_CASES:
        rig = Rig(model_path, (*node_parameters, *parameters))
        try:
            if viewed != 'mask_overlay':
                rig.stop_overlay(viewed)
            run = bench_throughput(rig, rate, seconds, encoding, size)
            report = rig.report()
            results[label] = {'processed': run['processed'], 'dropped': run['dropped'],
                              'beyond_ms': float(report['beyond_infer_cpu_mean_ms']),
                              'infer_ms': float(report['infer_ms'])}
        finally:
            rig.close()
    return results


def bench_classic(keras_model, onnx_path, count, rounds, node_model=None,
                  node_providers=('CPUExecutionProvider',)):
    """
    Per-frame ms: Keras model.predict vs ONNX Runtime session.run, same network and frames.

    node_model: the node's own ONNX file (the shipped int8 model, say), timed on the same
    frames in the same run with the providers the node got (node_providers), and on ONNX
    Runtime's CPU provider too where those differ.

    The contenders take turns in blocks of `count` frames, `rounds` times over. This VM has
    slow stretches of seconds in which everything runs up to twice as slow; with one block
    each, a stretch fell on one side only and the ratio read anything from 6.6x to 12.6x
    from run to run on one machine (docs/perception.md). Each contender's figure is the median
    of all its frames; each round also gives Keras against the node's model from two adjacent
    blocks, and the median and range of those per-round ratios are reported. Blocks, not
    frame by frame: right after a Keras call TensorFlow's threads still hold the 2 cores, and
    in turns frame by frame ONNX Runtime ran nearly twice as slow.
    """
    import onnxruntime as ort
    from tqdm import tqdm
    from followme_perception.segmenter import Segmenter
    height, width = keras_model.input_shape[1:3]
    images = frames(height, width, count)
    batches = [(f.astype(np.float32) / 127.5 - 1.0)[None] for f in images]
    session = ort.InferenceSession(str(onnx_path), providers=['CPUExecutionProvider'])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    single = ort.InferenceSession(str(onnx_path), options, providers=['CPUExecutionProvider'])
    runs = [('keras_predict', lambda b: keras_model.predict(b, verbose=0), batches),
            ('onnxruntime', lambda b: session.run(None, {'image': b}), batches),
            ('onnxruntime_1_thread', lambda b: single.run(None, {'image': b}), batches)]
    if node_model is not None:
        # The node's own session and input: an int8 model takes the uint8 codes of RGB and a
        # fourth, ignored channel, made by the node's preprocess stage (timed in its overhead).
        node = Segmenter(node_model, providers=node_providers)
        runs.append(('node_model', _run_on(node), [node.preprocess(i) for i in images]))
        if tuple(node_providers) != ('CPUExecutionProvider',):
            cpu = Segmenter(node_model, providers=['CPUExecutionProvider'])
            runs.append(('node_model_cpu', _run_on(cpu), [cpu.preprocess(i) for i in images]))
    for _, run, inputs in runs:
        run(inputs[0])  # warm up
    times = {name: [] for name, _, _ in runs}
    block_medians = {name: [] for name, _, _ in runs}
    with tqdm(total=rounds * len(runs) * count, desc='Keras and ONNX Runtime in turns',
              unit='frame') as progress:
        for _ in range(rounds):
            for name, run, inputs in runs:
                block = []
                for batch in inputs:
                    start = time.perf_counter()
                    run(batch)
                    block.append((time.perf_counter() - start) * 1e3)
                    progress.update()
                times[name] += block
                block_medians[name].append(float(np.median(block)))
    results = {name: float(np.median(ms)) for name, ms in times.items()}
    if node_model is not None:
        results['round_ratios'] = [
            keras / ours for keras, ours in zip(block_medians['keras_predict'],
                                                block_medians['node_model'])]
    outputs = keras_model.predict(batches[0], verbose=0), session.run(None, {'image': batches[0]})
    results['max_abs_difference'] = float(np.abs(outputs[0] - outputs[1][0]).max())
    return results


def _run_on(segmenter):
    """One inference on a preprocessed batch, as the node's infer stage runs it."""
    return lambda batch: segmenter.session.run(None, {segmenter.info.input_name: batch})


def main(argv=None):
    args = parse_args(argv)
    import rclpy
    with tempfile.TemporaryDirectory() as folder:
        # Keras runs the node model's own architecture and input size: like for like.
        keras_model, exported = export_random_weights_model(
            folder, node_model_architecture(args.model) if args.model else None)
        model_path = args.model or exported
        print(f'model for the node: {model_path}'
              + ('' if args.model else ' (classic architecture, random weights)'))
        node_parameters = (() if args.providers is None
                           else (('providers', f'[{args.providers}]'),))
        if args.encoding == 'jpeg':
            node_parameters += (('image_transport', 'compressed'),)
        rclpy.init()
        try:
            rig = Rig(model_path, node_parameters)
            try:
                print(f'providers: {rig.providers}; camera frames: {args.encoding}')
                # Warm-up: first frames through DDS, caches.
                bench_stages(rig, (256, 256), args.frames, args.encoding)
                sizes = dict.fromkeys(((256, 256), (480, 640), args.size))
                stages = {f'{w}x{h}': bench_stages(rig, (h, w), args.frames, args.encoding)
                          for h, w in sizes}
                rig.stop_overlay()
                stages['640x480, no overlay subscriber'] = bench_stages(
                    rig, (480, 640), args.frames, args.encoding)
                throughput = bench_throughput(rig, args.rate, args.seconds, args.encoding,
                                              args.size)
                node_providers = rig.providers.split(',')
            finally:
                rig.close()
            overlay_cost = None if args.skip_overlay_cost else bench_overlay_cost(
                model_path, args.rate, args.seconds, node_parameters, args.encoding, args.size)
        finally:
            rclpy.try_shutdown()
        classic = None if args.skip_classic else bench_classic(
            keras_model, exported, args.classic_frames, args.classic_rounds, args.model,
            node_providers)
    report(stages, throughput, classic, overlay_cost, args.size)


def report(stages, throughput, classic, overlay_cost=None, size=(480, 640)):
    from followme_perception.node import CPU_STAGES, STAGES
    print('\n| input | ' + ' | '.join(STAGES) + ' | total | overhead / infer | round trip '
          '| node CPU beyond infer | CPU overhead / infer |')
    print('|---|' + '---|' * (len(STAGES) + 5))
    totals = {name: sum(ms[stage] for stage in STAGES) for name, ms in stages.items()}
    for name, ms in stages.items():
        overhead = (totals[name] - ms['infer']) / ms['infer'] * 100.0
        print(f'| {name} | ' + ' | '.join(f'{ms[stage]:.2f}' for stage in STAGES)
              + f" | {totals[name]:.2f} | {overhead:.0f} % | {ms['round_trip']:.2f} "
              f"| {ms['cpu']:.2f} | {ms['cpu'] / ms['infer'] * 100.0:.0f} % |")
    print('(overhead: wall time of every stage but inference; node CPU: the same stages, CPU '
          "time of the node's worker thread only, without the time other processes ran)")
    print('\n| input | node CPU: ' + ' | '.join(CPU_STAGES) + ' |')
    print('|---|' + '---|' * len(CPU_STAGES))
    for name, ms in stages.items():
        print(f'| {name} | ' + ' | '.join(f"{ms['cpu_by_stage'][stage]:.2f}"
                                          for stage in CPU_STAGES) + ' |')
    size_label = f'{size[1]}x{size[0]}'
    print(f'\nthroughput, {size_label}: ' + ', '.join(
        f'{k} {v:.1f}' if isinstance(v, float) else f'{k} {v}' for k, v in throughput.items()))
    if classic:
        keras_ms, ort_ms = classic['keras_predict'], classic['onnxruntime']
        total_640 = totals['640x480']
        print(f'\nper frame: Keras predict {keras_ms:.1f} ms, ONNX Runtime {ort_ms:.1f} ms '
              f'(x{keras_ms / ort_ms:.1f}), with one thread '
              f"{classic['onnxruntime_1_thread']:.1f} ms; "
              f'the whole node at 640x480 {total_640:.1f} ms '
              f'(x{keras_ms / total_640:.1f} against Keras predict alone); outputs differ by '
              f"at most {classic['max_abs_difference']:.1e}")
        if 'node_model' in classic:
            node_ms = classic['node_model']
            total_256 = totals['256x256']
            print(f"the node's model alone {node_ms:.1f} ms (x{keras_ms / node_ms:.1f}); the "
                  f'whole node at 256x256 {total_256:.1f} ms (x{keras_ms / total_256:.1f})')
            ratios = classic['round_ratios']
            print(f"Keras against the node's model, round by round: median "
                  f'x{np.median(ratios):.1f}, from x{min(ratios):.1f} to x{max(ratios):.1f}; '
                  f'{sum(r >= 10.0 for r in ratios)} of {len(ratios)} rounds at x10 or more '
                  f"({', '.join(f'{r:.1f}' for r in ratios)})")
        if 'node_model_cpu' in classic:
            cpu_ms = classic['node_model_cpu']
            print(f"the node's model on ONNX Runtime's CPU provider {cpu_ms:.1f} ms "
                  f'(x{keras_ms / cpu_ms:.1f})')
    if overlay_cost:
        print(f'\n| {size_label} at 30 Hz | processed | dropped | node CPU beyond infer, mean ms '
              '| infer ms | CPU overhead / infer |')
        print('|---|---|---|---|---|---|')
        for label, row in overlay_cost.items():
            print(f"| {label} | {row['processed']} | {row['dropped']} | {row['beyond_ms']:.2f} "
                  f"| {row['infer_ms']:.2f} | {row['beyond_ms'] / row['infer_ms'] * 100:.0f} % |")


if __name__ == '__main__':
    main()
