"""Fuzzing the input files a user hands fl-smpc: an owner's CSV, an SMS messages file, a checkpoint.

Random bytes, random structured content and mutations of a valid file: each ends in a usable result
(checked, and taken one step further, as a run would) or in an FlSmpcError of one line; never another
exception, a hang or a crash (tests/fuzzing.py). Reproducible (derandomized) and bounded: seconds.
"""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from fuzzing import HUGE_INT, fuzz_settings, json_values, mutated, mutated_document, one_line_error_or_result, places
from hypothesis import given, strategies as st

from fl_smpc import FLConfig, train_federated
from fl_smpc.config import RunSpec
from fl_smpc.data import toy_dataset
from fl_smpc.errors import CheckpointError, DataError, FlSmpcError
from fl_smpc.federated import initial_model
from fl_smpc.history_io import FORMAT, load_checkpoint
from fl_smpc.network.csvdata import read_csv, write_csv
from fl_smpc.runner import resumed_spec
from fl_smpc.sms.corpus import deduplicate, featurize, load_data_file, partition, train_test_split
from fl_smpc.training import check_model

DATA = Path(__file__).parent / "data"
OWNER_CSV = b"x0,x1,x2,label\n1,1,1,1\n0,1,1,1\n1,0,0,0\n0,0,0,0\n1,1,0,1\n0,1,0,0\n"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """One directory per module; every example rewrites its file there."""
    return tmp_path_factory.mktemp("fuzz-files")


def read_hostile(directory: Path, name: str, content: bytes, reader, error):
    """``reader(path)`` of ``content`` written to ``name``: its result, or None after a one-line ``error``
    that names the file."""
    path = directory / name
    path.write_bytes(content)
    result = one_line_error_or_result(reader, str(path))
    if isinstance(result, FlSmpcError):
        assert isinstance(result, error) and str(path) in str(result), repr(result)
        return None
    return result


# --- an owner's CSV (the worker's --data, split-data's --csv) ---

cells = st.one_of(
    st.sampled_from(["0", "1", "0.5", "-1", "1e39", "nan", "inf", "-0", "1_0", "0x1", " 1 ", "", "label", "١"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=6),
)
owner_tables = st.lists(st.lists(cells, min_size=1, max_size=5), max_size=6)


def table_bytes(rows, line_end: str) -> bytes:
    return line_end.join(",".join(cells) for cells in rows).encode("utf-8", "surrogatepass")


def check_owner_csv(directory: Path, content: bytes) -> None:
    result = read_hostile(directory, "owner.csv", content, read_csv, DataError)
    if result is None:
        return
    data, target = result
    rows, features = data.shape
    assert rows >= 1 and features >= 1 and target.shape == (rows, 1)
    assert torch.isfinite(data).all() and set(target.flatten().tolist()) <= {0.0, 1.0}
    write_csv(str(directory / "again.csv"), data, target)  # what split-data writes reads back the same
    again = read_csv(str(directory / "again.csv"))
    assert torch.equal(again[0], data) and torch.equal(again[1], target)


@fuzz_settings(40)
@given(content=st.binary(max_size=200))
def test_owner_csv_from_random_bytes(scratch, content):
    check_owner_csv(scratch, content)


@fuzz_settings(60)
@given(content=mutated(OWNER_CSV))
def test_owner_csv_mutated(scratch, content):
    check_owner_csv(scratch, content)


@fuzz_settings(40)
@given(header=st.lists(cells, min_size=1, max_size=5), rows=owner_tables, line_end=st.sampled_from(["\n", "\r\n"]))
def test_owner_csv_with_random_cells(scratch, header, rows, line_end):
    check_owner_csv(scratch, table_bytes([header, *rows], line_end))


# --- an SMS messages file (--dataset sms --data-file) ---

SMS_FILES = [(DATA / "sms_small.tsv").read_bytes(), (DATA / "sms_small.csv").read_bytes()]
labels = st.sampled_from(["ham", "spam", "0", "1", "HAM", " spam ", "hm", "", "2", "label", "\ufeffham"])
texts = st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "a,b", '"quoted, text"', '"open', "x\ty"]))
message_lines = st.lists(st.tuples(labels, st.sampled_from(["\t", ",", ";", " "]), texts), max_size=12)


