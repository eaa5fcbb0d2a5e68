"""minigpt lens-eval (lens/corpus.py): per-row statistics over a corpus, exact when split,
resumable after a kill, and the same on a Dask cluster (lens/cluster.py)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import lens
from lens import corpus
from minigpt.errors import MiniGPTError
from minigpt.train import evaluate as train_evaluate
from tests.conftest import ROOT, run_cli

SAMPLE = ROOT / "tests" / "data" / "english-sample.txt"
BUDGET = 300  # tokens: a few windows of the tiny model's 64, cheap


def make_run(model, source, tokens, shard_tokens=64, subblocks=False, stride=1, tuned=None, budget=BUDGET):
    rows = corpus.Rows.plan(model.config.n_layer, subblocks, stride)
    return corpus.Run(model=corpus.model_source(source), data=str(SAMPLE), files=1, n_ctx=model.config.n_ctx,
                      labels=list(rows.labels), subblocks=subblocks, stride=stride, tuned=tuned, token_budget=budget,
                      shard_tokens=shard_tokens, data_sha256=corpus.tokens_sha256(tokens))


def report_of(model, checkpoint, tokens, **options):
    run_options = {k: options.pop(k) for k in ("shard_tokens", "subblocks", "stride") if k in options}
    run = make_run(model, checkpoint, tokens, **run_options)
    return corpus.evaluate(model, tokens, run, **options).report()


def assert_same_figures(a, b, rel=1e-12):
    """Counts exactly, float figures to `rel` relative."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_same_figures(a[key], b[key], rel)
        elif isinstance(a[key], list):
            assert len(a[key]) == len(b[key])
            for x, y in zip(a[key], b[key]):
                assert_same_figures(x, y, rel) if isinstance(x, dict) else (x == y or pytest.fail(f"{key}: {x} != {y}"))
        elif isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-300), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def tokens(model):
    return corpus.read_tokens(SAMPLE, model.tokenizer, BUDGET)[0]


@pytest.fixture(scope="module")
def reference(model, checkpoint, tokens):
    """The single-process report with one window per shard."""
    return report_of(model, checkpoint, tokens, shard_tokens=64)


# -- the figures ------------------------------------------------------------------------------


def test_windows_cover_every_target_once():
    assert corpus.windows(130, 64) == [(0, 65), (64, 129), (128, 131)]
    shards = corpus.shard_windows(130, 64, shard_tokens=128)
    assert shards == [[(0, 65), (64, 129)], [(128, 131)]]
    assert corpus.shard_windows(130, 64, shard_tokens=1) == [[w] for w in corpus.windows(130, 64)]


def reference_cells(model, window):
    """Each row's per-position figures for one window, from the whole (T, V) logits in float64
    (no chunks, no formulas.py): -log p(target), KL(final || row), entropy, top-1, target rank."""
    inputs, targets = window[:-1], window[1:]
    trace = model.run(inputs)
    logits = [lens.decode(model, resid).astype(np.float64) for resid in trace.residual]
    logits[-1] = trace.logits.astype(np.float64)
    log_p = [x - (x.max(axis=1, keepdims=True) + np.log(np.exp(x - x.max(axis=1, keepdims=True)).sum(axis=1, keepdims=True)))
             for x in logits]
    p_final = np.exp(log_p[-1])
    at = np.arange(len(inputs))
    cells = {"nll": [], "kl": [], "entropy": [], "top1": [], "rank": []}
    for x, lp in zip(logits, log_p):
        cells["nll"].append(-lp[at, targets])
        cells["kl"].append((p_final * (log_p[-1] - lp)).sum(axis=1))
        cells["entropy"].append(-(np.exp(lp) * lp).sum(axis=1))
        cells["top1"].append(x.argmax(axis=1))
        cells["rank"].append(1 + (x > x[at, targets][:, None]).sum(axis=1))
    return {name: np.array(values) for name, values in cells.items()}, targets


