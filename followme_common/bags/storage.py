"""
rosbag2 files in and out through `rosbags`, with errors that name the file and what to do.

ROS-free: messages stay CDR bytes here (the nodes serialise and check them with rclpy). Reads
bags from our `record` and from `ros2 bag record` alike: a folder with metadata.yaml (rosbag2
versions 1 to 9), or a bare .mcap/.db3 file. An .mcap whose recording was killed (no footer,
no metadata.yaml) is salvaged up to its last complete record, and the reader says so.
"""

from dataclasses import dataclass
import os
from pathlib import Path
import queue
import struct
import threading

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability
from rosbags.interfaces import QosTime
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from rosbags.typesys.base import Nodetype

STORAGE_CHOICES = ('mcap', 'sqlite3')
STORAGE_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}
_PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
_BAG_VERSION = 9  # what Jazzy's rosbag2 writes
_MCAP_MAGIC = b'\x89MCAP0\r\n'
_MCAP_HEADER_OP = 0x01
_MCAP_FOOTER_OP = 0x02


class BagError(RuntimeError):
    """A bag that cannot be read or written; the message names the file and what to do."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    msgtype: str          # 'pkg/msg/Name'
    count: int
    transient_local: bool  # a publisher offered transient-local durability (latched topic)


@dataclass(frozen=True)
class BagMessage:
    topic: str
    msgtype: str
    timestamp: int  # ns, the time the recorder received it
    data: bytes     # CDR, as on the wire


def normalise_type_name(name: str) -> str:
    """'sensor_msgs/Image' or 'sensor_msgs/msg/Image' -> 'sensor_msgs/msg/Image'."""
    parts = name.strip().split('/')
    if len(parts) == 2 and all(parts):
        return f'{parts[0]}/msg/{parts[1]}'
    if len(parts) == 3 and all(parts):
        return name.strip()
    raise ValueError(f"'{name}' is not a message type name (expected e.g. sensor_msgs/msg/Image)")


def offered_qos(reliability: int, durability: int, history: int = 1, depth: int = 10) -> Qos:
    """Describe a publisher's offered QoS as rosbag2 stores it (rmw enum values, as rclpy)."""
    def enum(kind, value):
        try:
            return kind(int(value))
        except ValueError:
            return kind.UNKNOWN
    zero = QosTime(0, 0)
    return Qos(enum(QosHistory, history), int(depth), enum(QosReliability, reliability),
               enum(QosDurability, durability), zero, zero, QosLiveliness.AUTOMATIC, zero, False)


class TypeDefinitions:
    """
    Message definitions and RIHS01 hashes, which rosbag2 stores with every topic.

    Jazzy's standard messages come with `rosbags`; any other type is read from its .msg file
    in the ament index (share/<package>/msg/<Name>.msg), with the types it uses.
    """

    def __init__(self):
        self._store = get_typestore(Stores.ROS2_JAZZY)

    def definition(self, msgtype: str):
        """(message definition text, RIHS01 hash) of one type; BagError when not found."""
        self._load(msgtype, trail=())
        msgdef, _ = self._store.generate_msgdef(msgtype, ros_version=2)
        return msgdef, self._store.hash_rihs01(msgtype)

    def _load(self, msgtype, trail):
        if msgtype not in self._store.fielddefs:
            text = self._read_msg_file(msgtype, trail)
            self._store.register(get_types_from_msg(text, msgtype))
        for _, (kind, detail) in self._store.fielddefs[msgtype][1]:
            if kind in (Nodetype.ARRAY, Nodetype.SEQUENCE):
                kind, detail = detail[0]
            if kind == Nodetype.NAME and detail not in trail:
                self._load(detail, trail + (msgtype,))

    @staticmethod
    def _read_msg_file(msgtype, trail):
        package, _, name = msgtype.split('/')
        used_by = f' (used by {trail[-1]})' if trail else ''
        for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
            path = Path(prefix) / 'share' / package / 'msg' / f'{name}.msg'
            if prefix and path.is_file():
                return path.read_text()
        raise BagError(f'no definition of {msgtype}{used_by}: it is not a standard Jazzy '
                       f'message and share/{package}/msg/{name}.msg is not in any '
                       'AMENT_PREFIX_PATH folder; source the workspace that builds it')


