"""Spin a node in a background thread and stop it cleanly (the record and replay commands)."""

import threading

from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor


class BackgroundSpin:
    """
    Spin one node on its own executor thread while the main thread waits or shows progress.

    `stop()` ends the spin and joins the thread before the node is destroyed: a thread left
    inside rclpy's wait when the interpreter exits aborts the process.
    """

    def __init__(self, node):
        self._executor = SingleThreadedExecutor()
        self._executor.add_node(node)
        self._thread = threading.Thread(target=self._spin, name='spin', daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self._executor.spin()
        except ExternalShutdownException:
            pass

    def stop(self):
        self._executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
