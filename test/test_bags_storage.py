"""Bag files and replay timing without DDS: writer, reader, salvage, damage, type definitions."""

import threading

from bag_helpers import image_cdr, NS, START_NS, string_cdr, write_chatter_bag
from followme_common.bags.playback import Playback
from followme_common.bags.storage import (BagError, BagReader, BagWriter, normalise_type_name,
                                          TypeDefinitions)
import numpy as np
import pytest


@pytest.mark.parametrize('storage, suffix', [('mcap', '.mcap'), ('sqlite3', '.db3')])
def test_written_bag_reads_back_in_order(tmp_path, storage, suffix):
    bag = write_chatter_bag(tmp_path / 'bag', storage, count=5)
    assert (bag / 'metadata.yaml').is_file()
    assert (bag / f'bag{suffix}').is_file()
    with BagReader(bag) as reader:
        assert [(t.name, t.msgtype, t.count) for t in reader.topics] == [
            ('/chatter', 'std_msgs/msg/String', 5)]
        assert reader.start_ns == START_NS
        assert reader.end_ns == START_NS + 4 * NS // 10
        messages = list(reader.messages())
        assert reader.notes == [] and reader.read_errors == []
    assert [m.data for m in messages] == [string_cdr(f'msg {i}') for i in range(5)]
    assert [m.timestamp for m in messages] == sorted(m.timestamp for m in messages)


def test_start_time_and_topic_filter(tmp_path):
    def extra(writer):
        writer.add_topic('/other', 'std_msgs/msg/String')
        writer.write('/other', START_NS, string_cdr('other'))
    bag = write_chatter_bag(tmp_path / 'bag', count=5, extra=extra)
    with BagReader(bag) as reader:
        late = list(reader.messages({'/chatter'}, start_ns=START_NS + 2 * NS // 10))
    assert [m.data for m in late] == [string_cdr(f'msg {i}') for i in (2, 3, 4)]


def test_writer_never_overwrites(tmp_path):
    write_chatter_bag(tmp_path / 'bag', count=1)
    with pytest.raises(BagError, match='exists already'):
        BagWriter(tmp_path / 'bag')


def test_bare_storage_file_and_folder_without_metadata_are_read(tmp_path):
    bag = write_chatter_bag(tmp_path / 'bag', count=3)
    with BagReader(bag / 'bag.mcap') as reader:
        assert reader.message_count == 3
    (bag / 'metadata.yaml').unlink()
    with BagReader(bag) as reader:
        assert len(list(reader.messages())) == 3
        assert 'no metadata.yaml' in reader.notes[0]


def _big_bag(path, frames=20):
    """Frames of 256x256 RGB: the writer starts a new MCAP chunk every MiB."""
    with BagWriter(path) as writer:
        writer.add_topic('/image', 'sensor_msgs/msg/Image')
        for i in range(frames):
            stamp = START_NS + i * NS // 20
            writer.write('/image', stamp,
                         image_cdr(np.full((256, 256, 3), i, np.uint8), 'rgb8', stamp))
    return path


def test_truncated_mcap_is_salvaged_and_says_so(tmp_path):
    bag = _big_bag(tmp_path / 'bag')
    storage_file = bag / 'bag.mcap'
    data = storage_file.read_bytes()
    storage_file.write_bytes(data[: int(len(data) * 0.8)])  # as if the recorder was killed
    with BagReader(bag) as reader:
        messages = list(reader.messages())
        notes = ' '.join(reader.notes)
    assert 0 < len(messages) < 20
    assert 'incomplete' in notes and f'salvaged {len(messages)} messages' in notes
    assert str(storage_file) in notes
    assert [m.timestamp for m in messages] == [START_NS + i * NS // 20
                                               for i in range(len(messages))]


def test_garbage_mcap_names_the_file(tmp_path):
    bag = tmp_path / 'bag'
    bag.mkdir()
    (bag / 'x.mcap').write_bytes(b'this is not a bag' * 20)
    with pytest.raises(BagError, match=r'cannot read bag .*x\.mcap'):
        BagReader(bag)


def test_truncated_db3_says_what_to_do(tmp_path):
    bag = write_chatter_bag(tmp_path / 'bag', 'sqlite3', count=50)
    db3 = bag / 'bag.db3'
    db3.write_bytes(db3.read_bytes()[:3000])
    with pytest.raises(BagError, match=r'cannot read bag .*bag\.db3.*malformed.*\.recover'):
        BagReader(bag)


def test_missing_and_non_bag_paths(tmp_path):
    with pytest.raises(BagError, match='does not exist'):
        BagReader(tmp_path / 'nowhere')
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(BagError, match='is not a bag'):
        BagReader(tmp_path / 'notes.txt')


def test_type_names():
    assert normalise_type_name('sensor_msgs/Image') == 'sensor_msgs/msg/Image'
    assert normalise_type_name('sensor_msgs/msg/Image') == 'sensor_msgs/msg/Image'
    with pytest.raises(ValueError, match='not a message type'):
        normalise_type_name('Image')


def test_custom_types_come_from_the_ament_index(tmp_path, monkeypatch):
    share = tmp_path / 'share' / 'my_msgs' / 'msg'
    share.mkdir(parents=True)
    (share / 'Target.msg').write_text('std_msgs/Header header\nmy_msgs/Score[] scores\n')
    (share / 'Score.msg').write_text('float32 value\nstring label\n')
    monkeypatch.setenv('AMENT_PREFIX_PATH', str(tmp_path))
    msgdef, rihs01 = TypeDefinitions().definition('my_msgs/msg/Target')
    assert 'my_msgs/Score[] scores' in msgdef and 'MSG: my_msgs/Score' in msgdef
    assert rihs01.startswith('RIHS01_')
    (share / 'Score.msg').unlink()
    with pytest.raises(BagError, match=r'my_msgs/msg/Score \(used by my_msgs/msg/Target\)'):
        TypeDefinitions().definition('my_msgs/msg/Target')


def test_playback_rejects_offset_past_the_end(tmp_path):
    bag = write_chatter_bag(tmp_path / 'bag', count=3)
    with BagReader(bag) as reader:
        with pytest.raises(ValueError, match='past the end'):
            Playback(reader, print, start_offset=5.0)


def test_playback_rate_change_keeps_bag_time_continuous(tmp_path):
    bag = write_chatter_bag(tmp_path / 'bag', count=3, period_s=5.0)
    clock = []
    with BagReader(bag) as reader:
        playback = Playback(reader, lambda m: None, clock.append, rate=1.0, clock_period=0.01)
        stop = threading.Event()
        player = threading.Thread(target=playback.run, args=(stop,))
        player.start()
        threading.Event().wait(0.3)
        playback.set_rate(10.0)
        player.join(timeout=20.0)
        stop.set()
    assert not player.is_alive(), 'at rate 10 the rest of the 10 s bag takes about 1 s'
    assert clock == sorted(clock), 'bag time never runs backwards'
    assert clock[-1] == START_NS + 10 * NS
    # Without re-anchoring, bag time would leap from 0.3 s to the next message at 5 s.
    assert np.diff(clock).max() < 1 * NS, 'no jump when the rate changes'
