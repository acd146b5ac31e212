"""Fuzzing the ``fl-smpc`` command line in-process: ``fl_smpc.cli.main(argv)`` with hostile arguments and files.

Each example starts from one of a few valid command lines (the toy run, pairwise, sms, resume, the two
websocket securities, the output files, split-data, certs) and adds random flags and values: hostile
numbers, names, addresses, paths to bad, missing and valid files, random text. Whatever the argv:

- the exit status is 0, 1 (a run that failed) or 2 (bad input), never a traceback or a hang;
- stderr holds at most one ``prog: error: ...`` line (after argparse's usage block, if any), and only
  the command's own ``wrote PATH`` lines besides;
- nothing is left half-written (no temporary file anywhere), and a refused input (2) writes nothing.

Runs are bounded so that an example takes a fraction of a second: at most 2 rounds of 2 local steps,
websocket timeouts of 0.3 s (nothing listens on port 1), the packaged SMS corpus replaced by a small file.
The random examples are few; the sweeps at the end are not random: every value of its kind for every
flag through the checks before a run, every split-data flag and value, every input file for each file flag.
"""

import os
import shutil
from dataclasses import replace
from itertools import count
from pathlib import Path

import pytest
import torch
from fuzzing import fuzz_settings, time_limit
from hypothesis import given, strategies as st

from fl_smpc import FLConfig, train_federated
from fl_smpc.cli import certs, main, split_data
from fl_smpc.cli.train import build_parser
from fl_smpc.history_io import save_checkpoint
from fl_smpc.network.csvdata import write_csv
from fl_smpc.network.tls import create_federation


class In(str):
    """A file of the example's input directory (made by ``inputs``, or missing)."""


class Out(str):
    """A file of the example's (empty) output directory."""


ADDRESSES = "bob=127.0.0.1:1,alice=127.0.0.1:1,jane=127.0.0.1:1"  # refused at once: nothing listens on port 1
TRAIN_BASES = [
    ["--seed", "0"],
    ["--seed", "0", "--aggregation", "pairwise", "--weighting", "equal", "--batch-size", "1"],
    ["--seed", "0", "--dataset", "sms", "--data-file", In("messages.tsv"), "--features", "16"],
    ["--seed", "0", "--resume", In("run.json"), "--checkpoint", Out("run.json")],
    ["--seed", "0", "--transport", "websocket", "--workers", ADDRESSES, "--insecure", "--timeout", "0.3"],
    ["--seed", "0", "--transport", "websocket", "--workers", ADDRESSES, "--certs", In("certs"), "--timeout", "0.3"],
    ["--seed", "0", "--plot", Out("x.png"), "--history", Out("h.csv"), "--checkpoint", Out("run.json")],
]
SPLIT_BASES = [["split-data", "--out", Out("split")], ["split-data", "--out", Out("s"), "--csv", In("owner.csv")]]
CERTS_BASES = [["certs", "--out", Out("certs")], ["certs", "--out", In("certs"), "--parties", "dave"]]

NUMBERS = ["-1", "0", "1", "2", "3", "7", "0.5", "1e-300", "nan", "inf", "-inf", "1e39", "4294967296", "9" * 30,
           "0x10", "1_000", " 2", "", "+1", "-0", "\u0662", "1e400"]  # fmt: skip
NAMES = ["bob,alice,jane", "a,b", "a,b,c,d,e,f,g", "bob,bob,jane", "../x,b,c", "me,a,b", "model,a,b", "a b,c,d",
         ",", "", "a,,b", "x" * 65 + ",b,c", "bob,alice,jane\n", ADDRESSES, "bob=127.0.0.1:70000,alice=h:1,jane=h:2",
         "bob=[::1]:1,alice=127.0.0.1:1,jane=localhost:1", "bob=10.0.0.1:1,alice=127.0.0.1:1,jane=127.0.0.1:1",
         "bob=127.0.0.1:1,bob=127.0.0.1:2"]  # fmt: skip
CHOICES = ["toy", "sms", "additive", "pairwise", "samples", "equal", "iid", "skewed", "sse", "bce", "virtual",
           "websocket", "model", "bob", "Bob"]  # fmt: skip
INPUTS = ["owner.csv", "short.csv", "header.csv", "garbage.bin", "empty.txt", "messages.tsv", "messages_bad.tsv",
          "run.json", "run_bad.json", "nested.json", "certs", "certs_empty", "new\nline.csv", "adir", "missing.csv",
          "nodir/x.csv"]  # fmt: skip
