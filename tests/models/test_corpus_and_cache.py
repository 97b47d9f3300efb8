"""models/: text preparation and the cache location rule (no network: the corpus fetch is not exercised here)."""

from iceformer.models import corpus
from iceformer.models._cache import cache_dir


def test_untag_strips_brown_tags_and_quotes():
    line = "The/at Fulton/np-tl jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./."
    assert corpus.untag(line) == 'The Fulton jury said " no evidence " .'


def test_untag_keeps_slashes_inside_words():
    assert corpus.untag("and/or/cc 1/2/cd") == "and/or 1/2"


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ICEFORMER_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir("x", "y") == tmp_path / "c" / "x" / "y"
    assert (tmp_path / "c" / "x" / "y").is_dir()
    monkeypatch.delenv("ICEFORMER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("z") == tmp_path / "xdg" / "iceformer" / "z"
