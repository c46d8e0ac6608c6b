"""The extract stage on every input layout, its errors, its parallel split and its resume."""

from __future__ import annotations

import bz2
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpus import load_documents
from pipeline.errors import PipelineError
from pipeline.sample.articles import ARTICLES
from pipeline.sample.build import DUMP, page_xml, pages, write_dump
from pipeline.shards import file_sha256
from pipeline.textnorm import normalize
from tests.conftest import cli

MARKUP = ["{{", "}}", "[[", "]]", "<ref", "</", "'''", "==", "분류:", "http", "{|", "|}", "파일:", "<!--", "thumb"]


def extract(tmp_path: Path, src, *args, name="out") -> tuple[Path, "datasets.Dataset"]:
    out = tmp_path / name
    cli("extract", "--input", src, "--output", out, *args)
    return out, load_documents(out)


def shard_hashes(out: Path) -> dict:
    return {p.name: file_sha256(p) for p in sorted(out.glob("shard-*.arrow"))}


@pytest.mark.parametrize("layout", ["xml", "bz2", "multistream", "gzip"])
def test_mediawiki_layouts_keep_articles_only(tmp_path, layout):
    src = tmp_path / f"dump.{layout}"
    write_dump(src, pages(), layout)
    out, docs = extract(tmp_path, src)
    assert sorted(docs["title"]) == sorted(ARTICLES)  # no redirect, no other namespace
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["redirect"] == 4 and counts["not_article"] == 5 and counts["kept"] == len(ARTICLES)
    text = "\n".join(s for doc in docs["sentences"] for s in doc)
    assert "조선 중기의 무신이다." in text
    for fragment in MARKUP:
        assert fragment not in text, fragment


def test_shipped_sample_is_multistream():
    data = DUMP.read_bytes()
    assert data.count(b"BZh91AY&SY") > 3  # several concatenated bz2 streams


def test_redirect_by_text_and_duplicates(tmp_path):
    body = "한강은 한반도 중부를 흐르는 강이다. 강에는 서른 개가 넘는 다리가 놓여 있다. 주변 공원에서 시민들이 산책을 즐긴다."
    xs = [page_xml(1, "한강", 0, body), page_xml(2, "한강 (강)", 0, "#REDIRECT [[한강]]"),
          page_xml(3, "한강 사본", 0, body)]
    src = tmp_path / "d.xml"
    write_dump(src, xs, "xml")
    out, docs = extract(tmp_path, src)
    assert docs["title"] == ["한강"]
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts["redirect"] == 1 and counts["duplicate"] == 1


def test_wikiextractor_doc_and_json_layouts(tmp_path):
    folder = tmp_path / "we" / "AA"
    folder.mkdir(parents=True)
    (folder / "wiki_00").write_text('<doc id="1" url="https://ko.wikipedia.org/wiki?curid=1" title="김치">\n김치\n\n'
                                    "김치는 채소를 절여 발효시킨 한국 음식이다. 김장은 겨울 준비이다.\n</doc>\n", encoding="utf-8")
    (folder / "wiki_01").write_text('<doc id="2" url="u" title="한강">\n한강\n\n한강은 서울을 지나 서해로 흐르는 강이다.\n</doc>\n',
                                    encoding="utf-8")
    _, docs = extract(tmp_path, tmp_path / "we", "--min-document-chars", "10")
    assert docs["title"] == ["김치", "한강"]
    assert docs[0]["sentences"] == ["김치는 채소를 절여 발효시킨 한국 음식이다.", "김장은 겨울 준비이다."]
    jdir = tmp_path / "wej" / "AA"
    jdir.mkdir(parents=True)
    (jdir / "wiki_00").write_text(json.dumps({"id": "7", "url": "u", "title": "한강", "text": "한강\n한강은 서울을 지나 서해로 흐르는 강이다."},
                                             ensure_ascii=False) + "\n", encoding="utf-8")
    _, docs = extract(tmp_path, tmp_path / "wej", "--min-document-chars", "10", name="out2")
    assert docs[0]["id"] == "7" and docs[0]["sentences"] == ["한강은 서울을 지나 서해로 흐르는 강이다."]