OUTPUTS = ["x.png", "h.csv", "run.json", "x.foo", "x", "sub/x.png", "", "."]
# No digits (the numbers above are the hostile ones; a random "99999" would be a legitimately long run), no NUL
# or lone surrogate (no OS passes them in argv), no "/" (a random absolute path would write outside the example).
text = st.text(st.characters(blacklist_categories=("Cs", "Nd"), blacklist_characters="\x00/"), max_size=12)
values = st.one_of(
    st.sampled_from(NUMBERS),
    st.sampled_from(NAMES),
    st.sampled_from(CHOICES),
    st.sampled_from([In(name) for name in INPUTS] + [Out(name) for name in OUTPUTS]),
    text,
)
PATH_VALUES = [In(name) for name in INPUTS] + [Out(name) for name in OUTPUTS]


def typed_values(parser) -> dict:
    """flag -> the values most likely to get past argparse to the checks behind it (numbers for a number...)."""
    kinds = {}
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0:  # --help, --json, --insecure...: no value
            continue
        if action.choices:
            kind = [*sorted(action.choices), "", "Toy"]
        elif action.type is not None and action.type.__name__ in ("int", "float", "finite_float"):
            kind = NUMBERS
        elif action.metavar in ("PATH", "PATH.csv", "DIR") or action.dest in ("out", "csv", "data"):
            kind = PATH_VALUES
        else:
            kind = NAMES + CHOICES
        for flag in action.option_strings:
            kinds[flag] = kind
    return kinds


ODD_FLAGS = ["--", "--nope"]


def argv_from(base, parser, abbreviations=()):
    """One of ``base`` plus up to 4 flags of ``parser`` (or odd ones), most with a value of their type, some with
    any value (a stray one when the flag takes none) or none."""
    kinds = typed_values(parser)
    flags = sorted({s for action in parser._actions for s in action.option_strings} - {"-h"}) + list(abbreviations)
    flags += ODD_FLAGS

    def pair(flag):
        typed = kinds.get(flag)
        odd = [st.tuples(st.just(flag), values), st.just((flag,))]
        return st.one_of(*([st.tuples(st.just(flag), st.sampled_from(typed))] * 6 if typed else []), *odd)

    pairs = st.lists(st.sampled_from(flags).flatmap(pair), max_size=4)
    return st.tuples(st.sampled_from(base), pairs).map(lambda t: [*t[0], *(x for p in t[1] for x in p)])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """The files the examples point at: valid ones, broken ones and odd ones (copied afresh for each example)."""
    d = tmp_path_factory.mktemp("fuzz-cli-inputs")
    data = torch.tensor([[1.0, 1, 1], [0, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0], [0, 1, 0]])
    target = torch.tensor([[1.0], [1], [0], [0], [1], [0]])
    write_csv(str(d / "owner.csv"), data, target)
    write_csv(str(d / "new\nline.csv"), data, target)
    write_csv(str(d / "short.csv"), data[:2], target[:2])
    (d / "header.csv").write_text("x0,x1,label\n")
    (d / "garbage.bin").write_bytes(bytes(range(256)) * 2)
    (d / "empty.txt").write_bytes(b"")
    words = ["free prize now", "call me later", "win cash today", "see you at lunch", "claim your reward"]
    lines = [f"{'spam' if i % 3 == 0 else 'ham'}\t{words[i % 5]} {i}" for i in range(30)]
    (d / "messages.tsv").write_text("\n".join(lines) + "\n")
    (d / "messages_bad.tsv").write_text("ham\tfine\nhm\tnope\n")
    history = train_federated(FLConfig(seed=0, rounds=2, local_steps=1))
    history.rounds = history.rounds[:1]
    save_checkpoint(str(d / "run.json"), history)
    (d / "run_bad.json").write_text('{"format": "fl-smpc-checkpoint/1", "config": {"rounds": 0}}')
    (d / "nested.json").write_text("[" * 5000 + "]" * 5000)
    create_federation(str(d / "certs"), ["model", "bob", "alice", "jane"], days=1)
    (d / "certs_empty").mkdir()
    (d / "adir").mkdir()
    return d