def test_figures_average_each_rows_cells_over_every_window(model, tokens, reference):
    """Each row's figures are its cells' values (computed here plainly, in float64) averaged over
    every target of every window."""
    windows = [reference_cells(model, tokens[start:stop].astype(np.int64))
               for start, stop in corpus.windows(len(tokens) - 1, model.config.n_ctx)]
    cells = {name: np.concatenate([w[0][name] for w in windows], axis=1) for name in windows[0][0]}
    targets = np.concatenate([w[1] for w in windows])
    assert targets.size == BUDGET == reference["tokens"]
    for r, row in enumerate(reference["logit_lens"]):
        assert row["row"] == ["input", "h0", "h1"][r]
        assert row["cross_entropy"] == pytest.approx(cells["nll"][r].mean(), rel=1e-5)
        assert row["kl_final"] == pytest.approx(cells["kl"][r].mean(), rel=1e-4, abs=1e-6)
        assert row["entropy"] == pytest.approx(cells["entropy"][r].mean(), rel=1e-5)
        assert row["top1_agrees_final"] == (cells["top1"][r] == cells["top1"][-1]).mean()
        assert row["top1_accuracy"] == (cells["top1"][r] == targets).mean()
        ranks = np.sort(cells["rank"][r])
        for name, q in corpus.QUANTILES.items():  # the smallest rank with at least q of the tokens at or below it
            assert row["rank"][name] == ranks[math.ceil(q * BUDGET) - 1]
    final = reference["logit_lens"][-1]
    assert final["kl_final"] == 0.0 and final["top1_agrees_final"] == 1.0


def test_last_row_is_the_models_own_loss(model, checkpoint):
    """Over whole windows, the output row's cross-entropy is the loss training reports on the data."""
    n_ctx = model.config.n_ctx
    tokens, _ = corpus.read_tokens(SAMPLE, model.tokenizer, 3 * n_ctx)
    report = report_of(model, checkpoint, tokens)
    loss = train_evaluate(model.params, model.config, tokens, batch_size=2, max_tokens=3 * n_ctx)
    assert report["logit_lens"][-1]["cross_entropy"] == pytest.approx(loss, rel=1e-5)


def test_bytes_are_the_datas_own(model, checkpoint, tmp_path):
    """Bits per byte divide by the UTF-8 bytes of the text read: every file's, documents apart."""
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    texts = ["Café au lait, s'il vous plaît.\n", "Ünïcödé and “quotes” — dashes.\n" * 3, "   \n"]
    for i, text in enumerate(texts):
        (folder / ("sub" if i else "") / f"{i}.txt").write_text(text, encoding="utf-8")
    tokens, files = corpus.read_tokens(folder, model.tokenizer)
    assert len(files) == 3
    assert np.count_nonzero(tokens == model.tokenizer.eot_token) == 2  # the blank document is skipped
    report = report_of(model, checkpoint, tokens)
    assert report["bytes"] == sum(len(t.encode("utf-8")) for t in texts[:2])
    assert report["tokens"] == len(tokens) - 1
    row = report["logit_lens"][0]
    assert row["bits_per_byte"] == pytest.approx(row["cross_entropy"] * report["tokens"] / report["bytes"] / math.log(2))


def test_split_runs_give_the_same_figures(model, checkpoint, tokens, reference):
    """Shards of any size, and a run stopped and resumed, give the same figures."""
    assert_same_figures(reference, report_of(model, checkpoint, tokens, shard_tokens=10_000))
    assert_same_figures(reference, report_of(model, checkpoint, tokens, shard_tokens=128))


def test_resume_takes_over_the_finished_shards(model, checkpoint, tokens, reference, tmp_path):
    state = tmp_path / "state"
    run = make_run(model, checkpoint, tokens)

    class Stop(Exception):
        pass

    def stop_after_two(i):
        if i == 1:
            raise Stop

    with pytest.raises(Stop):
        corpus.evaluate(model, tokens, run, state_path=state, on_shard=stop_after_two)
    computed = []
    totals = corpus.evaluate(model, tokens, run, state_path=state, resume=True, on_shard=computed.append)
    assert computed == list(range(2, len(corpus.shard_windows(BUDGET, 64, 64))))
    assert_same_figures(reference, totals.report(), rel=0)
    other = make_run(model, checkpoint, tokens, stride=2)
    with pytest.raises(MiniGPTError, match="state of another run.*stride"):
        corpus.evaluate(model, tokens, other, state_path=state, resume=True)


def test_subblocks_and_stride_rows(model, checkpoint, tokens):
    report = report_of(model, checkpoint, tokens, subblocks=True, stride=2)
    assert [row["row"] for row in report["logit_lens"]] == ["input", "h0.attn", "h0", "h1.attn", "h1"]


# -- the tuned lens (a stand-in until lens/tuned.py: the API of issue 16) ---------------------


class ScaledTunedLens:
    """Translates each row by a fixed scale: enough to tell the two lenses apart."""

    def __init__(self, model, scale):
        self.model, self.scale = model, scale

    @classmethod
    def load(cls, path, model):
        spec = json.loads(Path(path).read_text())
        if spec["n_layer"] != model.config.n_layer:
            raise MiniGPTError(f"{path} is the tuned lens of another model")
        return cls(model, spec["scale"])

    def translate(self, label, resid):
        assert label in ("input", "h0")  # every row but the last
        return (resid * np.float32(self.scale)).astype(resid.dtype)