def test_jsonl_parquet_and_text_layouts(tmp_path):
    rows = [{"id": "1", "title": "김치", "text": "김치는 한국 음식이다. 배추로 만든다.\n\n김장은 겨울 준비이다."},
            {"id": "2", "title": "한강", "text": "한강은 서울을 지나 서해로 흐르는 강이다."}]
    jsonl = tmp_path / "w.jsonl"
    jsonl.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    parquet = tmp_path / "w.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    expected = [["김치는 한국 음식이다.", "배추로 만든다.", "김장은 겨울 준비이다."], ["한강은 서울을 지나 서해로 흐르는 강이다."]]
    for src, name in ((jsonl, "j"), (parquet, "p")):
        _, docs = extract(tmp_path, src, "--min-document-chars", "10", name=name)
        assert docs["title"] == ["김치", "한강"] and docs["sentences"] == expected
    text = tmp_path / "corpus.txt"
    text.write_text("첫 문서의 첫 문장입니다.\n첫 문서의 둘째 문장입니다.\n\n둘째 문서의 문장입니다.\n", encoding="utf-8")
    _, docs = extract(tmp_path, text, "--min-document-chars", "5", name="t")
    assert docs["sentences"] == [["첫 문서의 첫 문장입니다.", "첫 문서의 둘째 문장입니다."], ["둘째 문서의 문장입니다."]]


def _bad_inputs(tmp_path: Path) -> dict:
    good = tmp_path / "good.xml.bz2"
    write_dump(good, pages(), "bz2")
    data = good.read_bytes()
    (tmp_path / "truncated.xml.bz2").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(data) // 2: len(data) // 2 + 64] = b"\x00" * 64
    (tmp_path / "corrupt.xml.bz2").write_bytes(bytes(corrupt))
    (tmp_path / "html.xml").write_text("<?xml version='1.0'?><html><body>not a dump</body></html>")
    (tmp_path / "empty.xml.bz2").write_bytes(b"")
    (tmp_path / "latin1.txt").write_bytes("한국어 문장입니다.\n".encode() + b"\xff\xfe broken \xe9\n")
    xml = tmp_path / "cut.xml"
    write_dump(xml, pages(), "xml")
    xml.write_text(xml.read_text()[:3000])
    return {"truncated bz2": ("truncated.xml.bz2", "ends early|corrupt|truncated"),
            "corrupt bz2": ("corrupt.xml.bz2", "corrupt|decompress"),
            "not a mediawiki export": ("html.xml", "not <mediawiki>|not a MediaWiki"),
            "empty": ("empty.xml.bz2", "empty"),
            "undecodable bytes": ("latin1.txt", "not valid UTF-8"),
            "truncated xml": ("cut.xml", "malformed or truncated"),
            "missing path": ("nowhere.xml", "no such file")}