@pytest.fixture
def bounded(monkeypatch, inputs):
    """Runs of at most 2 rounds x 2 local steps, websocket timeouts of 0.3 s, a small corpus for sms."""
    import fl_smpc.runner
    import fl_smpc.sms.experiment
    from fl_smpc.sms.corpus import load_data_file

    real = fl_smpc.runner.run

    def run(spec, on_round=None):
        c = spec.config
        config = replace(c, rounds=min(c.rounds, 2), local_steps=min(c.local_steps, 2))
        return real(replace(spec, config=config, timeout=min(spec.timeout, 0.3)), on_round)

    monkeypatch.setattr(fl_smpc.runner, "run", run)
    monkeypatch.setattr(fl_smpc.sms.experiment, "load_packaged_corpus", lambda: load_data_file(inputs / "messages.tsv"))


examples = count()


def check_cli(tmp_root: Path, inputs: Path, capsys, argv, prog: str) -> int:
    """Run ``argv`` in a fresh copy of the inputs and an empty output directory; check the verdict above."""
    example = tmp_root / f"example-{next(examples)}"
    in_dir, out_dir = example / "in", example / "out"
    shutil.copytree(inputs, in_dir)
    out_dir.mkdir()
    resolved = resolve(argv, in_dir, out_dir)
    before = snapshot(in_dir)
    capsys.readouterr()
    cwd = os.getcwd()
    os.chdir(out_dir)  # a relative path in the argv writes into the output directory, checked below
    try:
        with time_limit():
            status = main(resolved)
    except SystemExit as done:  # argparse: --help (0) or a bad flag (2)
        status = done.code
    finally:
        os.chdir(cwd)
    _, err = capsys.readouterr()
    assert status in (0, 1, 2), (status, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith(f"{prog}: error: ")]
    assert len(errors) == (0 if status == 0 else 1), err
    usage = 0
    if lines and lines[0].startswith("usage: "):  # argparse's usage block, then its one error line
        usage = 1 + next((i for i, line in enumerate(lines[1:]) if not line.startswith(" ")), len(lines) - 1)
    rest = [line for i, line in enumerate(lines[usage:], usage) if i not in errors]
    assert all(line.startswith((f"{prog}: wrote ", f"{prog}: issued by ", f"{prog}: started ")) for line in rest), err
    if errors:
        assert lines[errors[0]][len(f"{prog}: error: ") :].strip(), err
    left = [p.name for p in example.rglob("*") if p.name.startswith(".fl-smpc-") or p.name.endswith(".tmp")]
    assert left == [], f"temporary files left behind: {left}"
    if status == 2:  # refused: nothing written, no input changed
        assert list(out_dir.iterdir()) == [], err
        assert snapshot(in_dir) == before, err
    shutil.rmtree(example)
    return status


def resolve(argv, in_dir: Path, out_dir: Path):
    return [str(in_dir / a) if isinstance(a, In) else str(out_dir / a) if isinstance(a, Out) else a for a in argv]


def snapshot(directory: Path) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")}


@fuzz_settings(25)
@given(argv=argv_from(TRAIN_BASES, build_parser(), ["--ro", "--hi", "--c"]))
def test_training_command_line(tmp_path_factory, inputs, bounded, capsys, argv):
    check_cli(tmp_path_factory.getbasetemp(), inputs, capsys, argv, "fl-smpc")


@fuzz_settings(20)
@given(argv=argv_from(SPLIT_BASES, split_data.build_parser(), ["--w"]))
def test_split_data_command_line(tmp_path_factory, inputs, capsys, argv):
    check_cli(tmp_path_factory.getbasetemp(), inputs, capsys, argv, "fl-smpc split-data")


@fuzz_settings(12)
@given(argv=argv_from(CERTS_BASES, certs.build_parser(), ["--p"]))
def test_certs_command_line(tmp_path_factory, inputs, capsys, argv):
    check_cli(tmp_path_factory.getbasetemp(), inputs, capsys, argv, "fl-smpc certs")


DEMO_BASES = [["demo-network", "--seed", "0"], ["demo-network", "--seed", "0", "--insecure"],
              ["demo-network", "--seed", "0", "--certs", In("certs"), "--aggregation", "pairwise"]]  # fmt: skip


