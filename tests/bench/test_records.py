"""The run store: round trip, old run files, damaged lines, resume, byte-identical rewrites; compact figures."""

import json
import lzma
import multiprocessing
import os
from dataclasses import dataclass

from fake_runs import make_run
from PIL import Image

from pdt_bench import plots, records
from pdt_bench.compare import execute

NAN = float("nan")


def _runs():
    """Three records; the floats are of every kind JSON must carry back exactly (NaN and inf included)."""
    return {
        "baseline-seed0": make_run("baseline", 0, [2.302585092994046, 0.1 + 0.2], [0.1, 1 / 3]),
        "pdt-seed0": make_run("pdt", 0, [2.3, 5e-324], [0.2, 0.7816666666666666]),
        "pdt-seed1": make_run("pdt", 1, [2.3, NAN], [0.2, float("inf")], diverged=True),
    }


def _write_files(directory, runs):
    """The run files as the harness wrote them before the store: indented JSON, one file per run."""
    (directory / "runs").mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        (directory / "runs" / f"{name}.json").write_text(json.dumps(run, indent=1, allow_nan=True))


def _text(runs):
    """Exact comparison, NaN included (``nan != nan``, so ``==`` on records cannot be used here)."""
    return json.dumps(runs, allow_nan=True)


def test_a_packed_study_loads_the_records_it_was_given(tmp_path):
    runs = _runs()
    _write_files(tmp_path, runs)
    store = records.pack(tmp_path)
    assert store == tmp_path / records.STORE and not (tmp_path / "runs").exists()
    assert _text(records.load_named_runs(tmp_path)) == _text(runs)
    assert records.load_named_runs(tmp_path)["pdt-seed0"] == runs["pdt-seed0"]
    assert _text(records.load_run(tmp_path / "runs" / "pdt-seed1.json")) == _text(runs["pdt-seed1"])
    assert records.stored_config(tmp_path / "runs" / "baseline-seed0.json") == runs["baseline-seed0"]["config"]
    assert records.stored_config(tmp_path / "runs" / "ema-seed0.json") is None
    # One compact, sorted line per run: readable with xzcat.
    lines = lzma.decompress(store.read_bytes()).decode().splitlines()
    assert [json.loads(line)["name"] for line in lines] == sorted(runs)
    assert all(", " not in line and ": " not in line for line in lines)


def test_old_run_files_are_read_and_win_over_the_store(tmp_path):
    runs = _runs()
    _write_files(tmp_path, runs)  # a study from before the store: pretty-printed files only
    assert _text(records.load_runs(tmp_path)) == _text(list(runs.values()))
    records.pack(tmp_path)
    newer = make_run("pdt", 0, [1.0, 0.5], [0.5, 0.9])
    records.save_json(tmp_path / "runs" / "pdt-seed0.json", newer)  # finished since the last pack
    assert records.load_named_runs(tmp_path)["pdt-seed0"] == newer
    assert records.load_run(tmp_path / "runs" / "pdt-seed0.json") == newer
    records.pack(tmp_path)
    assert records.load_named_runs(tmp_path)["pdt-seed0"] == newer and not (tmp_path / "runs").exists()


def test_the_migration_converts_every_study_under_a_folder(tmp_path, capsys):
    for study in ("a", "b/c"):
        _write_files(tmp_path / study, _runs())
    assert records.main([str(tmp_path)]) == 0
    assert "3 run files -> runs.jsonl.xz" in capsys.readouterr().out
    for study in ("a", "b/c"):
        assert _text(records.load_named_runs(tmp_path / study)) == _text(_runs())
        assert not (tmp_path / study / "runs").exists()


def _damage(store, number, text):
    lines = lzma.decompress(store.read_bytes()).decode().splitlines()
    lines[number - 1] = text
    store.write_bytes(lzma.compress("".join(line + "\n" for line in lines).encode()))


def test_a_damaged_line_is_named_and_counts_as_not_run(tmp_path, capsys):
    _write_files(tmp_path, _runs())
    store = records.pack(tmp_path)
    capsys.readouterr()
    _damage(store, 2, '{"name":"pdt-seed0","run":{"task":"ha')  # pdt-seed0's line, cut short
    assert list(records.load_named_runs(tmp_path)) == ["baseline-seed0", "pdt-seed1"]
    assert f"{store}: line 2: not a readable run record" in capsys.readouterr().err
    assert records.stored_config(tmp_path / "runs" / "pdt-seed0.json") is None
    _damage(store, 1, '{"name":"baseline-seed0","run":{"config":null}}')  # JSON, but not a record
    assert list(records.load_named_runs(tmp_path)) == ["pdt-seed1"]
    assert f"{store}: line 1: not a readable run record (TypeError" in capsys.readouterr().err