def test_bad_inputs_fail_cleanly(tmp_path):
    for case, (name, pattern) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"out-{name}"
        proc = cli("extract", "--input", tmp_path / name, "--output", out, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, case
        assert lines[-1].startswith("error: ") and name in lines[-1] and re.search(pattern, lines[-1]), (case, lines)
        assert "Traceback" not in proc.stderr, case
        assert not (out / "manifest.json").exists(), case
        with pytest.raises(PipelineError):
            load_documents(out)


def test_output_identical_across_processes_and_tasks(tmp_path):
    src = tmp_path / "d.xml.bz2"
    write_dump(src, pages(), "multistream")
    common = ["--pages-per-shard", "4", "--chunk-pages", "2"]
    one, _ = extract(tmp_path, src, *common, name="one")
    two, _ = extract(tmp_path, src, *common, "--num-proc", "2", name="two")
    split = tmp_path / "split"
    first = cli("extract", "--input", src, "--output", split, *common, "--num-tasks", "2", "--task-index", "0")
    assert "waiting for other tasks" in first.stderr and not (split / "manifest.json").exists()
    cli("extract", "--input", src, "--output", split, *common, "--num-tasks", "2", "--task-index", "1")
    assert len(shard_hashes(one)) == 8
    assert shard_hashes(one) == shard_hashes(two) == shard_hashes(split)
    assert load_documents(split)["title"] == load_documents(one)["title"]


def test_rerun_skips_complete_shards_and_redoes_half_written(tmp_path):
    src = tmp_path / "d.xml.bz2"
    write_dump(src, pages(), "multistream")
    out, _ = extract(tmp_path, src, "--pages-per-shard", "5")
    before = shard_hashes(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.arrow")}
    (out / "shard-00002.json").unlink()  # as if killed between the shard and its record
    (out / ".shard-00003.arrow.tmp-999").write_bytes(b"partial")
    proc = cli("extract", "--input", src, "--output", out, "--pages-per-shard", "5")
    assert "1 shard(s) written, 5 skipped" in proc.stderr
    assert shard_hashes(out) == before
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*.arrow") if p.name != "shard-00002.arrow"} == \
        {k: v for k, v in mtimes.items() if k != "shard-00002.arrow"}
    assert not list(out.glob(".*tmp*"))
    other = cli("extract", "--input", src, "--output", out, "--pages-per-shard", "7", check=False)
    assert other.returncode == 2 and "other inputs or settings (settings.pages_per_shard: 5 -> 7)" in other.stderr


def _wrap_in_markup(title: str, sentences: list[str], rng: random.Random, page_id: int) -> str:
    """Real prose with kowiki markup around and inside it; the prose is the oracle."""
    parts = [f"{{{{정보상자 문서\n| 이름 = {title}\n| 날짜 = {{{{날짜|2020|1|1}}}}\n}}}}"]
    para = []
    for i, sentence in enumerate(sentences):
        words = sentence.split(" ")
        j = rng.randrange(len(words))
        if re.fullmatch(r"[가-힣]+", words[j]) and rng.random() < 0.4:
            words[j] = f"[[{words[j]}]]" if rng.random() < 0.5 else f"[[{words[j]} (동음이의)|{words[j]}]]"
        if re.fullmatch(r"[가-힣]+", words[0]) and rng.random() < 0.2:
            words[0] = f"'''{words[0]}'''"
        text = " ".join(words)
        if rng.random() < 0.3:
            text += f'<ref name="r{i}">{{{{웹 인용|url=https://example.org/{i}|제목=출처}}}}</ref>'
        if rng.random() < 0.1:
            text += "<!-- 편집자 주석 -->"
        para.append(text)
        if len(para) == 3 or i == len(sentences) - 1:
            parts.append(" ".join(para))
            para = []
            if rng.random() < 0.2:
                parts.append(rng.choice(["== 절 제목 ==", "{| class=\"wikitable\"\n| 칸 || 칸\n|}",
                                         "[[파일:사진.jpg|섬네일|사진 설명]]", "* 목록 항목", "<math>x^2</math>"]))
    parts += [f"[[분류:{title}]]", "[[en:Test]]"]
    return page_xml(page_id, title, 0, "\n".join(parts))


def _prose_roundtrip(tmp_path: Path, documents: list[list[str]]) -> None:
    rng = random.Random(0)
    xs = [_wrap_in_markup(f"문서 {i}", doc, rng, i + 1) for i, doc in enumerate(documents)]
    xs.append(page_xml(len(xs) + 1, "넘겨주기 문서", 0, "#넘겨주기 [[문서 0]]"))
    xs.append(page_xml(len(xs) + 1, "틀:시험", 10, "{{{1}}}"))
    src = tmp_path / "kowiki-style.xml.bz2"
    write_dump(src, xs, "multistream", pages_per_stream=50)
    _, docs = extract(tmp_path, src, "--num-proc", "2", "--min-document-chars", "1", "--min-sentence-chars", "1")
    assert sorted(docs["title"]) == sorted(f"문서 {i}" for i in range(len(documents)))
    by_title = {t: " ".join(s) for t, s in zip(docs["title"], docs["sentences"])}
    kept = total = 0
    for i, doc in enumerate(documents):
        out = by_title[f"문서 {i}"]
        for fragment in MARKUP:
            assert fragment not in out, (fragment, out)
        for sentence in doc:
            total += len(sentence)
            kept += len(sentence) if normalize(sentence) in out else 0
    assert kept / total >= 0.95, kept / total


def _clean_source(sentences):
    ok = re.compile(r"^[^\[\]{}|<>'=*#:;!&~\s][^\[\]{}|<>'=&~]{9,}$")
    return [normalize(s) for s in sentences if ok.match(normalize(s)) and "@" not in s and not re.search(r"\d{2,}", s)]


def test_kowiki_style_dump_with_sample_prose(tmp_path):
    _, sample = extract(tmp_path, DUMP, name="sample")
    (tmp_path / "rt").mkdir()
    _prose_roundtrip(tmp_path / "rt", [_clean_source(doc) for doc in sample["sentences"]])


def test_kowiki_style_dump_with_real_reviews(tmp_path, shared_data):
    docs, current = [], []
    with open(shared_data / "corpus" / "nsmc_reviews_docs.txt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                current.append(line.strip())
            elif current:
                clean = [s for s in _clean_source(current) if s[-1] in ".!?"]
                if len(clean) >= 3:
                    docs.append(clean[:30])
                current = []
            if len(docs) == 150:
                break
    _prose_roundtrip(tmp_path, docs)


def test_truncated_kowiki_style_dump_leaves_nothing_that_loads(tmp_path):
    src = tmp_path / "cut.xml.bz2"
    write_dump(src, pages(), "multistream")
    src.write_bytes(src.read_bytes()[:-200])
    proc = cli("extract", "--input", src, "--output", tmp_path / "o", "--pages-per-shard", "3", check=False)
    assert proc.returncode == 2 and "cut.xml.bz2" in proc.stderr
    with pytest.raises(PipelineError, match="incomplete"):
        load_documents(tmp_path / "o")