@fuzz_settings(12)
@given(argv=argv_from(DEMO_BASES, build_parser("fl-smpc demo-network"), ["--ro", "--c"]))
def test_demo_network_command_line(tmp_path_factory, inputs, bounded, monkeypatch, capsys, argv):
    """Everything the demo checks and makes before its workers start; the workers are addresses nobody serves."""
    import contextlib

    import fl_smpc.network.launcher

    @contextlib.contextmanager
    def nobody_serves(paths, **_kwargs):
        assert all(os.path.isfile(p) for p in paths.values())  # the demo's split was written
        yield dict.fromkeys(paths, ("127.0.0.1", 1))

    monkeypatch.setattr(fl_smpc.network.launcher, "local_workers", nobody_serves)
    check_cli(tmp_path_factory.getbasetemp(), inputs, capsys, argv, "fl-smpc demo-network")


WORKER_BASES = [["worker", "--id", "bob", "--data", In("owner.csv"), "--peers", "alice=127.0.0.1:1,jane=127.0.0.1:1",
                 "--insecure"],
                ["worker", "--id", "bob", "--data", In("owner.csv"), "--peers", "alice=127.0.0.1:1,jane=127.0.0.1:1",
                 "--certs", In("certs")]]  # fmt: skip


@fuzz_settings(15)
@given(data=st.data())
def test_worker_command_line(tmp_path_factory, inputs, monkeypatch, capsys, data):
    """The worker's flags and files up to the server it would build (stopped there: nothing serves in-process)."""
    from fl_smpc.cli import worker
    from fl_smpc.data_owner.server import OwnerServer

    monkeypatch.setattr(OwnerServer, "serve", lambda self, on_ready=None: None)  # built, then stops at once
    argv = data.draw(argv_from(WORKER_BASES, worker.build_parser(), ["--pe", "--m"]))
    check_cli(tmp_path_factory.getbasetemp(), inputs, capsys, argv, "fl-smpc worker")


# --- not random: each value of its kind for each flag in turn ---


def test_every_training_flag_with_every_value_of_its_kind_is_parsed_or_refused(tmp_path, inputs, capsys):
    """Everything the training command checks before a run (argparse, the RunSpec), for each flag and value."""
    from fl_smpc.cli.train import parse_args, spec_from_args
    from fl_smpc.errors import FlSmpcError

    (tmp_path / "out").mkdir()
    for flag, kind in typed_values(build_parser()).items():
        for value in kind if flag.startswith("--") else ():
            argv = resolve(["--seed", "0", flag, value], inputs, tmp_path / "out")
            try:
                spec_from_args(parse_args(build_parser(), argv))
            except SystemExit as done:
                err = capsys.readouterr().err
                assert done.code == 2 and err.splitlines()[-1].startswith("fl-smpc: error: "), (argv, err)
                assert sum(line.startswith("fl-smpc: error: ") for line in err.splitlines()) == 1, (argv, err)
            except FlSmpcError as err:  # main reports it through parser.error: exit 2
                assert len(str(err).splitlines()) == 1, (argv, err)
    assert list((tmp_path / "out").iterdir()) == []


def test_split_data_with_every_value_of_its_kind_for_each_flag(tmp_path_factory, inputs, capsys):
    kinds = typed_values(split_data.build_parser())
    for flag in ("--out", "--workers", "--csv"):
        for value in kinds[flag]:
            argv = [*SPLIT_BASES[0], flag, value]
            check_cli(tmp_path_factory.getbasetemp(), inputs, capsys, argv, "fl-smpc split-data")


FILE_FLAGS = {  # flag: (the command line around it, the one good input, what it ends in)
    "--resume": (["--seed", "0"], "run.json", 0),
    "--data-file": (["--seed", "0", "--dataset", "sms", "--features", "16"], "messages.tsv", 0),
    "--certs": (["--seed", "0", "--transport", "websocket", "--workers", ADDRESSES, "--timeout", "0.3"], "certs", 1),
}


@pytest.mark.parametrize("flag", sorted(FILE_FLAGS))
def test_every_input_file_for_each_file_flag(tmp_path_factory, inputs, bounded, capsys, flag):
    """Each file of the inputs (valid, broken, empty, a directory, missing, a name with a newline) in turn:
    every other one than the good one exits 2 with one line and writes nothing (the good --certs: 1, nobody serves)."""
    around, good, ends = FILE_FLAGS[flag]
    for name in INPUTS:
        argv = [*around, flag, In(name), "--history", Out("h.csv")]
        status = check_cli(tmp_path_factory.getbasetemp(), inputs, capsys, argv, "fl-smpc")
        assert status == (ends if name == good else 2), (flag, name, status)