@pytest.fixture
def tuned_file(monkeypatch, tmp_path, model):
    monkeypatch.setattr(lens, "TunedLens", ScaledTunedLens, raising=False)
    path = tmp_path / "tuned.json"
    path.write_text(json.dumps({"n_layer": model.config.n_layer, "scale": 2.0}))
    return path


def test_tuned_lens_rows(model, checkpoint, tokens, reference, tuned_file):
    tuned = corpus.load_tuned(tuned_file, model)
    report = report_of(model, checkpoint, tokens, tuned=tuned)
    assert_same_figures(reference["logit_lens"][0], report["logit_lens"][0])
    assert report["tuned_lens"][-1] == report["logit_lens"][-1]  # the output row is the model's own in both
    assert report["tuned_lens"][0]["cross_entropy"] != report["logit_lens"][0]["cross_entropy"]
    identity = ScaledTunedLens(model, 1.0)
    assert_same_figures({"rows": report_of(model, checkpoint, tokens, tuned=identity)["tuned_lens"]},
                        {"rows": reference["logit_lens"]})


def test_tuned_lens_of_another_model_is_one_line(checkpoint, tuned_file, tmp_path, capsys):
    from minigpt.cli import main

    tuned_file.write_text(json.dumps({"n_layer": 7, "scale": 1.0}))
    out = tmp_path / "out.json"
    code = main(["lens-eval", str(SAMPLE), "-m", str(checkpoint), "--json", str(out), "--tuned", str(tuned_file),
                 "--tokens", "10"])
    assert code == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"minigpt: error: {tuned_file} is the tuned lens of another model"]
    assert not out.exists()


# -- the command ------------------------------------------------------------------------------


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def test_command_writes_json_and_plot(checkpoint, reference, tmp_path):
    out, figure = tmp_path / "stats.json", tmp_path / "bpb.png"
    done = run_cli("lens-eval", SAMPLE, "-m", checkpoint, "--json", out, "--tokens", BUDGET, "--plot", figure)
    assert done.returncode == 0, done.stderr
    report = read_json(out)
    assert_same_figures({k: reference[k] for k in ("tokens", "bytes", "logit_lens")},
                        {k: report[k] for k in ("tokens", "bytes", "logit_lens")})
    assert report["labels"] == ["input", "h0", "h1"] and report["n_ctx"] == 64 and report["token_budget"] == BUDGET
    assert figure.stat().st_size > 1000
    assert not Path(f"{out}.state").exists()


def test_plot_draws_both_lenses(reference):
    from lens import plot

    report = {**reference, "labels": ["input", "h0", "h1"], "model_name": "tiny", "tuned_lens": reference["logit_lens"]}
    figure = plot.bits_per_byte(report)
    lines = {line.get_gid(): line for line in figure.axes[0].get_lines()}
    assert set(lines) == {"logit_lens", "tuned_lens"}
    assert list(lines["logit_lens"].get_ydata()) == [row["bits_per_byte"] for row in reference["logit_lens"]]