class BagWriter:
    """A rosbag2 bag being written: add topics, write CDR bytes, close (writes metadata.yaml)."""

    def __init__(self, path, storage: str = 'mcap', type_definitions: TypeDefinitions = None):
        if storage not in _PLUGINS:
            raise BagError(f"storage must be one of {', '.join(STORAGE_CHOICES)}, not "
                           f"'{storage}'")
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; choose a new output folder '
                           '(bags are never overwritten)')
        self.storage = storage
        self._types = type_definitions or TypeDefinitions()
        self._writer = Writer(self.path, version=_BAG_VERSION, storage_plugin=_PLUGINS[storage])
        self._connections = {}
        self.counts = {}
        try:
            self._writer.open()
        except (OSError, WriterError) as err:
            raise BagError(f'cannot create bag {self.path}: {err}') from err

    def add_topic(self, topic: str, msgtype: str, qos_profiles=()):
        """Declare a topic before writing to it; BagError when its type has no definition."""
        msgdef, rihs01 = self._types.definition(normalise_type_name(msgtype))
        self._connections[topic] = self._writer.add_connection(
            topic, normalise_type_name(msgtype), msgdef=msgdef, rihs01=rihs01,
            offered_qos_profiles=list(qos_profiles))
        self.counts[topic] = 0

    def has_topic(self, topic: str) -> bool:
        return topic in self._connections

    def write(self, topic: str, timestamp_ns: int, data: bytes):
        self._writer.write(self._connections[topic], int(timestamp_ns), data)
        self.counts[topic] += 1

    def close(self):
        """Finish the file and write metadata.yaml; safe to call twice."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class QueuedBagWriter:
    """
    A BagWriter owned by one thread and fed through a queue.

    SQLite objects only work in the thread that made them, and subscription callbacks should
    never wait for the disk: both call for one writer thread. A type without a definition is
    refused at once, in the caller's thread; a disk error stops writing and is kept in `error`.
    """

    def __init__(self, path, storage: str = 'mcap'):
        self.path = Path(path)
        self.counts = {}
        self.error = None
        self._types = TypeDefinitions()
        self._queue = queue.Queue()
        self._opened = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(storage,),
                                        name='bag writer', daemon=True)
        self._thread.start()
        self._opened.wait()
        if self.error is not None:
            self._thread.join()
            raise self.error

    def add_topic(self, topic: str, msgtype: str, qos_profiles=()):
        self._types.definition(normalise_type_name(msgtype))  # BagError now, not later
        self.counts[topic] = 0
        self._queue.put(('add', topic, msgtype, list(qos_profiles)))

    def write(self, topic: str, timestamp_ns: int, data: bytes):
        self._queue.put(('write', topic, timestamp_ns, data))

    def close(self):
        """Write what is queued, finish the file; safe to call twice. Raises a disk error."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self.error is not None:
            raise self.error

    def _run(self, storage):
        try:
            writer = BagWriter(self.path, storage)
        except BagError as err:
            self.error = err
            self._opened.set()
            return
        self._opened.set()
        with writer:
            while (item := self._queue.get()) is not None:
                if self.error is not None:
                    continue  # drain the queue; nothing more reaches the broken file
                try:
                    if item[0] == 'add':
                        writer.add_topic(*item[1:])
                    else:
                        writer.write(*item[1:])
                        self.counts[item[1]] += 1
                except (OSError, WriterError, BagError) as err:
                    self.error = BagError(f'writing {self.path} failed: {err}')


class _SalvageMcapReader(McapReader):
    """An .mcap without its summary and footer (recording killed): read what is complete."""

    def _open(self):
        bio = self.bio
        if bio.read(8) != _MCAP_MAGIC:
            raise ReaderError('not an MCAP file (bad magic bytes)')
        size = bio.seek(0, 2)
        bio.seek(8)
        op, length = struct.unpack('<BQ', bio.read(9))
        if op != _MCAP_HEADER_OP:
            raise ReaderError('MCAP file does not start with a header record')
        self.data_start = position = 8 + 9 + length
        # Walk the top-level records; the first one that runs past the end is unfinished.
        while position + 9 <= size:
            bio.seek(position)
            op, length = struct.unpack('<BQ', bio.read(9))
            if op == _MCAP_FOOTER_OP or position + 9 + length > size:
                break
            position += 9 + length
        self.data_end = position
        self.lost_bytes = size - position
        self.meta_scan()
        stats = self.statistics
        counts = stats.channel_message_counts
        self.connections = [c._replace(msgcount=counts.get(c.id, 0)) for c in self.connections]
        count = stats.message_count
        self.metadata = self.metadata._replace(
            duration=stats.end_time - stats.start_time + 1 if count else 0,
            start_time=stats.start_time if count else 2**63 - 1,
            end_time=stats.end_time + 1 if count else 0, message_count=count)