def test_a_truncated_store_keeps_the_lines_before_the_damage(tmp_path, capsys):
    runs = {f"baseline-seed{s}": make_run("baseline", s, [float(s)] * 400, [0.5] * 400) for s in range(40)}
    _write_files(tmp_path, runs)
    store = records.pack(tmp_path)
    store.write_bytes(store.read_bytes()[: store.stat().st_size // 2])
    capsys.readouterr()
    kept = records.load_named_runs(tmp_path)
    assert 0 < len(kept) < len(runs) and all(kept[name] == runs[name] for name in kept)
    assert f"{store}: damaged after line" in capsys.readouterr().err


def test_a_rewrite_without_change_is_byte_identical(tmp_path):
    runs = _runs()
    _write_files(tmp_path / "one", runs)
    first = records.pack(tmp_path / "one").read_bytes()
    # The same runs, written in another order at another time, give the same bytes (no time stamp).
    _write_files(tmp_path / "two", dict(reversed(runs.items())))
    assert records.pack(tmp_path / "two").read_bytes() == first
    # Packing a run file that holds what the store holds already leaves the store untouched.
    store = tmp_path / "one" / records.STORE
    os.utime(store, ns=(0, 0))
    records.save_json(tmp_path / "one" / "runs" / "pdt-seed0.json", runs["pdt-seed0"])
    assert records.pack(tmp_path / "one") == store
    assert store.read_bytes() == first and store.stat().st_mtime_ns == 0
    assert records.pack(tmp_path / "one") is None  # nothing to fold


MEASURED = ("train_loss", "batch_loss", "train_acc", "val_loss", "val_acc", "lr")
CLOCKS = ("train_time", "pdt_time", "eval_time")


def _full_precision_run(seed):
    """A run with PDT whose every float has 17 digits, as the harness measured them before :func:`records.rounded`."""
    third = 1 / 3 + seed
    stats = {
        "predicted": True,
        "accepted": 7,
        "numel": 9,
        "accepted_ratio": 7 / 9,
        "accepted_ratio_per_param": {"0.weight": 2 / 3, "0.bias": 1.0},
        "eigenvalues": [[0.9991232124751082, -0.0123456789012345], [None, 0.0]],
        "layers": {"0.weight": {"rank": 2, "eigenvalues": [[1.2026918540347713, 0.0]], "reason": None}},
        "pacing": {"loss": 2.2361056804656982, "verdict": "good", "reference_loss": 2.2361056804656985},
    }
    run = make_run("pdt", seed, [2.302585092994046, 0.1 + 0.2], [third, 0.7816666666666666], pdt=[None, stats])
    for e in run["epochs"]:
        e |= {"train_time": 0.9171030469997277 * e["epoch"] + third, "eval_time": 0.317247551000037, "lr": 0.04996642}
    run["epochs"][1]["pdt_time"] = 0.016469817999677616
    run["overhead"] = {"pdt_time": 0.016469817999677616, "numel": 9}
    return run


def _close(a, b, digits):
    """``a`` and ``b`` (numbers, or lists and dicts of them) agree to ``digits`` significant digits."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], digits) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, digits) for x, y in zip(a, b))
    if isinstance(a, float):
        return abs(a - b) <= 0.5 * 10 ** (1 - digits) * abs(a)
    return a == b


def test_a_pack_rounds_the_clocks_and_diagnostics_and_keeps_the_measured_values_exact(tmp_path):
    runs = {f"pdt-seed{s}": _full_precision_run(s) for s in range(2)}
    _write_files(tmp_path, runs)
    store = records.pack(tmp_path)
    for name, packed in records.load_named_runs(tmp_path).items():
        for was, row in zip(runs[name]["epochs"], packed["epochs"]):
            assert [row[k].hex() for k in MEASURED] == [was[k].hex() for k in MEASURED]  # bit for bit
            assert _close([was[k] for k in CLOCKS], [row[k] for k in CLOCKS], records.CLOCK_DIGITS)
            assert row["train_time"] != was["train_time"]  # rounded, not just kept
            if was["pdt"]:
                same = ("accepted_ratio", "pacing", "accepted", "predicted")
                assert {k: row["pdt"][k] for k in same} == {k: was["pdt"][k] for k in same}
                assert _close(was["pdt"], row["pdt"], records.DIAGNOSTIC_DIGITS)
                assert row["pdt"]["eigenvalues"][0] == [0.999123, -0.0123457]
        assert _close(runs[name]["overhead"], packed["overhead"], records.CLOCK_DIGITS)
        assert records.rounded(packed) == packed  # rounding twice changes nothing
    # A single run file is written rounded too: the run reads the same before and after a pack.
    packed = records.load_named_runs(tmp_path)
    records.save_json(tmp_path / "runs" / "pdt-seed0.json", records.rounded(runs["pdt-seed0"]))
    assert records.load_named_runs(tmp_path) == packed
    first = store.read_bytes()
    os.utime(store, ns=(0, 0))
    assert records.pack(tmp_path) == store and records.pack(tmp_path, repack=True) == store
    assert store.read_bytes() == first and store.stat().st_mtime_ns == 0  # packing again: the same bytes, not rewritten


def test_an_old_full_precision_store_loads_exactly_and_a_repack_rounds_it(tmp_path, capsys):
    runs = {f"pdt-seed{s}": _full_precision_run(s) for s in range(2)}
    lines = "".join(json.dumps({"name": n, "run": r}, separators=(",", ":")) + "\n" for n, r in sorted(runs.items()))
    old = lzma.compress(lines.encode())  # a store written before the rounding
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / records.STORE).write_bytes(old)
    assert _text(records.load_named_runs(tmp_path / "study")) == _text(runs)
    assert records.main([str(tmp_path)]) == 0  # no runs/ folder: plain packing leaves the store alone
    assert (tmp_path / "study" / records.STORE).read_bytes() == old
    assert records.main(["--repack", str(tmp_path)]) == 0
    assert "0 run files -> runs.jsonl.xz" in capsys.readouterr().out
    repacked = records.load_named_runs(tmp_path / "study")
    assert _text(repacked) == _text({n: records.rounded(r) for n, r in runs.items()}) != _text(runs)
    for name, run in repacked.items():
        measured = [[e[k] for k in MEASURED] for e in run["epochs"]]
        assert measured == [[e[k] for k in MEASURED] for e in runs[name]["epochs"]]
    assert not (tmp_path / "study" / "runs").exists()


@dataclass
class _Config:
    method: str
    seed: int


def _work(config, path, report=None):
    """A run: its record, written where the harness's own runs write theirs."""
    records.save_json(path, make_run(config.method, config.seed, [1.0, 0.5], [0.5, 0.9]))
    return path


def _finished(path, config):
    return records.stored_config(path) is not None


def test_a_study_resumes_from_its_store_and_reruns_only_a_damaged_run(tmp_path, capsys):
    configs = [_Config("baseline", 0), _Config("pdt", 0), _Config("pdt", 1)]
    first = execute(configs, tmp_path, jobs=0, quiet=True, work=_work, finished=_finished)
    store = tmp_path / records.STORE
    assert first == [records.load_named_runs(tmp_path)[f"{c.method}-seed{c.seed}"] for c in configs]
    ran = []

    def counting(config, path, report=None):
        ran.append(f"{config.method}-seed{config.seed}")
        return _work(config, path, report)

    assert execute(configs, tmp_path, jobs=0, quiet=True, work=counting, finished=_finished) == first
    assert ran == []  # every run found in the store is reused
    _damage(store, 2, "not json")
    capsys.readouterr()
    assert execute(configs, tmp_path, jobs=0, quiet=True, work=counting, finished=_finished) == first
    assert ran == ["pdt-seed0"] and f"{store}: line 2: not a readable run record" in capsys.readouterr().err
    assert list(records.load_named_runs(tmp_path)) == ["baseline-seed0", "pdt-seed0", "pdt-seed1"]


def test_a_figure_is_a_palette_png_that_keeps_every_line_colour(tmp_path):
    curves = {"baseline": [[10, 3.0], [20, 2.5]], "pdt": [[10, 2.9], [20, 2.2]], "ema": [[10, 3.1], [20, 2.6]]}
    runs = [{"method": m, "seed": 0, "curve": c, "diverged": False} for m, c in curves.items()]
    path = plots.plot_steps(tmp_path / "steps.png", runs)
    image = Image.open(path)
    assert image.mode == "P" and image.width == 7 * plots.DPI  # the figure is 7 inches wide
    used = [color for _, color in image.convert("RGB").getcolors(plots.COLORS)]
    for line in [(0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)]:  # tab10's C0, C1, C2
        assert min(max(abs(a - b) for a, b in zip(color, line)) for color in used) <= 2


def test_a_store_of_concatenated_streams_is_read_whole(tmp_path, capsys):
    """Self-attack (second pass): ``cat a.xz b.xz`` (which ``xz -d`` reads whole) lost b's runs without a word."""
    runs = _runs()
    first, second = tmp_path / "a", tmp_path / "b"
    _write_files(first, {"baseline-seed0": runs["baseline-seed0"]})
    _write_files(second, {"pdt-seed0": runs["pdt-seed0"]})
    joined = records.pack(first).read_bytes() + records.pack(second).read_bytes()
    (first / records.STORE).write_bytes(joined)
    assert list(records.load_named_runs(first)) == ["baseline-seed0", "pdt-seed0"]
    assert capsys.readouterr().err == ""


def _pack_after(directory, names, barrier):
    _write_files(directory, {name: _runs()[name] for name in names})
    barrier.wait()
    records.pack(directory)


def test_two_processes_packing_one_study_at_once_keep_every_run(tmp_path):
    """Self-attack (second pass): two studies sharing an ``--out`` packed at once; the second to unlink a run
    file died with ``FileNotFoundError`` (6 of 6 tries), and one could write a store without the other's runs."""
    context = multiprocessing.get_context("fork")
    for attempt in range(4):
        directory = tmp_path / str(attempt)
        barrier = context.Barrier(2)
        workers = [
            context.Process(target=_pack_after, args=(directory, names, barrier))
            for names in (["baseline-seed0"], ["pdt-seed0", "pdt-seed1"])
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        assert [w.exitcode for w in workers] == [0, 0]
        assert list(records.load_named_runs(directory)) == ["baseline-seed0", "pdt-seed0", "pdt-seed1"]
        assert not (directory / "runs").exists()