def test_bad_inputs_are_one_line(checkpoint, tmp_path):
    empty, binary, no_text = tmp_path / "empty.txt", tmp_path / "binary.txt", tmp_path / "folder"
    empty.write_text("")
    binary.write_bytes(bytes(range(256)) * 4)
    no_text.mkdir()
    (no_text / "notes.md").write_text("not a .txt file")
    out = tmp_path / "out.json"
    cases = [
        ([empty], "holds no text"),
        ([binary], "is not UTF-8 text"),
        ([no_text], "holds no .txt file"),
        ([tmp_path / "missing"], "data not found"),
        ([SAMPLE, "--tokens", "0"], "--tokens must be at least 1"),
        ([SAMPLE, "--tokens", "many"], "--tokens must be a whole number"),
        ([SAMPLE, "--tuned", tmp_path / "none.pt"], "tuned lens file not found"),
        ([SAMPLE, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
        ([SAMPLE, "--tuned", SAMPLE, "--subblocks"], "--tuned cannot go with --subblocks"),
        ([SAMPLE, "--resume"], "nothing to resume"),
        ([SAMPLE, "--plot", tmp_path / "figure.gif"], "cannot tell the figure format"),
    ]
    for args, message in cases:
        done = run_cli("lens-eval", *args, "-m", checkpoint, "--json", out)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and message in lines[0], (args, done.stderr)
        assert not out.exists()
    Path(f"{out}.state").write_bytes(b"left by a killed run")
    done = run_cli("lens-eval", SAMPLE, "-m", checkpoint, "--json", out)
    assert done.returncode == 1 and "holds an interrupted run: finish it with --resume" in done.stderr
    done = run_cli("lens-eval", SAMPLE, "-m", checkpoint, "--json", out, "--resume")
    assert done.returncode == 1 and "is not a lens-eval state file" in done.stderr
    assert Path(f"{out}.state").read_bytes() == b"left by a killed run" and not out.exists()


def test_killed_run_resumes_to_the_same_json(checkpoint, tmp_path):
    """A run killed (SIGKILL) after some shards, then --resume: the JSON of an uninterrupted run."""
    budget = 1280  # 20 windows, one per shard
    args = ["lens-eval", SAMPLE, "-m", checkpoint, "--tokens", budget, "--shard-tokens", 64]
    whole = tmp_path / "whole.json"
    assert run_cli(*args, "--json", whole).returncode == 0

    out = tmp_path / "killed.json"
    state = Path(f"{out}.state")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "minigpt", *map(str, args), "--json", str(out)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not state.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert state.exists() and not out.exists()
    with np.load(state) as saved:
        assert 0 < saved["done"].sum() < len(saved["done"])  # killed halfway
    done = run_cli(*args, "--json", out, "--resume")
    assert done.returncode == 0, done.stderr
    assert read_json(out) == read_json(whole)
    assert not state.exists()


# -- on Dask ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_client():
    pytest.importorskip("distributed")
    from lens.cluster import dask_client

    with dask_client(workers=2) as client:
        yield client


FLOAT32_ROUNDING = 1e-7  # relative: figures of logits that differ in their last bits (worker_environ)


def test_two_workers_give_the_single_process_figures(model, checkpoint, tokens, reference, cluster_client, tmp_path):
    """Bit for bit those of one process with a worker's BLAS threads; to float32 rounding those
    of this process, whose OpenBLAS may use both cores for a product (lens.cluster.worker_environ)."""
    from lens.cluster import worker_environ

    run = make_run(model, checkpoint, tokens)
    totals = corpus.evaluate(model, tokens, run, client=cluster_client).report()
    assert len(cluster_client.scheduler_info()["workers"]) == 2
    single = tmp_path / "single.json"
    done = run_cli("lens-eval", SAMPLE, "-m", checkpoint, "--tokens", BUDGET, "--json", single, env=worker_environ(2))
    assert done.returncode == 0, done.stderr
    figures = ("tokens", "bytes", "logit_lens")
    assert_same_figures({k: read_json(single)[k] for k in figures}, {k: totals[k] for k in figures}, rel=0)
    assert_same_figures(reference, totals, rel=FLOAT32_ROUNDING)


def test_a_killed_worker_changes_nothing(model, checkpoint, reference, cluster_client, tmp_path):
    """A worker killed halfway: its shards are recomputed elsewhere, the figures do not change."""
    budget = 1280
    tokens = corpus.read_tokens(SAMPLE, model.tokenizer, budget)[0]
    run = make_run(model, checkpoint, tokens, budget=budget)
    unharmed = corpus.evaluate(model, tokens, run, client=cluster_client).report()
    pids = cluster_client.run(os.getpid)
    victim = sorted(pids.values())[0]
    killed = []

    def kill_once(i):
        if not killed:
            os.kill(victim, signal.SIGKILL)
            killed.append(i)

    totals = corpus.evaluate(model, tokens, run, client=cluster_client, state_path=tmp_path / "state", on_shard=kill_once)
    assert killed
    assert_same_figures(unharmed, totals.report(), rel=0)
    assert_same_figures(corpus.evaluate(model, tokens, run).report(), totals.report(), rel=FLOAT32_ROUNDING)
    cluster_client.wait_for_workers(2, timeout=60)  # the nanny restarted it
    assert victim not in cluster_client.run(os.getpid).values()


def test_workers_option_gives_the_single_process_json(checkpoint, tmp_path):
    single, dask = tmp_path / "single.json", tmp_path / "dask.json"
    args = ["lens-eval", SAMPLE, "-m", checkpoint, "--tokens", BUDGET, "--shard-tokens", 64]
    assert run_cli(*args, "--json", single).returncode == 0
    done = run_cli(*args, "--json", dask, "--workers", 2)
    assert done.returncode == 0, done.stderr
    assert read_json(dask) == read_json(single)


def test_unreachable_scheduler_is_one_line(checkpoint, tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    done = run_cli("lens-eval", SAMPLE, "-m", checkpoint, "--json", tmp_path / "out.json", "--tokens", 10,
                   "--scheduler", f"tcp://127.0.0.1:{port}")
    assert time.monotonic() - started < 30
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith(f"minigpt: error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
    assert not (tmp_path / "out.json").exists()
