"""
What reading one depth frame costs the perception node, raw and through compressedDepth.

The node reads depth only for frames with a hero blob, and then only the blob's pixels
(`DepthMetres`). A raw frame converts just those; a compressedDepth one (image_transport's
`compressedDepth`, PNG or RVL codec) must first decode the whole frame. This times exactly that
step (decode + the blob's pixels in metres) on synthetic 640x480 depth: a ramp of 2-7 m with
sensor-like noise and a share of holes (no reading), for 16UC1 millimetres and 32FC1 metres
(sent as quantized inverse depth), side by side with the raw frame.

    python bench/bench_depth_decode.py [--runs 50] [--holes 0 0.02 0.1]
"""

import argparse
from pathlib import Path
import statistics
import sys
import time
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / 'test'))      # the codecs as ROS's publisher writes them

from followme_common.image_msgs import DepthMetres, fill_image  # noqa: E402
import numpy as np  # noqa: E402
from transport_helpers import compressed_depth_data  # noqa: E402

HEIGHT, WIDTH = 480, 640


def depth_frame(holes, noise_m, seed=0) -> np.ndarray:
    """Return 2-7 m from the top row to the bottom, noisy, NaN at a share `holes` of pixels."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(2.0, 7.0, HEIGHT, dtype=np.float32)[:, None]
    metres = ramp + rng.normal(0.0, noise_m, (HEIGHT, WIDTH)).astype(np.float32)
    metres[rng.random((HEIGHT, WIDTH)) < holes] = np.nan
    return metres


def messages(metres):
    """Yield (label, message, bytes) for each way the node may receive this frame."""
    millimetres = np.nan_to_num(metres * 1000.0, nan=0.0).astype(np.uint16)
    raw_16 = fill_image(SimpleNamespace(), millimetres, '16UC1')
    yield 'raw 16UC1', raw_16, len(raw_16.data)
    raw_32 = fill_image(SimpleNamespace(), metres, '32FC1')
    yield 'raw 32FC1', raw_32, len(raw_32.data)
    for encoding in ('16UC1', '32FC1'):
        for codec in ('png', 'rvl'):
            fmt, data = compressed_depth_data(metres, encoding, codec)
            msg = SimpleNamespace(format=fmt, data=data)
            yield f'compressedDepth {codec} {encoding}', msg, len(data)


def time_read(msg, blob, runs) -> list:
    """Time reading the blob's depth in metres, the way the node does, `runs` times (ms)."""
    read = DepthMetres.from_compressed if hasattr(msg, 'format') else DepthMetres
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        read(msg)[blob]
        times.append((time.perf_counter() - start) * 1e3)
    return times


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--runs', type=int, default=50, help='reads per case (default 50)')
    parser.add_argument('--holes', type=float, nargs='+', default=[0.0, 0.02, 0.1],
                        help='shares of pixels without a reading (default 0 0.02 0.1)')
    parser.add_argument('--noise', type=float, default=0.01,
                        help='depth noise, standard deviation in metres (default 0.01)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # A hero-sized blob's pixels, as the node samples them on the network grid.
    rows, cols = np.mgrid[180:300:2, 280:340:2]
    blob = (rows.ravel(), cols.ravel())
    print(f'{WIDTH}x{HEIGHT} depth, noise {args.noise} m; decode + a {rows.size}-pixel blob '
          f'in metres, {args.runs} runs each; ms median (p90), kB per frame')
    print(f'| holes | {"case":<28} | ms | kB |')
    print('|---|---|---|---|')
    for holes in args.holes:
        metres = depth_frame(holes, args.noise)
        for label, msg, size in messages(metres):
            times = sorted(time_read(msg, blob, args.runs))
            p90 = times[int(0.9 * (len(times) - 1))]
            print(f'| {holes:.0%} | {label:<28} | {statistics.median(times):.2f} ({p90:.2f}) '
                  f'| {size / 1000:.0f} |')


if __name__ == '__main__':
    main()