def check_messages_file(directory: Path, content: bytes) -> None:
    """load_data_file, then what run_sms does with it before training: dedupe, hold out, partition, featurize."""
    messages = read_hostile(directory, "messages.txt", content, load_data_file, DataError)
    if messages is None:
        return
    assert len(messages) >= 1 and set(messages.labels) <= {0, 1} and all(t.strip() for t in messages.texts)

    def prepare():
        unique, _ = deduplicate(messages)
        train, test = train_test_split(unique, 0.2, 0)
        owners = partition(train.labels, 3, "skewed", 0)
        assert sorted(i for part in owners for i in part) == list(range(len(train)))
        return featurize(train.texts, 16)

    features = one_line_error_or_result(prepare)
    assert isinstance(features, (DataError, torch.Tensor))


@fuzz_settings(30)
@given(content=st.binary(max_size=200))
def test_messages_file_from_random_bytes(scratch, content):
    check_messages_file(scratch, content)


@fuzz_settings(60)
@given(content=st.sampled_from(SMS_FILES).flatmap(mutated))
def test_messages_file_mutated(scratch, content):
    check_messages_file(scratch, content)


@fuzz_settings(40)
@given(lines=message_lines, line_end=st.sampled_from(["\n", "\r\n", "\r"]))
def test_messages_file_with_random_lines(scratch, lines, line_end):
    content = line_end.join(label + sep + text for label, sep, text in lines)
    check_messages_file(scratch, content.encode("utf-8", "surrogatepass"))


# --- a checkpoint (--resume) ---


@pytest.fixture(scope="module")
def checkpoint_doc():
    """A real checkpoint: 1 completed round of a 2-round run."""
    history = train_federated(FLConfig(seed=1, rounds=2, local_steps=1))
    history.rounds = history.rounds[:1]
    return {"format": FORMAT, "completed_rounds": 1, **history.to_dict()}


def check_checkpoint(directory: Path, content: bytes) -> None:
    """load_checkpoint, then what a resumed toy run does before its first round (the model from it, the probe)."""
    history = read_hostile(directory, "run.json", content, load_checkpoint, CheckpointError)
    if history is None:
        return
    assert len(history.rounds) <= history.config.rounds
    assert all(math.isfinite(float(t.abs().max())) for r in history.rounds for t in r.model.values())

    def resume():
        spec, resumed = resumed_spec(RunSpec(resume=str(directory / "run.json")))
        data, target = toy_dataset()
        model = initial_model(spec.config.with_seed(), data.shape[1], history=resumed)  # as runner.run does
        check_model(model, data[:2], target[:2])

    one_line_error_or_result(resume)


@fuzz_settings(30)
@given(content=st.binary(max_size=200))
def test_checkpoint_from_random_bytes(scratch, content):
    check_checkpoint(scratch, content)


@fuzz_settings(40)
@given(doc=json_values, tagged=st.booleans())
def test_checkpoint_from_random_json(scratch, doc, tagged):
    if tagged and isinstance(doc, dict):
        doc["format"] = FORMAT
    check_checkpoint(scratch, json.dumps(doc).encode())


@fuzz_settings(80)
@given(data=st.data())
def test_checkpoint_mutated(scratch, checkpoint_doc, data):
    doc = data.draw(mutated_document(checkpoint_doc))
    check_checkpoint(scratch, json.dumps(doc).encode())


@fuzz_settings(40)
@given(data=st.data())
def test_checkpoint_mutated_bytes(scratch, checkpoint_doc, data):
    check_checkpoint(scratch, data.draw(mutated(json.dumps(checkpoint_doc).encode(), max_edits=3)))


HOSTILE_VALUES = [None, True, 0, -1, 2**32, HUGE_INT, -HUGE_INT, 0.5, 1e39, math.nan, math.inf, "", "1", "a\nb",
                  [], [HUGE_INT], [[]], {}, {"a\nb": 1}]  # fmt: skip


def test_checkpoint_every_field_with_every_hostile_value(tmp_path, checkpoint_doc):
    """Not random: each place of the document in turn holds each hostile value (about 40 x 19 files)."""
    for index in range(len(places(checkpoint_doc, []))):
        for value in HOSTILE_VALUES:
            doc = copy.deepcopy(checkpoint_doc)
            container, key = places(doc, [])[index]
            container[key] = copy.deepcopy(value)
            check_checkpoint(tmp_path, json.dumps(doc).encode())