class BagReader:
    """
    A bag opened for reading: topics, time span, messages as CDR bytes.

    `notes` lists what was unusual about opening it (salvaged, no metadata.yaml); `read_errors`
    what stopped reading early. Both are meant for the user's eyes.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.notes = []
        self.read_errors = []
        self._reader = self._open(self.path)
        self._connections = {c.id: c for c in self._reader.connections}

    def _open(self, path):
        if not path.exists():
            raise BagError(f'{path} does not exist; give a bag folder (with metadata.yaml) or '
                           'an .mcap/.db3 file')
        if path.is_file() and path.name == 'metadata.yaml':
            path = path.parent
        if path.is_dir() and not (path / 'metadata.yaml').is_file():
            files = sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES)
            if len(files) != 1:
                raise BagError(f'{path} has no metadata.yaml and {len(files)} .mcap/.db3 files; '
                               'give one storage file instead of the folder')
            self.notes.append(f'{path} has no metadata.yaml (the recording was probably not '
                              f'closed); reading {files[0].name} directly')
            path = files[0]
        if path.is_file() and path.suffix not in STORAGE_SUFFIXES:
            raise BagError(f'{path} is not a bag: expected a folder with metadata.yaml, or an '
                           '.mcap or .db3 file')
        try:
            reader = Reader(path)
            reader.open()
            return reader
        except (ReaderError, OSError, ValueError, KeyError, struct.error) as err:
            mcap = self._single_mcap(path)
            if mcap is None:
                raise BagError(self._explain(path, err)) from err
            return self._salvage(mcap, err)

    def _salvage(self, mcap, first_error):
        reader = Reader(mcap)
        reader.storage = _SalvageMcapReader(mcap)
        try:
            reader.open()
        except (ReaderError, OSError, ValueError, KeyError, struct.error) as err:
            why = f'{_sentence(first_error)}; salvage failed too: {err}'
            raise BagError(self._explain(mcap, why)) from err
        self.notes.append(
            f'{mcap} is incomplete ({_sentence(first_error)}); salvaged '
            f'{reader.message_count} messages, dropped the last {reader.storage.lost_bytes} '
            'bytes (an unfinished record). '
            'Re-index it for other tools with `mcap recover`.')
        return reader

    @staticmethod
    def _single_mcap(path):
        if path.is_file():
            return path if path.suffix == '.mcap' else None
        files = sorted(path.glob('*.mcap')) if path.is_dir() else []
        return files[0] if len(files) == 1 else None

    @staticmethod
    def _explain(path, err):
        hint = 'check that the recording finished and the file was copied whole'
        if path.suffix == '.db3' or (path.is_dir() and any(path.glob('*.db3'))):
            hint = ('a damaged SQLite bag can often be rescued with '
                    '`sqlite3 broken.db3 ".recover" | sqlite3 fixed.db3`')
        return f'cannot read bag {path}: {_sentence(err)}. {hint[0].upper()}{hint[1:]}.'

    @property
    def topics(self) -> list:
        infos = []
        for name, info in sorted(self._reader.topics.items()):
            latched = any(q.durability == QosDurability.TRANSIENT_LOCAL
                          for c in info.connections
                          for q in getattr(c.ext, 'offered_qos_profiles', ()))
            infos.append(TopicInfo(name, info.msgtype or '', info.msgcount, latched))
        return infos

    @property
    def start_ns(self) -> int:
        return self._reader.start_time if self._reader.message_count else 0

    @property
    def end_ns(self) -> int:
        """Timestamp of the last message (not one past it, as rosbags counts)."""
        return self._reader.end_time - 1 if self._reader.message_count else 0

    @property
    def message_count(self) -> int:
        return self._reader.message_count

    def messages(self, topics=None, start_ns=None):
        """Yield BagMessage in time order; stop at damage, adding to `read_errors`."""
        wanted = [c for c in self._connections.values() if topics is None or c.topic in topics]
        if not wanted:
            return
        count = 0
        try:
            for conn, timestamp, data in self._reader.messages(wanted, start=start_ns):
                count += 1
                yield BagMessage(conn.topic, conn.msgtype, timestamp, bytes(data))
        except (ReaderError, OSError, ValueError, KeyError, struct.error) as err:
            self._read_error(count, err)
        except Exception as err:  # apsw (SQLite) raises its own error classes
            if type(err).__module__ != 'apsw':
                raise
            self._read_error(count, err)

    def _read_error(self, count, err):
        text = (f'{self.path}: stopped reading after {count} messages: {_sentence(err)}; '
                'the rest of the bag is damaged')
        if text not in self.read_errors:  # a looping replay meets the same damage each pass
            self.read_errors.append(text)

    def close(self):
        if self._reader is not None and self._reader.is_open:
            self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _sentence(err) -> str:
    return str(err).rstrip('. ')
