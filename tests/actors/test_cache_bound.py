"""The cache bound is strict: downloads of unknown size or that inflate, a per-user share, a
full disk (`actors/cache.py`), against the loopback data server."""

from __future__ import annotations

import gzip
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors.cache import DISK_FULL, RESERVATIONS, USER_FULL, CacheFull, owner_tag
from actors.dataset_task import ensure_local, inspect_dataset
from actors.fetch import human_bytes
from chatdf.errors import DatasetError
from chatdf.settings import Settings
from tests.fakes.fake_data_server import FakeDataServer

ROWS = 2_000
CSV = b"a,b\n" + b"".join(b"%d,%d\n" % (i, i * 7) for i in range(ROWS))
SIZE = len(CSV)
DAY_S = 24 * 3600


def _on_disk(settings: Settings) -> int:
    """Every byte under the cache directory: copies, downloads in progress, leftovers."""
    root = settings.resolved_cache_dir
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


def _age(path: Path, seconds_ago: float) -> None:
    then = time.time() - seconds_ago
    os.utime(path, (then, then))


def _leftovers(settings: Settings) -> list[Path]:
    root = settings.resolved_cache_dir
    return list(root.glob("*.part*")) + list((root / RESERVATIONS).iterdir())


@pytest.mark.parametrize("serving", ["gzip", "no_length", "gzip_no_length"])
def test_the_bound_holds_for_downloads_that_inflate_or_have_no_size(
    data_server: FakeDataServer, settings: Settings, serving: str
) -> None:
    """The issue's attack, scaled down: five files at distinct URLs, a bound of two."""
    bounded = settings.model_copy(update={"dataset_cache_max_bytes": int(2.5 * SIZE)})
    body = gzip.compress(CSV) if serving.startswith("gzip") else CSV
    urls = [
        data_server.add(f"/{serving}{i}.csv", body, no_length="no_length" in serving)
        for i in range(5)
    ]
    loaded: list[Path] = []
    refused = 0
    for url in urls:
        try:
            loaded.append(ensure_local(url, "csv", bounded))
        except CacheFull:
            refused += 1
        assert _on_disk(bounded) <= bounded.dataset_cache_max_bytes
        assert not _leftovers(bounded)
    # Copies used within a query's lifetime are pinned: the first two stay, the rest do not fit.
    assert (len(loaded), refused) == (2, 3)
    for path in loaded:
        _age(path, DAY_S)  # no longer in use: now they may make room
    again = ensure_local(urls[4], "csv", bounded)
    assert again.read_bytes() == CSV
    assert _on_disk(bounded) <= bounded.dataset_cache_max_bytes


def test_a_load_that_does_not_fit_says_so_and_writes_nothing(
    data_server: FakeDataServer, settings: Settings
) -> None:
    bounded = settings.model_copy(update={"dataset_cache_max_bytes": SIZE // 2})
    url = data_server.add("/whole.csv.gz", gzip.compress(CSV))
    with pytest.raises(CacheFull) as refused:
        inspect_dataset(url, bounded, owner="someone")
    assert refused.value.status == 503
    assert not list(bounded.resolved_cache_dir.glob("*.csv")) and not _leftovers(bounded)


def test_one_user_share_is_bounded_and_their_own_old_copies_make_room(
    data_server: FakeDataServer, settings: Settings
) -> None:
    shared = settings.model_copy(
        update={"dataset_cache_max_bytes": 100 * SIZE, "dataset_cache_user_max_bytes": 2 * SIZE}
    )
    other = ensure_local(data_server.add("/theirs.csv", CSV), "csv", shared, owner="bob")
    _age(other, 2 * DAY_S)  # the oldest copy on the node, but not alice's to evict
    first = ensure_local(data_server.add("/a1.csv", CSV), "csv", shared, owner="alice")
    ensure_local(data_server.add("/a2.csv", CSV), "csv", shared, owner="alice")
    with pytest.raises(CacheFull) as refused:  # both of alice's copies are in use
        ensure_local(data_server.add("/a3.csv", CSV), "csv", shared, owner="alice")
    assert refused.value.error == USER_FULL.format(limit=human_bytes(2 * SIZE))
    _age(first, DAY_S)
    third = ensure_local(data_server.url("/a3.csv"), "csv", shared, owner="alice")
    assert not first.exists() and other.exists() and third.exists()
    assert third.with_suffix(".lock").read_text().split()[1] == owner_tag("alice")
    assert not _leftovers(shared)


def test_a_dead_downloads_reservation_and_files_are_cleared(
    data_server: FakeDataServer, settings: Settings
) -> None:
    """A download whose process was killed leaves an unheld reservation and a `.part` file:
    the next reservation clears both, so they hold no room forever."""
    bounded = settings.model_copy(update={"dataset_cache_max_bytes": int(1.5 * SIZE)})
    root = bounded.resolved_cache_dir
    (root / RESERVATIONS).mkdir(parents=True)
    tag = "0" * 32
    (root / RESERVATIONS / tag).write_text(f"{SIZE} \n")
    part = root / f"{'a' * 64}.csv.{tag}.part"
    part.write_bytes(CSV)
    path = ensure_local(data_server.add("/after.csv", CSV), "csv", bounded)
    assert path.exists() and not part.exists() and not _leftovers(bounded)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a real file system that runs out of space."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_is_a_dataset_error_and_leaves_nothing_half_written(
    data_server: FakeDataServer, settings: Settings, tiny_disk: Path
) -> None:
    on_tiny = settings.model_copy(update={"dataset_cache_dir": str(tiny_disk)})
    big = CSV * 80  # about 1 MiB: more than the file system holds, within the cache bound
    url = data_server.add("/big.csv", big)
    with pytest.raises(DatasetError) as full:
        ensure_local(url, "csv", on_tiny)
    assert full.value.error == DISK_FULL
    assert not list(tiny_disk.glob("*.csv*")) and not _leftovers(on_tiny)
