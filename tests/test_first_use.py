"""The first Lab() on a fresh machine says it is compiling (once), instead of sitting silent for seconds."""

from __future__ import annotations

import io

from pkvmlab import Lab
from pkvmlab.first_use import announce, pending_builds


def test_a_cached_lab_prints_nothing(capsys) -> None:
    Lab()
    Lab()
    assert pending_builds() == []
    assert capsys.readouterr().out == ""


def test_a_fresh_cache_announces_both_builds_and_the_time(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path))      # nothing built here yet
    assert pending_builds() == ["the native hypercall hook", "the EL2 firmware"]
    assert pending_builds(native=False) == ["the EL2 firmware"]
    out = io.StringIO()
    with announce(out=out):
        pass
    text = out.getvalue()
    assert text.startswith("pkvmlab: first use here: compiling the native hypercall hook and the EL2 firmware")
    assert text.rstrip().endswith(" s") and text.count("\n") == 1


def test_the_first_lab_really_prints_it(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PKVMLAB_CACHE", str(tmp_path))
    Lab(native=False)                                        # builds the firmware into the empty cache
    out = capsys.readouterr().out
    assert "compiling the EL2 firmware" in out and "done in" in out
    Lab(native=False)
    assert capsys.readouterr().out == ""
