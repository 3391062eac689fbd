"""`reflectioncoder prepare-data`: the shipped files of each format, converted as the authors do,
read back by the loader; bad rows reported by file:line:field; benchmark copies dropped."""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED_DIR
from reference.serialise import SPECIALS, student_labels_ref, teacher_labels_ref

from reflectioncoder.cli import main as cli_main
from reflectioncoder.data.config import DataConfig
from reflectioncoder.data.dataset import load_dataset
from reflectioncoder.data.decontaminate import BenchmarkIndex, benchmark_texts
from reflectioncoder.data.prepare import manifest_path, prepare
from reflectioncoder.data.schema import load_files
from reflectioncoder.data.tokenize import add_special_tokens, special_token_ids
from reflectioncoder.errors import UsageError
from reflectioncoder.tokenizer import train_tokenizer

FIXTURES = Path(__file__).resolve().parent / "data" / "prepare"


def authors_process(sample: dict) -> dict:
    """The authors' CodeFeedback conversion, restated from SenseLLM/ReflectionCoder
    src/data/download.py (commit 6b6e2d4), the reference the output must equal."""
    result = [
        {"role": "user", "content": [{"type": "text", "content": html.unescape(sample["query"])}]}
    ]
    output = html.unescape(sample["answer"]).replace("\r\n", "\n").replace("\t", "    ").strip()
    result.append({"role": "assistant", "content": [{"type": "text", "content": output}]})
    return {"messages": result, "type": "generation"}


