"""Corpus: the built-in SOTU and Shakespeare splits, local files through ``datasets``, windows."""

import json
from importlib import resources

import pytest

from headq_core.evaluation.corpus import CorpusSpec, load_texts
from headq_core.evaluation.windows import corpus_windows, token_windows
from tests.models.tiny import CharTokenizer


def test_builtin_splits_match_index():
    index = json.loads((resources.files("headq_core.data") / "sotu" / "index.json").read_text())
    cal = load_texts(CorpusSpec(split="calibration"))
    ev = load_texts(CorpusSpec(split="eval"))
    years = {
        s: [a["year"] for a in index["addresses"] if a["split"] == s] for s in ("calibration", "evaluation")
    }
    assert len(cal) == len(years["calibration"]) and len(ev) == len(years["evaluation"])
    assert max(years["calibration"]) <= 2001 and min(years["evaluation"]) == 2002
    assert ev[-1].startswith("Thank you.")  # 2021 address
    assert all(len(t) > 1000 for t in cal + ev)


def test_builtin_shakespeare_plays_match_index():
    index = json.loads((resources.files("headq_core.data") / "shakespeare" / "index.json").read_text())
    for split, name in (("calibration", "calibration"), ("eval", "evaluation")):
        texts = load_texts(CorpusSpec(name="shakespeare", split=split))
        plays = [p for p in index["plays"] if p["split"] == name]
        assert [len(t) for t in texts] == [p["chars"] for p in plays]
    assert load_texts(CorpusSpec(name="shakespeare"))[0].startswith("HAMLET, PRINCE OF DENMARK")
    with pytest.raises(ValueError, match="dataset.name/split"):
        CorpusSpec(name="milton")


def test_local_files_through_datasets(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("first document\nsecond line")
    b.write_text("another file")
    texts = load_texts(CorpusSpec(source="files", name=None, files=(str(a), str(b))))
    assert texts == ["first document\nsecond line", "another file"]
    windows = corpus_windows(CharTokenizer(), CorpusSpec(source="files", name=None, files=[str(a)]), 4, 8)
    assert windows.ids.shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"source": "web"}, "dataset.source"),
        ({"split": "valid"}, "dataset.name/split"),
        ({"source": "hf", "name": None}, "dataset.name"),
        ({"source": "files", "name": None}, "dataset.files"),
    ],
)
def test_bad_spec_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        CorpusSpec(**kwargs)


def test_bad_window_and_too_little_text():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="window"):
        token_windows(tok, ["abc"], window=1, max_tokens=8)
    with pytest.raises(ValueError, match="max_tokens"):
        token_windows(tok, ["abc"], window=8, max_tokens=4)
    with pytest.raises(ValueError, match="dataset: only 4 tokens"):
        token_windows(tok, ["abc"], window=8, max_tokens=16)


def test_from_dict_ignores_window_fields():
    spec = CorpusSpec.from_dict(
        {
            "source": "builtin",
            "name": "sotu",
            "split": "eval",
            "window": 1024,
            "max_tokens": 10,
            "files": None,
        }
    )
    assert spec == CorpusSpec()
    assert CorpusSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("name", ["/etc", "../data", "./texts", "a/b/c", "texts/", "builtin:sotu"])
def test_a_hub_dataset_is_named_by_its_id_never_a_path(name):
    with pytest.raises(ValueError, match="^dataset.name: .* is not a hub dataset id"):
        CorpusSpec(source="hf", name=name)


def test_a_hub_dataset_id_is_never_read_from_local_files(tmp_path, monkeypatch):
    # as in the report: `source: hf` read local text; `text` (a datasets builder) read the whole cwd
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "secret.txt").write_text("secret")
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").symlink_to(tmp_path / "texts")
    monkeypatch.chdir(tmp_path)
    for name in ("texts", "org/name", "text", "json"):
        with pytest.raises(ValueError, match=f"^dataset.name: '{name}' would be read from local files"):
            load_texts(CorpusSpec(source="hf", name=name, split="train"))