def raw_rows(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def good_codefeedback() -> list[dict]:
    return [r for r in raw_rows(FIXTURES / "codefeedback.jsonl") if isinstance(r["answer"], str)]


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer():
    corpus = ["def f(x):\n    return x + 1\n", "Traceback AssertionError", "é café →"] * 20
    tok = train_tokenizer(corpus, vocab_size=300)
    add_special_tokens(tok)
    return tok


@pytest.mark.parametrize("name", ["codefeedback.jsonl", "codefeedback.parquet"])
def test_codefeedback_equals_the_authors_conversion(name, tmp_path):
    out = tmp_path / "cf.jsonl"
    result = prepare([FIXTURES / name], out, progress=False)
    expected = [authors_process(r) for r in good_codefeedback()]
    assert read_out(out) == expected  # row for row, key for key, byte for byte in the text
    # the fixture really exercises every step of the normalisation
    texts = [t for r in good_codefeedback() for t in (r["query"], r["answer"])]
    assert all(any(s in t for t in texts) for s in ("&lt;", "&amp;", "&#39;", "\r\n", "\t"))
    assert any(t != t.strip() for t in texts)
    (stats,) = result.inputs
    assert stats.read == (6 if name.endswith("jsonl") else 5) and stats.written == 4
    rows = [w for v in stats.skipped.values() for w in v]
    if name.endswith("jsonl"):
        assert any(r.startswith(f"{FIXTURES / name}:3:<json>: invalid JSON") for r in rows)
    bad_line = 5 if name.endswith("jsonl") else 4
    assert f"{FIXTURES / name}:{bad_line}:answer: expected a string, got null" in rows
    samples, report = load_files([out])
    assert len(samples) == 4 and not report.skipped


def test_datasets_pipeline_equals_ours(tmp_path):
    """The authors' own pipeline (datasets map + to_json) against prepare-data on the raw rows
    saved as users get them: a save_to_disk folder and a to_json file."""
    from datasets import Dataset, DatasetDict

    rows = good_codefeedback()
    data = Dataset.from_list(rows)
    theirs = tmp_path / "code_instruct.jsonl"
    data.map(authors_process, remove_columns=list(data.features)).to_json(str(theirs))
    data.save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": data}).save_to_disk(str(tmp_path / "saved_dict"))
    data.to_json(str(tmp_path / "raw.json"))  # `.json`, but lines: to_json's default
    for source in (tmp_path / "saved", tmp_path / "saved_dict", tmp_path / "raw.json"):
        out = tmp_path / f"ours-{source.name}.jsonl"
        result = prepare([source], out, progress=False)
        assert read_out(out) == read_out(theirs), source
        assert result.inputs[0].reader == ("save_to_disk" if source.is_dir() else "json")
    # the authors' converted file is ReflectionSeq already: taken as it is
    out = tmp_path / "again.jsonl"
    prepare([theirs], out, progress=False)
    assert read_out(out) == read_out(theirs)


def test_reflectionseq_taken_as_is_any_number_of_turns(tmp_path, tokenizer):
    out = tmp_path / "rs.jsonl"
    result = prepare([FIXTURES / "reflectionseq.jsonl"], out, progress=False)
    rows = raw_rows(FIXTURES / "reflectionseq.jsonl")
    assert read_out(out) == [r for i, r in enumerate(rows) if i != 3]  # extra keys kept too
    (stats,) = result.inputs
    assert stats.messages == {4: 2, 6: 1, 2: 1}
    assert stats.rounds == {2: 2, 3: 1}
    assert stats.skipped == {
        "missing final answer": [
            f"{FIXTURES / 'reflectionseq.jsonl'}:4:messages: missing final answer "
            "(reflection samples need >= 4 messages)"
        ]
    }
    # the trainer's loader reads it; a 6-message sample is split as the authors' code does:
    # body = the first assistant message, answer = from the last <|assistant|>.
    samples, report = load_dataset(DataConfig(files=[str(out)]), tokenizer)
    assert len(samples) == 4 and not report.skipped
    sp = special_token_ids(tokenizer)
    multi = samples[2]
    ids = multi.ids.tolist()
    asst = [i for i, t in enumerate(ids) if t == sp["<|assistant|>"]]
    assert len(asst) == 3 and multi.body_start == asst[0] + 1 and multi.answer_start == asst[-1]
    assert multi.body_end == ids.index(sp["<|endofmessage|>"], asst[0])
    ref_sp = {s: sp[s] for s in SPECIALS}
    assert multi.labels.tolist() == teacher_labels_ref(ids, ref_sp)
    assert multi.student_labels.tolist() == student_labels_ref(ids, ref_sp)


def test_openai_and_sharegpt(tmp_path):
    out = tmp_path / "chat.jsonl"
    result = prepare([FIXTURES / "openai.jsonl", FIXTURES / "sharegpt.json"], out, progress=False)

    def msg(role, text):
        return {"role": role, "content": [{"type": "text", "content": text}]}

    assert read_out(out) == [
        # text kept as it is (no html or whitespace normalisation: that is CodeFeedback's)
        {
            "messages": [
                msg("user", "You are a coder.\n\nSum a list &amp; return it.\r\n"),
                msg("assistant", "\t```python\nsum(xs)\n```  "),
            ],
            "type": "generation",
        },
        {
            "messages": [
                msg("user", "hi"),
                msg("assistant", "hello"),
                msg("user", "write f"),
                msg("assistant", "def f(): pass"),
            ],
            "type": "generation",
        },
        {
            "messages": [
                msg("user", "Be brief.\n\nReverse a string &lt;s&gt;"),
                msg("assistant", "s[::-1]\r\n"),
            ],
            "type": "generation",
        },
        {
            "messages": [msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2\t")]
            + [msg("assistant", "  a2  ")],
            "type": "generation",
        },
    ]
    openai, sharegpt = result.inputs
    assert openai.formats == {"openai": 2} and sharegpt.formats == {"sharegpt": 2}
    assert sharegpt.skipped == {
        "unknown speaker": [
            f"{FIXTURES / 'sharegpt.json'}:3:conversations[0].from: unknown speaker 'robot'"
        ]
    }
    load_files([out])


def test_forced_format_and_unknown_rows(tmp_path):
    src = tmp_path / "mixed.jsonl"
    src.write_text(
        json.dumps({"query": "q", "answer": "a"}) + "\n" + json.dumps({"prompt": "x"}) + "\n"
    )
    result = prepare([src], tmp_path / "a.jsonl", progress=False)
    assert list(result.inputs[0].skipped) == ["unknown format"]
    assert result.inputs[0].skipped["unknown format"][0].startswith(f"{src}:2:<row>:")
    with pytest.raises(UsageError, match="'sharegpt' converts none of the 2 rows"):
        prepare([src], tmp_path / "b.jsonl", fmt="sharegpt", progress=False)
    assert not (tmp_path / "b.jsonl").exists()


def test_cli_writes_output_and_manifest(tmp_path, evaldata, capsys):
    out = tmp_path / "prepared" / "all.jsonl"
    argv = ["prepare-data", "--out", str(out), "--data-dir", str(evaldata), "--in", str(FIXTURES)]
    assert cli_main(argv) == 0
    stdout = capsys.readouterr().out
    assert "wrote" in stdout and "humaneval: 0 samples overlap" in stdout
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["written"] == len(read_out(out)) == 16
    by_name = {Path(i["path"]).name: i for i in manifest["inputs"]}
    assert set(by_name) == {p.name for p in FIXTURES.iterdir()}
    assert all(i["skipped"] >= 1 for i in by_name.values())  # a bad row per file
    assert set(manifest["decontamination"]["benchmarks"]) >= {"humaneval", "mbppplus"}
    # the output is never one of the inputs
    argv = ["prepare-data", "--in", str(out), "--out", str(out), "--no-decontaminate"]
    assert cli_main(argv) == 2 and manifest["written"] == len(read_out(out))


# ----------------------------------------------------------------------------- decontamination


@pytest.fixture(scope="module")
def evaldata():
    path = SHARED_DIR / "evaldata"
    if not path.is_dir():
        pytest.skip(f"{path} not found (set REFLECTIONCODER_SHARED)")
    return path


@pytest.fixture(scope="module")
def bench_index(evaldata):
    return BenchmarkIndex.load(evaldata)


def _generation(query: str, answer: str) -> dict:
    return {"query": query, "answer": answer}


def planted_rows(evaldata) -> tuple[list[dict], dict[int, str]]:
    """Clean rows with benchmark prompts planted among them: row index -> benchmark."""
    texts = {k: dict(v) for k, v in benchmark_texts(evaldata).items()}
    he = texts["humaneval"]["HumanEval/12"]
    mbpp_plus = texts["mbppplus"]["Mbpp/2"]
    java = texts["multipl_e"]["java/HumanEval_23_strlen"]
    edited_he = (
        he.replace("longest", "longest_string")  # a renamed function
        .replace("    ", "\t")  # re-indented
        .replace("Out of list of strings", "From a list of strings")  # a reworded phrase
    )
    edited_mbpp = mbpp_plus.strip('"\n').replace("Write a function", "Please write code").upper()
    java_boilerplate = java.split("class Problem")[0]  # imports every MultiPL-E Java prompt has
    clean = [
        _generation("Sort a list of numbers in place.", "```python\nxs.sort()\n```"),
        _generation(
            "Explain the quicksort algorithm and give an implementation.",
            "def quicksort(xs):\n    if len(xs) <= 1:\n        return xs\n    pivot = xs[0]\n"
            "    return quicksort([x for x in xs[1:] if x < pivot]) + [pivot] + "
            "quicksort([x for x in xs[1:] if x >= pivot])",
        ),
        _generation(
            "Write a Java class that counts words.",
            java_boilerplate + "class Counter {\n    static int count(String s) {\n"
            '        return s.split(" ").length;\n    }\n}',
        ),
        _generation("from typing import List\n\ndef mean(xs: List[float]) -> float:", "..."),
        _generation("Write a function to reverse the words of a sentence.", "' '.join(s[::-1])"),
    ]
    planted = {
        1: ("humaneval", _generation("Complete this:\n" + he, "pass")),
        3: ("humaneval", _generation("Please help.", edited_he)),
        5: ("mbppplus", _generation(edited_mbpp, "def f(): pass")),
        6: ("multipl_e", _generation("Translate to Java:\n" + java, "return string.length();")),
    }
    rows = list(clean)
    for i, (_, row) in sorted(planted.items()):
        rows.insert(i, row)
    return rows, {i: bench for i, (bench, _) in planted.items()}


def test_planted_benchmark_prompts_are_dropped(tmp_path, evaldata, bench_index):
    rows, planted = planted_rows(evaldata)
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "clean.jsonl"
    result = prepare([src], out, index=bench_index, progress=False)
    kept_queries = [s["messages"][0]["content"][0]["content"] for s in read_out(out)]
    expected = [authors_process(r) for i, r in enumerate(rows) if i not in planted]
    assert read_out(out) == expected, kept_queries  # clean rows kept, in order
    assert result.inputs[0].decontaminated == len(planted)
    report = result.contamination["benchmarks"]
    for bench in set(planted.values()):
        lines = {e["where"] for e in report[bench]["examples"]}
        wanted = {f"{src}:{i + 1}" for i, b in planted.items() if b == bench}
        assert wanted <= lines, (bench, report[bench])
        assert report[bench]["samples_matched"] >= len(wanted)
        assert all(len(e["match"].split()) == 10 for e in report[bench]["examples"])
    assert report["humaneval"]["examples"][0]["task_id"] == "HumanEval/12"
    # kept (and still reported) with --keep-contaminated
    kept = prepare(
        [src], tmp_path / "all.jsonl", index=bench_index, keep_contaminated=True, progress=False
    )
    assert kept.written == len(rows) and kept.inputs[0].decontaminated == len(planted)
    assert f"{len(planted)} contaminated kept" in kept.summary()
    assert f"{len(planted)} contaminated dropped" in result.summary()
    assert manifest_path(tmp_path / "all.jsonl").is_file()


def test_decontamination_checks_every_block(tmp_path, evaldata, bench_index):
    """A prompt copied into a reflection sequence's code block is found too."""
    he = dict(benchmark_texts(evaldata)["humaneval"])["HumanEval/0"]
    row = json.loads((FIXTURES / "reflectionseq.jsonl").read_text().splitlines()[0])
    row["messages"][1]["content"][1]["content"] = he + "    pass\n"
    src = tmp_path / "r.jsonl"
    shutil.copy(FIXTURES / "reflectionseq.jsonl", src)
    with src.open("a") as f:
        f.write(json.dumps(row) + "\n")
    result = prepare([src], tmp_path / "o.jsonl", index=bench_index, progress=False)
    assert result.inputs[0].decontaminated == 1 and result.written == 4


def test_json_files_of_every_shape(tmp_path):
    rows = good_codefeedback()[:2]
    shapes = {
        "array.json": json.dumps(rows, indent=2),
        "lines.json": "".join(json.dumps(r) + "\n" for r in rows),
        "object.json": json.dumps(rows[0], indent=2),
        "broken.json": json.dumps(rows, indent=2)[:-3],
    }
    for name, text in shapes.items():
        (tmp_path / name).write_text(text)
    result = prepare([tmp_path], tmp_path / "out" / "o.jsonl", progress=False)
    by_name = {Path(s.path).name: s for s in result.inputs}
    assert {k: v.written for k, v in by_name.items()} == {
        "array.json": 2,
        "broken.json": 0,
        "lines.json": 2,
        "object.json": 1,
    }
    assert list(by_name["broken.json"].skipped) == ["invalid JSON"]
    assert read_out(tmp_path / "out" / "o.jsonl")[:2] == [authors_process(r) for r in rows]


def test_paper_config_trains_on_what_the_docs_prepare():
    """configs/paper.yaml names the files docs/data.md's prepare commands write, in the
    paper's mix: CodeFeedback once, each reflection set twice."""
    import re

    import yaml

    repo = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((repo / "configs" / "paper.yaml").read_text())
    docs = (repo / "docs" / "data.md").read_text()
    outs = re.findall(r"reflectioncoder prepare-data --in downloads/\S+ --out (\S+)", docs)
    assert (
        config["data"]["files"]
        == outs
        == [
            "data/prepared/code_instruct.jsonl",
            "data/prepared/reflection_gpt.jsonl",
            "data/prepared/reflection_ds.jsonl",
        ]
    )
    assert config["data"]["upsample"] == [1, 2, 2]


def test_rows_users_get_wrong_are_one_bad_row_each(tmp_path, capsys):
    """A BOM, a line that is not UTF-8, a row missing one field, an output that is a folder,
    a corrupt parquet file and a file none of whose rows convert: each one clear line."""
    src = tmp_path / "mine.jsonl"
    src.write_bytes(
        b'\xef\xbb\xbf{"query": "a", "answer": "b"}\n'
        b'{"query": "caf\xe9", "answer": "b"}\n'
        b'{"query": "only the query"}\n'
    )
    result = prepare([src], tmp_path / "out.jsonl", progress=False)
    assert result.written == 1
    assert result.inputs[0].skipped == {
        "not UTF-8": [
            f"{src}:2:<text>: not UTF-8 (byte 15 of the line is 0xe9: save the file as UTF-8)"
        ],
        "expected a string": [f"{src}:3:answer: expected a string, missing"],
    }
    base = ["prepare-data", "--no-decontaminate", "--no-progress"]
    assert cli_main([*base, "--in", str(src), "--out", str(tmp_path)]) == 2
    assert "--out:" in capsys.readouterr().err
    argv = [*base, "--in", str(src), "--in", str(tmp_path), "--out", str(tmp_path / "o.jsonl")]
    assert cli_main(argv) == 2
    assert f"--in: {src} is named twice" in capsys.readouterr().err
    (tmp_path / "bad.parquet").write_text("not parquet")
    argv = [*base, "--in", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o.jsonl")]
    assert cli_main(argv) == 1
    assert f"{tmp_path / 'bad.parquet'}: --in: not a readable parquet" in capsys.readouterr().err
    argv = [*base, "--in", str(src), "--format", "sharegpt", "--out", str(tmp_path / "o.jsonl")]
    assert cli_main(argv) == 2  # a wrong --format (tests/test_leftovers_prepare_format.py)
    assert f"'sharegpt' converts none of the 3 rows of {src}" in capsys.readouterr().err
